"""pytest plugin: tests marked ``kernel`` run against a real mGRE/ESP kernel, never silently skipped.

On a host whose kernel has ``ip_gre`` and ``esp4`` the marked tests run in place. Elsewhere (this
project's build machines) each marked test is replaced by a proxy item with the same node id; the
first proxy boots one virtme-ng guest that runs every marked test in a single pytest session, and each
proxy then reports its own test's outcome from the guest. The guest boots in the background as soon
as collection ends, so it overlaps with the unit tests. A kernel test that is skipped, wherever it
runs, is reported as a failure: a skipped data-plane test proves nothing.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dmvpn.lab.guest import GuestSpec, GuestUnavailable, host_has_kernel_dataplane, in_guest, stream_guest

READY_MARK = "DMVPN-GUEST-PYTEST-START"
RESULTS_OPTION = "--guest-results"
_RUNS_KEY = pytest.StashKey[list["GuestRun"]]()
_MODE_KEY = pytest.StashKey[str]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dmvpn kernel lab")
    group.addoption(
        "--kernel-mode",
        choices=("auto", "direct", "guest"),
        default="auto",
        help="where kernel-marked tests run: auto (guest when this kernel lacks ip_gre/esp4), direct, guest",
    )
    group.addoption(RESULTS_OPTION, default=None, help="(internal) where the guest writes its results")
    group.addoption(
        "--guest-timeout",
        type=float,
        default=3600.0,
        help="hard limit for one guest run (seconds; CI allows 90 min in all)",
    )
    group.addoption(
        "--guest-shards",
        type=int,
        default=int(os.environ.get("DMVPN_GUEST_SHARDS", "2")),
        help="guests booted side by side, each running a share of the kernel test files (default 2)",
    )


def pytest_configure(config: pytest.Config) -> None:
    mode = config.getoption("--kernel-mode")
    if mode == "auto":
        mode = "direct" if in_guest() or host_has_kernel_dataplane() else "guest"
    config.stash[_MODE_KEY] = mode
    if in_guest():
        # The host reads this line to tell boot time from test time.
        print(READY_MARK, flush=True)
    results = config.getoption(RESULTS_OPTION)
    if results:
        config.pluginmanager.register(ResultRecorder(Path(results)), "dmvpn-guest-results")


def _is_kernel(item: pytest.Item) -> bool:
    return item.get_closest_marker("kernel") is not None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome: Any = yield
    report: pytest.TestReport = outcome.get_result()
    if _is_kernel(item) and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"kernel test was skipped ({reason}); kernel tests must run, not skip"


@pytest.hookimpl(trylast=True)  # after -m/-k deselection: only tests that will run go to the guest
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.stash[_MODE_KEY] != "guest":
        return
    kernel_items = [item for item in items if _is_kernel(item)]
    if not kernel_items:
        return
    shards = split_by_file([item.nodeid for item in kernel_items], config.getoption("--guest-shards"))
    runs = [GuestRun(config, nodeids, name=f"guest{index + 1}") for index, nodeids in enumerate(shards)]
    config.stash[_RUNS_KEY] = runs
    run_of = {nodeid: run for run in runs for nodeid in run.nodeids}
    proxies = [_proxy_for(item, run_of[item.nodeid]) for item in kernel_items]
    proxies.sort(key=lambda proxy: runs.index(run_of[proxy.nodeid]))
    # Proxies go last: by the time pytest reaches them the guests have had the unit tests' time to boot.
    items[:] = [*(item for item in items if not _is_kernel(item)), *proxies]


def split_by_file(nodeids: list[str], shards: int) -> list[list[str]]:
    """Deal test files (never splitting one: module fixtures stay whole) to the least loaded shard."""
    by_file: dict[str, list[str]] = {}
    for nodeid in nodeids:
        by_file.setdefault(nodeid.split("::")[0], []).append(nodeid)
    buckets: list[list[str]] = [[] for _ in range(max(1, min(shards, len(by_file))))]
    for file_ids in sorted(by_file.values(), key=len, reverse=True):
        min(buckets, key=len).extend(file_ids)
    return buckets


def _proxy_for(item: pytest.Item, run: GuestRun) -> pytest.Item:
    assert item.parent is not None, "a collected test always has a parent"
    proxy: pytest.Item = GuestProxyItem.from_parent(item.parent, name=item.name, original=item, run=run)
    return proxy


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    previous: GuestRun | None = None
    for run in session.config.stash.get(_RUNS_KEY, []):
        run.start(after=previous)
        previous = run


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    runs = [run for run in config.stash.get(_RUNS_KEY, []) if run.started_at is not None]
    if not runs:
        return
    terminalreporter.section("kernel lab (virtme-ng guests)")
    for run in runs:
        for line in run.timing_lines():
            terminalreporter.write_line(f"{run.name}: {line}")


@dataclass
class GuestOutcome:
    outcome: str
    longrepr: str
    duration: float
    reruns: int = 0
    first_failure: str = ""


@dataclass
class GuestRun:
    """One guest boot that runs every kernel test, started in the background after collection."""

    config: pytest.Config
    nodeids: list[str]
    name: str = "guest"
    console: list[str] = field(default_factory=list)
    results: dict[str, GuestOutcome] = field(default_factory=dict)
    error: str | None = None
    started_at: float | None = None
    ready_at: float | None = None
    finished_at: float | None = None
    _thread: threading.Thread | None = None
    _printed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _console_started: threading.Event = field(default_factory=threading.Event)

    def start(self, after: GuestRun | None = None) -> None:
        """Boot now, or once ``after`` shows console output: two vng boots started at the same instant
        were seen to leave one guest hung before its first line."""
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(after,), name=f"dmvpn-{self.name}", daemon=True)
        self._thread.start()

    def _run(self, after: GuestRun | None = None) -> None:
        if after is not None:
            after._console_started.wait(timeout=180)
            self.started_at = time.monotonic()
        rootdir = Path(str(self.config.rootpath))
        labdir = rootdir / ".lab"
        labdir.mkdir(exist_ok=True)
        outdir = Path(tempfile.mkdtemp(prefix="guest-", dir=labdir))
        results_file = outdir / "results.json"
        argv = [
            sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-s", "--tb=short",
            "--kernel-mode=direct", f"{RESULTS_OPTION}={results_file}", "--timeout=600",
            # Emulated CPUs stretch timings unevenly; one rerun absorbs that, and is reported, never hidden.
            "--reruns=1", "--reruns-delay=2",
            "-o", "console_output_style=classic", *self.nodeids,
        ]  # fmt: skip
        # The command reaches the guest on the kernel command line (about 2 KiB at most): a long list of
        # test ids there left the guest hung before its first line, so the ids travel in a script file.
        script = outdir / "run.sh"
        script.write_text(" ".join(shlex.quote(arg) for arg in argv) + "\n")
        spec = GuestSpec(
            command=f"bash {shlex.quote(str(script))}",
            rwdirs=(outdir,),
            cwd=rootdir,
            timeout_s=float(self.config.getoption("--guest-timeout")),
        )
        try:
            for line in stream_guest(spec):
                self._console_started.set()
                if self.ready_at is None and READY_MARK in line:
                    self.ready_at = time.monotonic()
                with self._lock:
                    self.console.append(line.rstrip("\n"))
        except (GuestUnavailable, OSError) as err:
            self.error = f"the kernel-lab guest could not run: {err}"
        except subprocess.CalledProcessError as err:
            self.error = f"the kernel-lab guest exited with status {err.returncode}"
        finally:
            self._console_started.set()  # never hold back the next guest, whatever happened
            self.finished_at = time.monotonic()
        self._load_results(results_file)

    def _load_results(self, results_file: Path) -> None:
        try:
            raw = json.loads(results_file.read_text())
        except (OSError, ValueError) as err:
            self.error = (self.error or "") + f"; no results from the guest ({err})"
            return
        self.results = {nodeid: GuestOutcome(**value) for nodeid, value in raw.items()}

    def wait(self, echo: Any) -> None:
        """Block until the guest is done, echoing its console live to the terminal."""
        assert self._thread is not None
        while self._thread.is_alive():
            self._echo(echo)
            self._thread.join(timeout=0.5)
        self._echo(echo)

    def _echo(self, echo: Any) -> None:
        with self._lock:
            fresh = self.console[self._printed :]
            self._printed = len(self.console)
        for line in fresh:
            echo(f"[{self.name}] {line}")

    def timing_lines(self) -> list[str]:
        assert self.started_at is not None
        end = self.finished_at or time.monotonic()
        boot = (self.ready_at or end) - self.started_at
        lines = [
            f"guest boot (to pytest start): {boot:.1f} s",
            f"kernel tests in guest: {end - (self.ready_at or end):.1f} s",
            f"kernel tests reported: {len(self.results)} of {len(self.nodeids)}",
        ]
        if self.error:
            lines.append(f"guest error: {self.error}")
        return lines


class GuestTestFailure(Exception):
    """A kernel test failed (or did not run) in the guest; the text is the guest's report."""


class GuestProxyItem(pytest.Item):
    """Stands in, on the host, for one kernel test run in the guest."""

    def __init__(self, *, original: pytest.Item, run: GuestRun, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run = run
        self.own_markers = list(original.iter_markers())
        self.keywords.update(original.keywords)
        self._location = original.location

    def runtest(self) -> None:
        run = self.run
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        echo = reporter.write_line if reporter is not None and self.config.option.verbose >= 0 else print
        if run._thread is None:
            run.start()
        run.wait(echo)
        result = run.results.get(self.nodeid)
        if result is None:
            tail = "\n".join(run.console[-40:])
            raise GuestTestFailure(f"the guest did not report this test ({run.error or 'no error'}).\n{tail}")
        if result.outcome != "passed":
            raise GuestTestFailure(f"[in guest: {result.outcome}]\n{result.longrepr}")
        if result.reruns:
            first_line = result.first_failure.strip().splitlines()[-1:] or ["?"]
            echo(f"[{run.name}] RERUN {self.nodeid}: passed on rerun; the first attempt failed: {first_line[0]}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, GuestTestFailure):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self._location[0], self._location[1], self._location[2] + " [guest]"


class ResultRecorder:
    """In the guest: records each test's combined outcome (setup, call, teardown) for the host."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.outcomes: dict[str, dict[str, Any]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        entry = self.outcomes.setdefault(report.nodeid, {"outcome": "passed", "longrepr": "", "duration": 0.0})
        entry["duration"] += report.duration
        outcome: str = report.outcome  # pytest-rerunfailures adds "rerun" beyond pytest's own literals
        if outcome == "rerun":
            entry["reruns"] = entry.get("reruns", 0) + 1
            entry["first_failure"] = f"({report.when}) {report.longreprtext}"
            entry["outcome"], entry["longrepr"] = "passed", ""
            self._flush()
            return
        if report.outcome != "passed" and entry["outcome"] == "passed":
            entry["outcome"] = report.outcome
            entry["longrepr"] = f"({report.when}) {report.longreprtext}"
        self._flush()

    def _flush(self) -> None:
        # Written after every report so a guest that dies mid-run still tells what it finished.
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.outcomes, indent=1))
        tmp.replace(self.path)
