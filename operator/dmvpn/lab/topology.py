"""Network-namespace topologies for the kernel lab: an NBMA underlay, DMVPN sites and pods behind them.

Every address lives in namespaces made here and torn down by :meth:`Lab.close`, also after a failed
test. Underlay (NBMA) addresses come from the documentation range 192.0.2.0/24 only.

    inet ── br0 ── eth0@hub      (192.0.2.1)    ── lan0 ── eth0@pod-hub   (10.1.0.10)
               └── eth0@spoke1   (192.0.2.11)   ── lan0 ── eth0@pod-spoke1 (10.1.1.10)
               └── eth0@spoke2   (192.0.2.12)   ── ...
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

NBMA_NET = ipaddress.IPv4Network("192.0.2.0/24")
TUNNEL_NET = ipaddress.IPv4Network("10.255.0.0/24")
SITE_SUPERNET = ipaddress.IPv4Network("10.1.0.0/16")
_lab_ids = itertools.count(1)


class LabError(RuntimeError):
    """A lab command failed; the message carries the command and its stderr."""


@dataclass
class Netns:
    """One network namespace; commands run in it through ``ip netns exec``."""

    name: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def argv(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, *cmd: str, check: bool = True, timeout: float = 60.0) -> str:
        return sh(self.argv(*cmd), check=check, timeout=timeout)

    def popen(self, *cmd: str, log: Path | None = None, **kwargs: object) -> subprocess.Popen[bytes]:
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(self.argv(*cmd), stdout=out, stderr=subprocess.STDOUT, **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc  # type: ignore[no-any-return]

    def link_stats(self, dev: str) -> dict[str, int]:
        """RX/TX packet counters of a device, the lab's proof of which path a packet took."""
        import json

        data = json.loads(self.run("ip", "-j", "-s", "link", "show", "dev", dev))[0]["stats64"]
        return {"rx": int(data["rx"]["packets"]), "tx": int(data["tx"]["packets"])}


def sh(argv: Sequence[str], check: bool = True, timeout: float = 60.0) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


@dataclass
class Site:
    """A DMVPN endpoint (hub or spoke) with its NBMA address, tunnel address and pod LAN behind it."""

    name: str
    ns: Netns
    nbma: ipaddress.IPv4Address
    tunnel_ip: ipaddress.IPv4Address
    lan: ipaddress.IPv4Network
    pod: Netns | None = None

    @property
    def lan_gw(self) -> ipaddress.IPv4Address:
        return self.lan.network_address + 1

    @property
    def pod_ip(self) -> ipaddress.IPv4Address:
        return self.lan.network_address + 10


class Lab:
    """Owns namespaces and processes; :meth:`close` removes everything it made."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or f"dl{os.getpid() % 10000}x{next(_lab_ids)}"
        self.namespaces: list[Netns] = []
        self.sites: dict[str, Site] = {}
        self.inet: Netns | None = None
        self.rundir = Path("/run/dmvpn-lab") / self.prefix

    def netns(self, short: str) -> Netns:
        ns = Netns(f"{self.prefix}-{short}")
        sh(["ip", "netns", "add", ns.name])
        self.namespaces.append(ns)
        ns.run("ip", "link", "set", "lo", "up")
        return ns

    def underlay(self) -> Netns:
        """The NBMA segment: one bridge, one port per site (made on first use)."""
        if self.inet is None:
            self.inet = self.netns("inet")
            self.inet.run("ip", "link", "add", "br0", "type", "bridge")
            self.inet.run("ip", "link", "set", "br0", "up")
        return self.inet

    def add_site(
        self,
        name: str,
        nbma: str,
        tunnel_ip: str,
        lan: str,
        delay_ms: float = 0.0,
        with_pod: bool = True,
    ) -> Site:
        inet = self.underlay()
        ns = self.netns(name)
        port = f"p-{name}"[:15]
        sh(
            [
                "ip",
                "link",
                "add",
                port,
                "netns",
                inet.name,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name,
            ]
        )
        inet.run("ip", "link", "set", port, "master", "br0", "up")
        ns.run("ip", "addr", "add", f"{nbma}/{NBMA_NET.prefixlen}", "dev", "eth0")
        ns.run("ip", "link", "set", "eth0", "up")
        if delay_ms:
            ns.run("tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", f"{delay_ms}ms")
        ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        site = Site(
            name,
            ns,
            ipaddress.IPv4Address(nbma),
            ipaddress.IPv4Address(tunnel_ip),
            ipaddress.IPv4Network(lan),
        )
        if with_pod:
            site.pod = self._add_pod(site)
        self.sites[name] = site
        return site

    def _add_pod(self, site: Site) -> Netns:
        pod = self.netns(f"pod-{site.name}")
        sh(
            [
                "ip",
                "link",
                "add",
                "lan0",
                "netns",
                site.ns.name,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                pod.name,
            ]
        )
        site.ns.run("ip", "addr", "add", f"{site.lan_gw}/{site.lan.prefixlen}", "dev", "lan0")
        site.ns.run("ip", "link", "set", "lan0", "up")
        pod.run("ip", "addr", "add", f"{site.pod_ip}/{site.lan.prefixlen}", "dev", "eth0")
        pod.run("ip", "link", "set", "eth0", "up")
        pod.run("ip", "route", "add", "default", "via", str(site.lan_gw))
        return pod

    def site_rundir(self, site: Site) -> Path:
        path = self.rundir / site.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            _stop_processes(ns)
            sh(["ip", "netns", "del", ns.name], check=False)
        self.namespaces.clear()
        sh(["rm", "-rf", str(self.rundir)], check=False)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stop_processes(ns: Netns, grace_s: float = 3.0) -> None:
    """Stop what runs in a namespace: our own children first, then anything else still in it."""
    for proc in ns.procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in ns.procs:
        try:
            proc.wait(timeout=max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    for pid in sh(["ip", "netns", "pids", ns.name], check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def hub_and_spokes(lab: Lab, spokes: int = 2, delay_ms: float = 0.0, with_pods: bool = True) -> list[Site]:
    """The standard lab: a hub (site 0) and N spokes with NBMA .1/.11.., tunnel .254/.1.., LANs 10.1.i.0/24."""
    sites = [lab.add_site("hub", "192.0.2.1", "10.255.0.254", "10.1.0.0/24", delay_ms, with_pods)]
    for index in range(1, spokes + 1):
        sites.append(
            lab.add_site(
                f"spoke{index}",
                f"192.0.2.{10 + index}",
                f"10.255.0.{index}",
                f"10.1.{index}.0/24",
                delay_ms,
                with_pods,
            )
        )
    return sites


def add_static_mgre(site: Site, key: int = 42, mtu: int = 1400, dev: str = "gre1") -> None:
    """A multipoint GRE device with ``ip`` (the lab's own hand-built reference, not the agent's code)."""
    site.ns.run(
        "ip",
        "tunnel",
        "add",
        dev,
        "mode",
        "gre",
        "key",
        str(key),
        "ttl",
        "64",
        "local",
        str(site.nbma),
        "dev",
        "eth0",
    )
    site.ns.run("ip", "addr", "add", f"{site.tunnel_ip}/32", "dev", dev)
    site.ns.run("ip", "link", "set", dev, "mtu", str(mtu), "up")


def ping(
    ns: Netns,
    dst: str,
    count: int = 1,
    interval: float = 0.2,
    timeout_s: float = 2.0,
    size: int | None = None,
) -> tuple[int, int]:
    """Send ``count`` pings (bounded); returns (sent, received)."""
    argv = ["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", str(timeout_s)]
    if size is not None:
        argv += ["-M", "do", "-s", str(size)]
    out = ns.run(*argv, dst, check=False, timeout=count * interval + timeout_s + 10)
    for line in out.splitlines():
        if "packets transmitted" in line:
            parts = line.split(",")
            return int(parts[0].split()[0]), int(parts[1].split()[0])
    raise LabError(f"ping in {ns.name} printed no summary: {out.strip() or 'nothing (is iputils-ping installed?)'}")


def tunnel_rx(site: Site, dev: str = "dmvpn0") -> int:
    """Packets a site's tunnel device received: how the lab tells which path traffic took."""
    return site.ns.link_stats(dev)["rx"]


def tunnel_neighbour(site: Site, tunnel_ip: str, dev: str = "dmvpn0") -> str | None:
    """The NBMA address the kernel maps ``tunnel_ip`` to on the tunnel device, if any."""
    import json

    rows = json.loads(site.ns.run("ip", "-j", "neigh", "show", "dev", dev, "to", tunnel_ip) or "[]")
    return rows[0].get("lladdr") if rows else None


def neighbour(site: Site, peer: Site, dev: str = "gre1") -> None:
    """A static mGRE neighbour: the peer's tunnel address maps to its NBMA address."""
    site.ns.run(
        "ip",
        "neigh",
        "replace",
        str(peer.tunnel_ip),
        "lladdr",
        str(peer.nbma),
        "dev",
        dev,
        "nud",
        "permanent",
    )


def static_hub_and_spokes(sites: Sequence[Site], summary: str = str(SITE_SUPERNET)) -> None:
    """Hand-built Phase 3 start state: the hub knows every spoke, spokes send the summary via the hub."""
    hub, spokes = sites[0], sites[1:]
    for site in sites:
        add_static_mgre(site)
    for spoke in spokes:
        neighbour(hub, spoke)
        hub.ns.run("ip", "route", "add", str(spoke.lan), "via", str(spoke.tunnel_ip), "dev", "gre1", "onlink")
        neighbour(spoke, hub)
        spoke.ns.run("ip", "route", "add", summary, "via", str(hub.tunnel_ip), "dev", "gre1", "onlink")


def static_shortcut(src: Site, dst: Site) -> None:
    """What NHRP resolution installs on a spoke: a neighbour and a route to the other spoke's LAN."""
    neighbour(src, dst)
    src.ns.run("ip", "route", "replace", str(dst.lan), "via", str(dst.tunnel_ip), "dev", "gre1", "onlink")
