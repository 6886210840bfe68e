"""Test-side helpers for the FRR interop tests: start our lab NHRP node in a site, read its state."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmvpn.lab.frr import nhrp_cache, vtysh
from dmvpn.lab.topology import TUNNEL_NET, Lab, LabError, Site

NODE_SCRIPT = Path(__file__).with_name("interop_node.py")


@dataclass
class OurNode:
    """Our Engine + NHRPTransport running in a site (interop_node.py)."""

    site: Site
    proc: subprocess.Popen[bytes]
    state_path: Path
    log: Path

    def state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_path.read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def cache(self) -> dict[str, tuple[str, str | None]]:
        """{prefix: (type, NBMA)} like ``nhrp_cache`` gives for FRR (host prefixes without /32)."""
        rows = {}
        for entry in self.state().get("cache", []):
            prefix = entry["prefix"].removesuffix("/32")
            rows[prefix] = (entry["type"], entry["nbma"])
        return rows

    def wait(self, what: str, predicate: Callable[[dict[str, Any]], bool], seconds: float) -> dict[str, Any]:
        """Poll the node's state (bounded) until ``predicate`` holds; fail with the state and log."""
        deadline = time.monotonic() + seconds
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            state = self.state()
            if state and predicate(state):
                return state
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(
            f"{self.site.name}: {what} not seen within {seconds} s\nstate: {state}\nlog: {self.log_text()}"
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.command("quit")
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_our_node(lab: Lab, site: Site, timeout_s: float = 120.0, **cfg: Any) -> OurNode:
    """Start interop_node.py in the site's namespace; returns once it has sent its first packets."""
    rundir = lab.site_rundir(site)
    state = rundir / "nhrp-state.json"
    log = rundir / "nhrp-node.log"
    config = {"tunnel_ip": str(site.tunnel_ip), "nbma": str(site.nbma), "state": str(state), **cfg}
    (rundir / "nhrp-node.json").write_text(json.dumps(config))
    proc = site.ns.popen(
        sys.executable, str(NODE_SCRIPT), str(rundir / "nhrp-node.json"), log=log, stdin=subprocess.PIPE
    )
    node = OurNode(site, proc, state, log)
    node.wait("start", lambda s: True, timeout_s)
    return node


def spoke_routes(site: Site, hub: Site) -> None:
    """A spoke sends the tunnel subnet via the hub (FRR answers resolutions only with such a route)."""
    site.ns.run("ip", "route", "replace", str(TUNNEL_NET), "via", str(hub.tunnel_ip), "dev", "gre1", "onlink")


def frr_cache_until(
    site: Site, vty: Path, predicate: Callable[[dict[str, tuple[str, str]]], bool], seconds: float, version: int = 8
) -> dict[str, tuple[str, str]]:
    cache: dict[str, tuple[str, str]] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        cache = nhrp_cache(site, vty, version=version)
        if predicate(cache):
            return cache
        time.sleep(1.0)
    return cache


def show(label: str, text: object) -> None:
    """Interop evidence in the test output (pytest -s or the guest's captured stdout)."""
    print(f"\n[interop] {label}: {text}", flush=True)


def frr_show(site: Site, vty: Path, command: str, version: int = 8) -> str:
    try:
        return vtysh(site, vty, command, version=version)
    except LabError as error:
        return f"({error})"
