"""A spoke whose NBMA address changes, with real agents in the kernel lab (hub + 2 spokes, plain GRE and
GRE+ESP, 10 ms one-way delay, `uniqueRegistration: false` as IOS `ip nhrp registration no-unique`).

spoke2 moves from 192.0.2.12 to 192.0.2.52 (its address changes, its agent restarts with the new
`spec.nbma.address`, as kube mode does when the Node address changes; its charon keeps running): it
re-registers, the hub rebinds it and purges spoke1's shortcut to the old address, and new traffic rebuilds
the shortcut to the new one. With IPsec, spoke1 also removes its SA to the old address, and the rebuilt
shortcut runs over an SA to the new one.
"""

from __future__ import annotations

import dataclasses
import time
from ipaddress import IPv4Address

import pytest

from dmvpn.lab.agents import AgentLab
from dmvpn.lab.topology import Lab, hub_and_spokes, ping, tunnel_neighbour

pytestmark = pytest.mark.kernel

DELAY_MS = 10.0
MOVED = IPv4Address("192.0.2.52")


def hub_binding(agents: AgentLab, tunnel_ip: str) -> str | None:
    rows = agents.agents["hub"].request("show nhrp")
    return next((r["nbma"] for r in rows if r["protocol"] == tunnel_ip and r["type"] == "dynamic"), None)


def until(check: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not check():  # type: ignore[operator]
        time.sleep(0.3)


def sa_peers(agents: AgentLab, site: str) -> set[str]:
    return {sa["peer"] for sa in agents.agents[site].request("show ipsec") if sa.get("peer")}


@pytest.mark.parametrize("ipsec", [False, True], ids=["plain", "ipsec"])
def test_a_spoke_that_moves_to_a_new_nbma_is_rebound_and_shortcuts_are_rebuilt(lab: Lab, ipsec: bool) -> None:
    hub, spoke1, spoke2 = hub_and_spokes(lab, spokes=2, delay_ms=DELAY_MS)
    assert spoke1.pod is not None and spoke2.pod is not None
    agents = AgentLab(lab, [hub, spoke1, spoke2], ipsec=ipsec, unique=False)
    agents.start_all()
    agents.wait_registered()
    assert ping(spoke1.pod, str(spoke2.pod_ip), count=40, interval=0.05)[1] >= 38
    before = agents.wait_shortcut("spoke1", str(spoke2.tunnel_ip))
    assert before["nbma"] == str(spoke2.nbma)
    if ipsec:
        assert before["ipsec"] == "up"

    # spoke2 moves: a new underlay address, and its agent restarted with it
    agents.agents["spoke2"].kill()
    # (delete first: removing a subnet's primary address takes its secondaries with it)
    spoke2.ns.run("ip", "addr", "del", f"{spoke2.nbma}/24", "dev", "eth0")
    spoke2.ns.run("ip", "addr", "add", f"{MOVED}/24", "dev", "eth0")
    moved = dataclasses.replace(spoke2, nbma=MOVED)
    relaunched = AgentLab(lab, [hub, spoke1, moved], ipsec=ipsec, unique=False)  # its charon: the running one
    agent = relaunched.start_agent(moved)
    agents.agents["spoke2"] = agent

    until(lambda: hub_binding(agents, str(spoke2.tunnel_ip)) == str(MOVED), 60)
    assert hub_binding(agents, str(spoke2.tunnel_ip)) == str(MOVED), agents.agents["hub"].request("show nhrp")
    assert tunnel_neighbour(hub, str(spoke2.tunnel_ip)) == str(MOVED)
    # the hub purged spoke1's shortcut to the address that is gone
    until(lambda: not agents.shortcuts("spoke1"), 30)
    events = [(e["kind"], e["text"]) for e in agents.agents["spoke1"].request("show events")]
    assert not agents.shortcuts("spoke1"), f"the stale shortcut must go: {events[-10:]}"
    assert tunnel_neighbour(spoke1, str(spoke2.tunnel_ip)) != str(spoke2.nbma)
    assert agents.agents["hub"].request("show counters")["events"].get("registration_moved", 0) >= 1
    if ipsec:  # nothing is left for the SA to the old address to carry
        until(lambda: str(spoke2.nbma) not in sa_peers(agents, "spoke1"), 30)
        assert str(spoke2.nbma) not in sa_peers(agents, "spoke1"), agents.agents["spoke1"].request("show ipsec")

    # new traffic: via the hub, then a shortcut to the new address
    deadline = time.monotonic() + 60
    rebuilt: list[dict[str, object]] = []
    while time.monotonic() < deadline and not rebuilt:
        ping(spoke1.pod, str(spoke2.pod_ip), count=20, interval=0.05)
        rebuilt = [p for p in agents.shortcuts("spoke1") if p["nbma"] == str(MOVED) and p["state"] == "up"]
    assert rebuilt, f"no shortcut to the new address: {agents.shortcuts('spoke1')}"
    assert tunnel_neighbour(spoke1, str(spoke2.tunnel_ip)) == str(MOVED)
    if ipsec:
        assert rebuilt[0]["ipsec"] == "up"
        until(lambda: str(MOVED) in sa_peers(agents, "spoke1"), 10)  # show ipsec: the SA sample of <= 2 s ago
        assert str(MOVED) in sa_peers(agents, "spoke1"), agents.agents["spoke1"].request("show ipsec")
    assert ping(spoke1.pod, str(spoke2.pod_ip), count=20, interval=0.05) == (20, 20)
