"""FRR nhrpd 8.4 spoke against our NHRP hub, next to our own spoke (kernel lab, virtme-ng guest).

One lab: the FRR spoke registers with our hub (issue 3, test 2); its traffic to our spoke hairpins at our
hub, which sends a Traffic Indication; FRR resolves our spoke through our hub and we answer it (test 3b);
and our spoke resolves the FRR spoke through our hub. The caches on both sides are printed as evidence.
"""

from __future__ import annotations

import pytest
from interop_harness import frr_cache_until, frr_show, show, spoke_routes, start_our_node

from dmvpn.lab.frr import FrrNhrp, start_frr_nhrpd
from dmvpn.lab.topology import TUNNEL_NET, Lab, add_static_mgre, hub_and_spokes, ping

pytestmark = pytest.mark.kernel


def test_frr_spoke_with_our_hub_and_our_spoke(lab: Lab) -> None:
    hub, frr, ours = hub_and_spokes(lab, spokes=2, with_pods=False)
    for site in (hub, frr, ours):
        add_static_mgre(site)
    spoke_routes(frr, hub)
    spoke_routes(ours, hub)
    our_hub = start_our_node(lab, hub, server=True, hairpin_net=str(TUNNEL_NET))
    frr_vty = start_frr_nhrpd(lab, frr, FrrNhrp(role="spoke", nhs_nbma=(str(hub.nbma),)))
    node = start_our_node(lab, ours, nhs=[str(hub.nbma)], site_prefixes=["10.1.2.0/24"])
    try:
        # 2. the FRR spoke (and ours) register with our hub: dynamic entries with the right NBMA.
        wanted = {str(frr.tunnel_ip): ("dynamic", str(frr.nbma)), str(ours.tunnel_ip): ("dynamic", str(ours.nbma))}
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

        # 3b, our spoke resolves the FRR spoke through our hub (answered from a fresh request to FRR
        # unless the reverse binding above already gave it to us).
        node.command(f"resolve {frr.tunnel_ip}")
        state = node.wait(
            "resolution of the FRR spoke",
            lambda s: any(r["destination"] == str(frr.tunnel_ip) for r in s["resolutions"]),
            45,
        )
        show("our spoke resolution of the FRR spoke", state["resolutions"])
        done = next(r for r in state["resolutions"] if r["destination"] == str(frr.tunnel_ip))
        assert done["ok"] and done["nbma"] == str(frr.nbma), done
        assert not our_hub.state()["mirror_errors"] and not state["mirror_errors"]
    finally:
        show("our hub log", our_hub.log_text()[-500:])
        node.stop()
        our_hub.stop()
