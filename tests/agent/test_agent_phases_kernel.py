"""DMVPN Phases 1 and 2 with real agents in the kernel lab: hub + 2 spokes, one `dmvpn-agent --standalone`
per site, 10 ms one-way underlay delay, plain GRE (the phase rules do not depend on IPsec; Phase 3 with
IPsec is test_agent_kernel.py).

One lab, reconfigured in place as an operator would: Phase 1 first, then every agent is killed (kill -9:
the kernel state stays) and restarted with the same objects set to Phase 2, so the restarted agents adopt
the tunnels and rewrite only what the new phase changes.
"""

from __future__ import annotations

import json
import time

import pytest

from dmvpn.lab.agents import AgentLab
from dmvpn.lab.topology import Lab, Site, hub_and_spokes, ping, tunnel_neighbour, tunnel_rx

pytestmark = pytest.mark.kernel

DELAY_MS = 10.0


def kernel_routes(site: Site) -> dict[str, str]:
    """dst -> gateway ('' on the link) of the routes on the tunnel device."""
    rows = json.loads(site.ns.run("ip", "-j", "-4", "route", "show", "dev", "dmvpn0") or "[]")
    return {row["dst"]: row.get("gateway", "") for row in rows}


def test_phase1_everything_via_the_hub_then_phase2_resolves_on_demand(lab: Lab) -> None:
    hub, spoke1, spoke2 = hub_and_spokes(lab, spokes=2, delay_ms=DELAY_MS)
    assert spoke1.pod is not None and spoke2.pod is not None

    # --- Phase 1: hub and spoke only. Spokes route other spokes' prefixes via the hub, nobody resolves.
    phase1 = AgentLab(lab, [hub, spoke1, spoke2], ipsec=False, phase=1)
    phase1.start_all()
    phase1.wait_registered()
    routes = kernel_routes(spoke1)
    assert routes.get(str(spoke2.lan)) == str(hub.tunnel_ip), routes
    before = tunnel_rx(hub)
    sent, received = ping(spoke1.pod, str(spoke2.pod_ip), count=40, interval=0.05)
    crossed_hub = tunnel_rx(hub) - before
    assert received == sent, f"Phase 1 lost {sent - received} of {sent} pings"
    assert crossed_hub >= 2 * sent, f"every echo and reply crosses the hub in Phase 1 ({crossed_hub} for {sent})"
    time.sleep(2.0)
    assert phase1.shortcuts("spoke1") == [] and phase1.shortcuts("spoke2") == []
    hub_counters = phase1.agents["hub"].request("show counters")
    assert hub_counters["packets_out"].get("traffic_indication", 0) == 0, "no redirect in Phase 1"
    assert hub_counters["packets_in"].get("resolution_request", 0) == 0, "no resolution in Phase 1"
    assert tunnel_neighbour(spoke1, str(spoke2.tunnel_ip)) is None

    # --- Phase 2: the same objects set to phase 2; agents restarted (kill -9 first: nothing flushed).
    for agent in phase1.agents.values():
        agent.kill()
    phase2 = AgentLab(lab, [hub, spoke1, spoke2], ipsec=False, phase=2)
    phase2.start_all()
    phase2.wait_registered()
    routes = kernel_routes(spoke1)
    # Phase 2: the other spoke's prefix via its own tunnel address, the tunnel subnet on the link
    assert routes.get(str(spoke2.lan)) == str(spoke2.tunnel_ip), routes
    assert routes.get("10.255.0.0/24") == "", routes
    events = phase2.agents["spoke1"].request("show events")
    tunnel = next(e["text"] for e in events if e["kind"] == "tunnel")
    assert tunnel.split()[1] in ("adopted", "updated"), f"the device is kept, changed in place: {tunnel}"

    # The first packet to spoke2's prefix makes the kernel ask for the next hop's NBMA address; the agent
    # resolves it through the hub and answers; traffic then flows spoke to spoke, never via the hub.
    before = tunnel_rx(hub)
    sent, received = ping(spoke1.pod, str(spoke2.pod_ip), count=40, interval=0.05)
    events = [(e["kind"], e["text"]) for e in phase2.agents["spoke1"].request("show events")][-12:]
    assert received >= sent - 1, f"Phase 2 lost {sent - received} of {sent} pings while resolving: {events}"
    assert tunnel_neighbour(spoke1, str(spoke2.tunnel_ip)) == str(spoke2.nbma)
    counters = phase2.agents["spoke1"].request("show counters")
    assert counters["agent"]["solicitations"] >= 1, counters["agent"]
    assert counters["packets_out"].get("resolution_request", 0) >= 1
    via_hub_while_resolving = tunnel_rx(hub) - before
    before = tunnel_rx(hub)
    sent, received = ping(spoke1.pod, str(spoke2.pod_ip), count=20, interval=0.05)
    assert received == sent
    assert tunnel_rx(hub) - before <= 2, "resolved: pod traffic goes spoke to spoke"
    # only NHRP (a resolution and its forwarding) crossed the hub, never the pings themselves
    assert via_hub_while_resolving < sent, via_hub_while_resolving
    rows = phase2.agents["spoke1"].request("show nhrp")
    assert any(r["protocol"] == str(spoke2.tunnel_ip) and r["nbma"] == str(spoke2.nbma) for r in rows), rows
