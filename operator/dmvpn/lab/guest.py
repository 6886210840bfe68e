"""Boot a stock Debian kernel under QEMU (virtme-ng) and run a command in it.

This machine's kernel has no ``ip_gre`` and no ESP; Debian's ``linux-image-amd64`` has both. The guest
sees the host's files (read-only unless exported with ``--rwdir``), so the project's virtualenv and
sources work unchanged inside it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

KERNEL_MODULES = ("ip_gre", "esp4", "xfrm_user", "nf_tables")
IN_GUEST_ENV = "DMVPN_IN_GUEST"


class GuestUnavailable(RuntimeError):
    """The guest cannot be booted here (no vng, no kernel image): a hard error, never a skip."""


def in_guest() -> bool:
    return os.environ.get(IN_GUEST_ENV) == "1"


def host_has_kernel_dataplane() -> bool:
    """True when this kernel can do mGRE + ESP itself (loading the modules if it has them)."""
    if os.geteuid() != 0:
        return False
    for module in ("ip_gre", "esp4"):
        if Path(f"/sys/module/{module}").exists():
            continue
        probe = subprocess.run(["modprobe", "-q", module], capture_output=True, check=False)
        if probe.returncode != 0 or not Path(f"/sys/module/{module}").exists():
            return False
    return True


def find_kernel_image() -> Path:
    """The newest Debian kernel image under /boot (installed by ``make`` from linux-image-amd64)."""
    images = sorted(glob.glob("/boot/vmlinuz-*-amd64"), key=_version_key)
    if not images:
        raise GuestUnavailable("no /boot/vmlinuz-*-amd64: install Debian's linux-image-amd64 (make bootstrap does it)")
    return Path(images[-1])


def _version_key(path: str) -> list[int]:
    return [int(part) for part in re.findall(r"\d+", path)]


def find_vng() -> str:
    candidates = [str(Path(sys.executable).parent / "vng"), shutil.which("vng") or ""]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise GuestUnavailable("virtme-ng (vng) is not installed: run make bootstrap")


@dataclass(frozen=True)
class GuestSpec:
    """What the guest gets: command, writable directories, size and a hard time limit."""

    command: str
    rwdirs: Sequence[Path] = ()
    cwd: Path | None = None
    memory: str = "3G"
    cpus: int = 2
    timeout_s: float = 1800.0
    env: tuple[tuple[str, str], ...] = ()


def vng_argv(spec: GuestSpec) -> list[str]:
    kernel = find_kernel_image()
    env = {IN_GUEST_ENV: "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", **dict(spec.env)}
    exports = " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())
    cwd = spec.cwd or Path.cwd()
    script = f"cd {shlex.quote(str(cwd))} && export PATH={shlex.quote(_guest_path())} {exports} && {spec.command}"
    argv = [
        find_vng(),
        "--disable-kvm",  # KVM hangs on this kind of machine; TCG is slow but sure
        "--run",
        str(kernel),
        "--user",
        "root",
        "--memory",
        spec.memory,
        "--cpus",
        str(spec.cpus),
    ]
    for rwdir in spec.rwdirs:
        argv += ["--rwdir", str(rwdir)]
    argv += ["--exec", f"bash -c {shlex.quote(script)}"]
    return argv


def _guest_path() -> str:
    venv_bin = str(Path(sys.executable).parent)
    return f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def stream_guest(spec: GuestSpec) -> Iterator[str]:
    """Boot the guest, yield its console lines as they come, raise if it fails or times out."""
    argv = vng_argv(spec)
    with subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
        env={**os.environ, "PATH": _guest_path()},  # vng runs virtme-run from PATH
    ) as proc:
        assert proc.stdout is not None
        timer = _kill_after(proc, spec.timeout_s)
        try:
            yield from proc.stdout
        finally:
            timer.cancel()
            if proc.poll() is None:
                _kill_group(proc)
            proc.wait()
        if proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, argv)


def _kill_after(proc: subprocess.Popen[str], seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, _kill_group, args=(proc,))
    timer.daemon = True
    timer.start()
    return timer


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 9)


def run_in_guest(spec: GuestSpec, echo: bool = True) -> list[str]:
    lines = []
    for line in stream_guest(spec):
        lines.append(line)
        if echo:
            sys.stdout.write(line)
            sys.stdout.flush()
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dmvpn.lab.guest CMD...``: run CMD in a guest when this kernel lacks mGRE/ESP."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m dmvpn.lab.guest COMMAND [ARG...]", file=sys.stderr)
        return 2
    command = " ".join(shlex.quote(arg) for arg in args)
    if in_guest() or host_has_kernel_dataplane():
        return subprocess.call(["bash", "-c", command])
    results = Path.cwd() / ".lab"
    results.mkdir(exist_ok=True)
    try:
        run_in_guest(GuestSpec(command=command, rwdirs=(results,)))
    except subprocess.CalledProcessError as err:
        return err.returncode or 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
