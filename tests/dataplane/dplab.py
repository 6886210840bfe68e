"""Helpers for data-plane tests: a TunnelConfig per lab site, the kernel state as ``ip`` shows it, the
desired neighbours/routes of a hub-and-spokes cloud, and a bounded background ping."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network

from dmvpn.dataplane import Neighbour, Route, TunnelConfig
from dmvpn.lab.topology import SITE_SUPERNET, TUNNEL_NET, Netns, Site

KEY = 42
DEV = "gre1"


def site_config(site: Site, **overrides: object) -> TunnelConfig:
    values: dict[str, object] = {
        "name": DEV,
        "local": site.nbma,
        "underlay": "eth0",
        "address": IPv4Interface(f"{site.tunnel_ip}/24"),
        "key": KEY,
    }
    values.update(overrides)
    return TunnelConfig(**values)  # type: ignore[arg-type]


def kernel_view(ns: Netns, dev: str = DEV) -> dict[str, str]:
    """What an engineer would look at: link details, addresses, neighbours, routes (no counters)."""
    return {
        "link": ns.run("ip", "-d", "link", "show", "dev", dev),
        "addr": ns.run("ip", "addr", "show", "dev", dev),
        "neigh": ns.run("ip", "neigh", "show", "dev", dev),
        "route": ns.run("ip", "route", "show", "table", "all"),
        "sysctl": ns.run("sysctl", f"net.ipv4.neigh.{dev}.app_solicit", f"net.ipv4.conf.{dev}.send_redirects"),
    }


def hub_desired(hub: Site, spokes: Sequence[Site]) -> tuple[set[Neighbour], set[Route]]:
    """A hub knows every spoke (registrations) and routes each spoke LAN via the spoke."""
    neighbours = {Neighbour(spoke.tunnel_ip, spoke.nbma) for spoke in spokes}
    routes = {Route(TUNNEL_NET)} | {Route(spoke.lan, via=spoke.tunnel_ip) for spoke in spokes}
    return neighbours, routes


def spoke_desired(hub: Site, summary: IPv4Network = SITE_SUPERNET) -> tuple[set[Neighbour], set[Route]]:
    """A spoke knows its hub (NHS) and sends the tunnel subnet and the site summary via it."""
    return {Neighbour(hub.tunnel_ip, hub.nbma)}, {
        Route(TUNNEL_NET, via=hub.tunnel_ip),
        Route(summary, via=hub.tunnel_ip),
    }


@dataclass
class BackgroundPing:
    """``ping -c N`` running while the test does something else; :meth:`result` gives (sent, received)."""

    proc: subprocess.Popen[str]

    @classmethod
    def start(cls, ns: Netns, dst: str, count: int, interval: float = 0.1) -> BackgroundPing:
        argv = ns.argv("ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "2", dst)
        return cls(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))

    def result(self, timeout_s: float = 60.0) -> tuple[int, int]:
        out, _ = self.proc.communicate(timeout=timeout_s)
        for line in out.splitlines():
            if "packets transmitted" in line:
                parts = line.split(",")
                return int(parts[0].split()[0]), int(parts[1].split()[0])
        raise AssertionError(f"ping printed no summary: {out}")


def first_echo_sent_at(ping_output: str) -> float:
    """From ``ping -D``: '[1732500000.123456] 64 bytes from ...: icmp_seq=1 ttl=62 time=23.4 ms'."""
    for line in ping_output.splitlines():
        if "icmp_seq=1 " in line and "time=" in line:
            stamp = float(line[1 : line.index("]")])
            rtt_ms = float(line.split("time=")[1].split()[0])
            return stamp - rtt_ms / 1000
    raise AssertionError(f"no reply to the first echo: {ping_output}")
