"""Per-device sysctls for Phase 2 (read first, write only differences, inside the right namespace)."""

from __future__ import annotations

from pathlib import Path

from dmvpn.dataplane.netns import run_in_netns

APP_SOLICIT = 3
"""Kernel asks per unresolved tunnel address, retrans_time (1 s) apart. While they last, the first packets
wait in the neighbour queue: 3 s covers an NHRP resolution over a slow WAN or a loaded node, where FRR's
1 (a single second) dropped every packet of a resolution that took longer (seen in the emulated lab)."""


def phase2_sysctls(ifname: str) -> dict[str, int]:
    """As FRR nhrpd: the kernel asks userspace (app) instead of sending ARP, and no ICMP redirects (the
    hub's Phase 3 redirect is NHRP's Traffic Indication, not ICMP); we let it ask a little longer."""
    return {
        f"net/ipv4/neigh/{ifname}/app_solicit": APP_SOLICIT,
        f"net/ipv4/neigh/{ifname}/ucast_solicit": 0,
        f"net/ipv4/neigh/{ifname}/mcast_solicit": 0,
        f"net/ipv4/conf/{ifname}/send_redirects": 0,
    }


def _apply(wanted: dict[str, int]) -> list[str]:
    """Blocking (runs in the namespace): set what differs; returns 'key old -> new' for each write."""
    changes: list[str] = []
    for key, value in wanted.items():
        path = Path("/proc/sys") / key
        current = path.read_text().strip()
        if current != str(value):
            path.write_text(f"{value}\n")
            changes.append(f"{key.replace('/', '.')} {current} -> {value}")
    return changes


async def ensure_sysctls(netns: str | None, wanted: dict[str, int]) -> list[str]:
    return await run_in_netns(netns, lambda: _apply(wanted))
