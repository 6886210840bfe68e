"""FRR nhrpd 8.4 spoke against our NHRP hub, next to our own spoke (kernel lab, virtme-ng guest).

One lab: FRR spokes B and C register with our hub (issue 3, test 2); B's traffic to our spoke hairpins at
our hub, which sends a Traffic Indication; B resolves our spoke through our hub and we answer it (test
3b); and our spoke resolves C through our hub (C, not B: B's resolution left B's binding with us). The
caches on both sides are printed as evidence.
"""

from __future__ import annotations

import pytest
from interop_harness import frr_cache_until, frr_show, show, spoke_routes, start_our_node

from dmvpn.lab.frr import FrrNhrp, nhrp_cache, start_frr_nhrpd
from dmvpn.lab.topology import TUNNEL_NET, Lab, add_static_mgre, hub_and_spokes, ping

pytestmark = pytest.mark.kernel


def test_frr_spoke_with_our_hub_and_our_spoke(lab: Lab) -> None:
    hub, frr, ours, frr_c = hub_and_spokes(lab, spokes=3, with_pods=False)
    for site in (hub, frr, ours, frr_c):
        add_static_mgre(site)
    for spoke in (frr, ours, frr_c):
        spoke_routes(spoke, hub)
    our_hub = start_our_node(lab, hub, server=True, hairpin_net=str(TUNNEL_NET))
    frr_vty = start_frr_nhrpd(lab, frr, FrrNhrp(role="spoke", nhs_nbma=(str(hub.nbma),)))
    frr_c_vty = start_frr_nhrpd(lab, frr_c, FrrNhrp(role="spoke", nhs_nbma=(str(hub.nbma),)))
    node = start_our_node(lab, ours, nhs=[str(hub.nbma)], site_prefixes=["10.1.2.0/24"])
    try:
        # 2. the FRR spoke (and ours) register with our hub: dynamic entries with the right NBMA.
        wanted = {str(site.tunnel_ip): ("dynamic", str(site.nbma)) for site in (frr, ours, frr_c)}
        our_hub.wait("both registrations", lambda s: all(our_hub.cache().get(k) == v for k, v in wanted.items()), 60)
        show("our hub cache after registration", our_hub.cache())
        show("our hub events", our_hub.state()["counters"]["events"])
        show("FRR spoke NHS", frr_show(frr, frr_vty, "show ip nhrp nhs"))
        assert our_hub.cache()[str(frr.tunnel_ip)] == ("dynamic", str(frr.nbma))
        assert "10.1.2.0/24" in our_hub.cache()  # our spoke's site prefix

        # 3b. FRR -> our spoke hairpins at our hub: Traffic Indication, FRR resolves via our hub, we answer.
        sent, received = ping(frr.ns, str(ours.tunnel_ip), count=6, interval=0.5)
        show("ping FRR spoke -> our spoke", f"{received}/{sent}")
        frr_cache = frr_cache_until(frr, frr_vty, lambda c: str(ours.tunnel_ip) in c, 30)
        show("FRR spoke cache", frr_cache)
        show("FRR spoke shortcuts", frr_show(frr, frr_vty, "show ip nhrp shortcut"))
        hub_state, spoke_state = our_hub.state(), node.state()
        show("our hub counters", hub_state["counters"])
        show("our spoke cache", node.cache())
        show("our spoke counters", spoke_state["counters"])
        assert received > 0
        assert hub_state["counters"]["packets_out"].get("traffic_indication", 0) >= 1
        assert frr_cache.get(str(ours.tunnel_ip), ("", ""))[1] == str(ours.nbma), frr_cache
        assert node.cache().get(str(frr.tunnel_ip), ("", ""))[1] == str(frr.nbma)

        # 3b, our spoke resolves FRR spoke C through our hub, which forwards the request to C.
        node.command(f"resolve {frr_c.tunnel_ip}")
        state = node.wait(
            "resolution of FRR spoke C",
            lambda s: any(r["destination"] == str(frr_c.tunnel_ip) for r in s["resolutions"]),
            45,
        )
        show("our spoke resolution of FRR spoke C", state["resolutions"])
        show("FRR spoke C cache (it answered us)", nhrp_cache(frr_c, frr_c_vty))
        show("our hub counters at the end", our_hub.state()["counters"])
        done = next(r for r in state["resolutions"] if r["destination"] == str(frr_c.tunnel_ip))
        assert done["ok"] and done["nbma"] == str(frr_c.nbma), done
        assert node.cache().get(str(frr_c.tunnel_ip)) == ("shortcut", str(frr_c.nbma))
        assert not our_hub.state()["mirror_errors"] and not state["mirror_errors"]
    finally:
        show("our hub log", our_hub.log_text()[-500:])
        node.stop()
        our_hub.stop()
