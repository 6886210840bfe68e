"""Run real ``dmvpn-agent`` processes in lab sites (one charon + one agent per site): standalone mode from
a file (:class:`AgentLab`), or Kubernetes mode against an API server (:func:`launch_kube_agent`).

Used by the agent's kernel tests, the lab demo and the benchmarks. The standalone file is written from the
lab's sites, exactly as a user would write it for a cluster.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmvpn.agent import control
from dmvpn.lab.charon import start_charon
from dmvpn.lab.topology import Lab, LabError, Site

PSK = "lab-psk-not-for-production-use"
CLONE_NEWNET = 0x40000000
STARTUP_TIMEOUT_S = 300.0  # importing pydantic + pyroute2 takes ~2 s here, far longer in an emulated guest


def standalone_yaml(sites: Sequence[Site], *, ipsec: bool = True, phase: int = 3, idle_timeout: int = 300,
                    hubs: int = 1, gre_key: int | None = 42, hold_time: int = 7200,
                    unique: bool = True) -> str:  # fmt: skip
    """DMVPNHub/DMVPNSpoke documents for a lab whose first ``hubs`` sites are hubs."""
    no_unique = "" if unique else ", uniqueRegistration: false"
    ipsec_block = "  ipsec:\n    psk:\n      secretRef: {name: dmvpn-psk}\n" if ipsec else "  ipsec: {mode: disabled}\n"
    key = f"    greKey: {gre_key}\n" if gre_key is not None else ""
    docs: list[str] = []
    hub_sites, spoke_sites = sites[:hubs], sites[hubs:]
    for hub in hub_sites:
        summary = "  summaryPrefixes: [10.1.0.0/16]\n" if phase != 2 else ""
        docs.append(
            f"apiVersion: dmvpn.io/v1alpha1\nkind: DMVPNHub\nmetadata: {{name: {hub.name}}}\nspec:\n"
            f"  nodeName: {hub.name}\n  nbma: {{address: {hub.nbma}}}\n"
            f"  tunnel:\n    address: {hub.tunnel_ip}/24\n{key}"
            f"  nhrp: {{phase: {phase}, shortcutIdleTimeout: {idle_timeout}, holdTime: {hold_time}}}\n"
            f"{ipsec_block}  sitePrefixes: [{hub.lan}]\n{summary}"
        )
    hub_refs = "".join(f"    - name: {hub.name}\n" for hub in hub_sites)
    for spoke in spoke_sites:
        docs.append(
            f"apiVersion: dmvpn.io/v1alpha1\nkind: DMVPNSpoke\nmetadata: {{name: {spoke.name}}}\nspec:\n"
            f"  nodeName: {spoke.name}\n  nbma: {{address: {spoke.nbma}}}\n"
            f"  tunnel:\n    address: {spoke.tunnel_ip}/24\n{key}"
            f"  nhrp: {{phase: {phase}, shortcutIdleTimeout: {idle_timeout}, holdTime: {hold_time}{no_unique}}}\n"
            f"{ipsec_block}  sitePrefixes: [{spoke.lan}]\n  hubs:\n{hub_refs}"
        )
    return "---\n".join(docs)


@dataclass
class AgentProcess:
    """One agent: a forked child of this (already importing) process, running ``dmvpn.agent.main.main``
    with the argv a ``dmvpn-agent`` command would get, inside the site's network namespace."""

    site: Site
    pid: int
    socket: Path
    log: Path
    argv: list[str]
    returncode: int | None = None

    def request(self, command: str, timeout: float = 5.0) -> Any:
        """The agent's answer to ``command`` on its control socket (dmvpnctl's client); LabError if none."""
        try:
            return control.request(self.socket, command, timeout)
        except (control.AgentUnreachable, control.AgentRefused) as error:
            raise LabError(f"agent at {self.site.name}: {error}") from None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        """kill -9: nothing is cleaned up (the kernel state and SAs stay)."""
        os.kill(self.pid, signal.SIGKILL)
        _, status = os.waitpid(self.pid, 0)
        self.returncode = os.waitstatus_to_exitcode(status)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def enter_netns(name: str) -> None:
    """Move the calling thread into the namespace /run/netns/NAME (setns is per thread)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name} failed")
    finally:
        os.close(fd)


def fork_in_netns(netns: str, log: Path, run: Callable[[], int], env: Mapping[str, str] | None = None) -> int:
    """Fork a child that enters the namespace ``netns`` (with ``env`` added to its environment), sends its
    output to ``log`` and exits with ``run()``'s status; returns the child's pid.

    The child runs code the parent has already imported: a fresh interpreter per process would import
    pydantic, pyroute2, kopf... again, which takes minutes in an emulated guest under load."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.setsid()
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - the child's own streams
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        os.environ.update(env or {})
        enter_netns(netns)
        code = run()
    except BaseException as error:  # report and never return into the parent's code (pytest)
        with contextlib.suppress(Exception):
            print(f"child in {netns} failed: {error!r}", file=sys.stderr, flush=True)
    finally:
        os._exit(code)


def fork_agent(site: Site, args: list[str], log: Path) -> int:
    """Fork a child that enters the site's namespace and runs the agent's ``main(args)``.

    Why not ``ip netns exec python -m dmvpn.agent.main``: importing pydantic, pyroute2 and asyncio from the
    host's files takes minutes in an emulated guest under load; the parent has imported them once."""
    import dmvpn.agent.main as agent_main  # imported in the parent, once

    return fork_in_netns(site.ns.name, log, lambda: agent_main.main(args))


def launch_kube_agent(
    lab: Lab, site: Site, kubeconfig: Path, *, namespace: str, vici: Path | None = None
) -> AgentProcess:
    """A Kubernetes-mode agent for the node named like the site: ``dmvpn-agent --node NAME --kubeconfig
    FILE --namespace NS ...`` in the site's namespace (its API server must be reachable from there)."""
    import kubernetes.config  # noqa: F401 - what Kubernetes mode imports, once in the parent (see fork_agent)

    import dmvpn.agent.kube  # noqa: F401

    rundir = lab.site_rundir(site)
    sock = rundir / "agent.sock"
    argv = [
        sys.executable, "-m", "dmvpn.agent.main",
        "--node", site.name, "--kubeconfig", str(kubeconfig), "--namespace", namespace,
        "--vici-socket", str(vici or rundir / "charon.vici"),
        "--socket", str(sock), "--node-state", str(rundir / "node-state.json"),
    ]  # fmt: skip
    if sock.exists():
        sock.unlink()
    log = rundir / "agent.log"
    return AgentProcess(site, fork_agent(site, argv[3:], log), sock, log, argv)


def wait_started(agent: AgentProcess, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """Until the agent runs an endpoint (its control socket answers and it logged 'started')."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            raise LabError(f"agent at {agent.site.name} exited {agent.returncode}:\n{agent.log_text()[-3000:]}")
        if agent.socket.exists():
            try:
                if _started_and_listening(agent):
                    return
            except LabError:
                pass
        time.sleep(0.2)
    raise LabError(f"agent at {agent.site.name} not started within {timeout_s} s:\n{agent.log_text()[-3000:]}")


def _started_and_listening(agent: AgentProcess) -> bool:
    """'started', and the kernel event source its role needs is up (a Phase 3 hub's NFLOG hairpin reader, a
    Phase 2 spoke's solicitation listener): traffic sent before that would find no redirect or resolution."""
    events = agent.request("show events")
    if not any(e["kind"] == "started" for e in events):
        return False
    view = agent.request("show dmvpn")
    needed = {("hub", 3): "hairpin", ("spoke", 2): "solicitations"}.get((view["role"], view.get("phase")))
    return needed is None or any(e["kind"] == needed and e["text"] == "listening" for e in events)


class AgentLab:
    """Charon + agent per site, from one standalone file."""

    def __init__(self, lab: Lab, sites: Sequence[Site], **yaml_options: Any) -> None:
        self.lab = lab
        self.sites = list(sites)
        self.dir = lab.rundir / "agents"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.file = self.dir / "dmvpn.yaml"
        self.file.write_text(standalone_yaml(self.sites, **yaml_options))
        self.ipsec = yaml_options.get("ipsec", True)
        secrets = self.dir / "secrets" / "dmvpn-psk"
        secrets.mkdir(parents=True, exist_ok=True)
        (secrets / "psk").write_text(PSK + "\n")
        self.vici: dict[str, Path] = {}
        self.agents: dict[str, AgentProcess] = {}

    def start_charons(self) -> None:
        if self.ipsec:
            for site in self.sites:
                self.vici[site.name] = start_charon(self.lab, site)

    def launch_agent(self, site: Site) -> AgentProcess:
        """Start the agent process (importing it takes a while in an emulated guest: see wait_ready)."""
        rundir = self.lab.site_rundir(site)
        sock = rundir / "agent.sock"
        log = rundir / "agent.log"
        argv = [
            sys.executable, "-m", "dmvpn.agent.main",
            "--standalone", str(self.file), "--node", site.name,
            "--vici-socket", str(self.vici.get(site.name, rundir / "charon.vici")),
            "--socket", str(sock), "--secrets-dir", str(self.dir / "secrets"),
            "--node-state", str(rundir / "node-state.json"),
        ]  # fmt: skip
        if sock.exists():
            sock.unlink()
        agent = AgentProcess(site, fork_agent(site, argv[3:], log), sock, log, argv)
        self.agents[site.name] = agent
        return agent

    def wait_ready(self, agent: AgentProcess, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Until the agent has started (its control socket answers and it logged 'started')."""
        wait_started(agent, timeout_s)

    def start_agent(self, site: Site, timeout_s: float = STARTUP_TIMEOUT_S) -> AgentProcess:
        agent = self.launch_agent(site)
        self.wait_ready(agent, timeout_s)
        return agent

    def start_all(self) -> None:
        self.start_charons()
        launched = [self.launch_agent(site) for site in self.sites]  # in parallel: imports are slow under TCG
        for agent in launched:
            self.wait_ready(agent)

    def wait_registered(self, timeout_s: float = 60.0) -> None:
        """Every spoke has every NHS up."""
        deadline = time.monotonic() + timeout_s
        pending: list[str] = []
        while time.monotonic() < deadline:
            pending = []
            for name, agent in self.agents.items():
                view = agent.request("show dmvpn")
                if view["role"] == "spoke" and not all(p["state"] == "up" for p in view["peers"] if p["kind"] == "nhs"):
                    pending.append(name)
            if not pending:
                return
            time.sleep(0.2)
        logs = "\n".join(f"--- {n}\n{self.agents[n].log_text()[-2000:]}" for n in pending)
        raise LabError(f"not registered within {timeout_s} s: {pending}\n{logs}")

    def wait_shortcut(self, site: str, peer_tunnel: str | None = None, timeout_s: float = 30.0) -> dict[str, Any]:
        """The first ``show dmvpn`` shortcut row that is up at ``site`` (to ``peer_tunnel``, if given)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for peer in self.agents[site].request("show dmvpn")["peers"]:
                wanted = peer_tunnel is None or peer["tunnel"] == peer_tunnel
                if peer["kind"] == "shortcut" and peer["state"] == "up" and wanted:
                    return dict(peer)
            time.sleep(0.2)
        events = [(e["kind"], e["text"]) for e in self.agents[site].request("show events")][-30:]
        raise LabError(f"no shortcut at {site} within {timeout_s} s; last events: {events}")

    def wait_idle_expiry(self, site: str, idle_s: float, slack_s: float = 30.0) -> float:
        """Wait (bounded: ``idle_s + slack_s``) until ``site`` shows no shortcut; returns how long it took."""
        started = time.monotonic()
        deadline = started + idle_s + slack_s
        while time.monotonic() < deadline and self.shortcuts(site):
            time.sleep(0.5)
        return time.monotonic() - started

    def shortcuts(self, site: str) -> list[dict[str, Any]]:
        return [dict(p) for p in self.agents[site].request("show dmvpn")["peers"] if p["kind"] == "shortcut"]
