"""FRR nhrpd 8.4 interop through the real ``dmvpn-agent --standalone`` (kernel lab, virtme-ng guest).

The other interop tests drive our NHRP engine from a lab-side node; these run the agent itself (its
tunnel device, routes, neighbours, hairpin detection and control socket) next to FRR, plain GRE (key 42
on both sides), 10 ms one-way underlay delay:

1. an FRR hub serves two agent spokes: they register, pod-to-pod traffic hairpins at the hub, FRR's hub
   sends a Traffic Indication (its NFLOG rule), our spoke resolves through it and the shortcut carries the
   traffic (the hub's GRE counters stop moving);
2. our agent as hub serves two FRR spokes: they register with us, traffic between them hairpins at our
   hub, our Traffic Indication makes FRR resolve through us, and FRR's cache and the hub's counters show
   the direct path.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from interop_harness import frr_cache_until, frr_show, show, spoke_routes

from dmvpn.lab.agents import AgentLab
from dmvpn.lab.frr import FrrNhrp, nhrp_cache, start_frr_nhrpd
from dmvpn.lab.topology import TUNNEL_NET, Lab, Site, add_static_mgre, hub_and_spokes, ping

pytestmark = pytest.mark.kernel

DELAY_MS = 10.0
GRE_KEY = 42  # add_static_mgre's key for the FRR sites; standalone_yaml's greKey for ours


def gre_rx(site: Site, dev: str) -> int:
    return site.ns.link_stats(dev)["rx"]


def events(agents: AgentLab, site: str) -> list[dict[str, Any]]:
    return list(agents.agents[site].request("show events"))


def registered(rows: list[dict[str, Any]], tunnel_ip: str, nbma: str) -> bool:
    """A `show nhrp` row for a spoke's registration."""
    return any(r["protocol"] == tunnel_ip and r["nbma"] == nbma and r["type"] == "dynamic" for r in rows)


def test_agent_spokes_with_frr_hub(lab: Lab) -> None:
    hub, spoke1, spoke2 = hub_and_spokes(lab, spokes=2, delay_ms=DELAY_MS)
    assert spoke1.pod is not None and spoke2.pod is not None
    add_static_mgre(hub, key=GRE_KEY)
    # FRR's hub routes by its kernel table: spokes' tunnel addresses on gre1, their LANs via them (FRR
    # keeps only the spokes' host addresses from our registrations, see below).
    hub.ns.run("ip", "route", "add", str(TUNNEL_NET), "dev", "gre1")
    for spoke in (spoke1, spoke2):
        hub.ns.run("ip", "route", "add", str(spoke.lan), "via", str(spoke.tunnel_ip), "dev", "gre1", "onlink")
    hub_vty = start_frr_nhrpd(lab, hub, FrrNhrp(role="hub"))
    agents = AgentLab(lab, [hub, spoke1, spoke2], ipsec=False, gre_key=GRE_KEY)
    launched = [agents.launch_agent(site) for site in (spoke1, spoke2)]  # no agent at the hub: FRR is the hub
    for agent in launched:
        agents.wait_ready(agent)
    agents.wait_registered(timeout_s=90)

    # 1. registration: FRR's hub holds both spokes with their NBMA addresses
    wanted = {str(s.tunnel_ip): str(s.nbma) for s in (spoke1, spoke2)}
    hub_cache = frr_cache_until(hub, hub_vty, lambda c: all(c.get(k, ("", ""))[1] == v for k, v in wanted.items()), 60)
    show("FRR hub cache after our spokes registered", hub_cache)
    for tunnel_ip, nbma in wanted.items():
        assert hub_cache.get(tunnel_ip) == ("dynamic", nbma), hub_cache
    # FRR 8.4 refuses a registration CIE for a site prefix: no 10.1.x.0/24 entry at the hub
    show("site prefixes in FRR's cache", [p for p in hub_cache if p.startswith("10.1.")])

    # 2. pod to pod: first via FRR's hub, Traffic Indication, our resolution, then direct
    before = gre_rx(hub, "gre1")
    sent, received = ping(spoke1.pod, str(spoke2.pod_ip), count=60, interval=0.05)
    via_hub = gre_rx(hub, "gre1") - before
    show("pod ping spoke1 -> spoke2 while the shortcut forms", f"{received}/{sent}, {via_hub} packets via the hub")
    assert via_hub > 0, "the first packets must cross FRR's hub"
    assert received >= sent - 2, f"lost {sent - received} of {sent} pings while the shortcut formed"
    shortcut = agents.wait_shortcut("spoke1")
    show("spoke1 shortcut", shortcut)
    assert shortcut["tunnel"] == str(spoke2.tunnel_ip) and shortcut["nbma"] == str(spoke2.nbma)
    spoke1_events = events(agents, "spoke1")
    show("spoke1 events", [(e["kind"], e["text"]) for e in spoke1_events])
    assert any(e["kind"] == "traffic-indication" and str(hub.nbma) in e["text"] for e in spoke1_events)
    assert any(e["kind"] == "resolution-reply" and str(spoke2.tunnel_ip) in e["text"] for e in spoke1_events)
    nhrp = agents.agents["spoke1"].request("show nhrp")
    show("spoke1 show nhrp", nhrp)
    assert any(r["protocol"] == str(spoke2.lan) and r["nbma"] == str(spoke2.nbma) for r in nhrp), nhrp

    # 3. the direct path: more pod traffic, FRR's hub sees (almost) none of it
    before = gre_rx(hub, "gre1")
    sent, received = ping(spoke1.pod, str(spoke2.pod_ip), count=20, interval=0.05)
    through_hub = gre_rx(hub, "gre1") - before
    show("pod ping over the shortcut", f"{received}/{sent}, {through_hub} packets via the hub")
    assert received == sent
    assert through_hub <= 2, "after the shortcut, pod traffic must bypass FRR's hub"
    show("FRR hub cache at the end", nhrp_cache(hub, hub_vty))
    show("FRR hub shortcut-related counters", frr_show(hub, hub_vty, "show ip nhrp"))


def test_frr_spokes_with_agent_hub(lab: Lab) -> None:
    hub, spoke1, spoke2 = hub_and_spokes(lab, spokes=2, delay_ms=DELAY_MS, with_pods=False)
    agents = AgentLab(lab, [hub, spoke1, spoke2], ipsec=False, gre_key=GRE_KEY)
    hub_agent = agents.launch_agent(hub)  # importing the agent is slow under TCG: start FRR meanwhile
    vty: dict[str, Any] = {}
    for spoke in (spoke1, spoke2):
        add_static_mgre(spoke, key=GRE_KEY)
        spoke_routes(spoke, hub)  # the tunnel subnet via the hub: FRR answers resolutions only then
    agents.wait_ready(hub_agent)
    for spoke in (spoke1, spoke2):
        vty[spoke.name] = start_frr_nhrpd(lab, spoke, FrrNhrp(role="spoke", nhs_nbma=(str(hub.nbma),)))

    # 1. both FRR spokes register with our hub: `show nhrp` lists them, FRR's NHS is up
    wanted = {str(s.tunnel_ip): str(s.nbma) for s in (spoke1, spoke2)}
    rows: list[dict[str, Any]] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        rows = hub_agent.request("show nhrp")
        if all(registered(rows, k, v) for k, v in wanted.items()):
            break
        time.sleep(0.5)
    show("our hub show nhrp", rows)
    for tunnel_ip, nbma in wanted.items():
        assert registered(rows, tunnel_ip, nbma), rows
    nhs = frr_show(spoke1, vty["spoke1"], "show ip nhrp nhs")
    show("FRR spoke1 NHS", nhs)
    assert str(hub.nbma) in nhs and str(hub.tunnel_ip) in nhs, nhs
    show("our hub show dmvpn", hub_agent.request("show dmvpn"))

    # 2. spoke1 -> spoke2 (tunnel addresses: FRR registers only those) hairpins at our hub, which sends a
    # Traffic Indication; FRR resolves spoke2 through us and goes direct
    before = gre_rx(hub, "dmvpn0")
    sent, received = ping(spoke1.ns, str(spoke2.tunnel_ip), count=60, interval=0.05)
    via_hub = gre_rx(hub, "dmvpn0") - before
    show("ping FRR spoke1 -> FRR spoke2 while the shortcut forms", f"{received}/{sent}, {via_hub} via our hub")
    assert via_hub > 0, "the first packets must cross our hub"
    assert received >= sent - 2, f"lost {sent - received} of {sent} pings"
    counters = hub_agent.request("show counters")
    show("our hub counters", counters)
    assert counters["packets_out"].get("traffic_indication", 0) >= 1
    assert counters["packets_in"].get("resolution_request", 0) >= 1
    cache = frr_cache_until(spoke1, vty["spoke1"], lambda c: str(spoke2.tunnel_ip) in c, 30)
    show("FRR spoke1 cache", cache)
    show("FRR spoke1 shortcuts", frr_show(spoke1, vty["spoke1"], "show ip nhrp shortcut"))
    assert cache.get(str(spoke2.tunnel_ip), ("", ""))[1] == str(spoke2.nbma), cache

    # 3. the direct path: our hub's tunnel sees (almost) none of the next pings
    before = gre_rx(hub, "dmvpn0")
    sent, received = ping(spoke1.ns, str(spoke2.tunnel_ip), count=20, interval=0.05)
    through_hub = gre_rx(hub, "dmvpn0") - before
    show("ping over FRR's shortcut", f"{received}/{sent}, {through_hub} via our hub")
    assert received == sent
    assert through_hub <= 2, "after the shortcut, traffic between the FRR spokes must bypass our hub"
    show("our hub events", [(e["kind"], e["text"]) for e in hub_agent.request("show events")])
