"""Our NHRP spoke against an FRR nhrpd 8.4 hub, next to an FRR spoke (kernel lab, virtme-ng guest).

One lab, three checks: our spoke registers with FRR's hub (issue 3, test 1); our spoke resolves FRR spoke B
across FRR's hub and gets its NBMA address; FRR spoke C, redirected by FRR's hub, resolves our spoke and
we answer it (test 3a). Two FRR spokes, because a resolution leaves the requester's binding at the
responder, and the second direction would then need no resolution at all. The caches on both sides are
printed as evidence.
"""

from __future__ import annotations

import pytest
from interop_harness import frr_cache_until, frr_show, show, spoke_routes, start_our_node

from dmvpn.lab.frr import FrrNhrp, nhrp_cache, start_frr_nhrpd
from dmvpn.lab.topology import TUNNEL_NET, Lab, add_static_mgre, hub_and_spokes, ping

pytestmark = pytest.mark.kernel


def test_our_spoke_with_frr_hub_and_frr_spoke(lab: Lab) -> None:
    hub, ours, frr, frr_c = hub_and_spokes(lab, spokes=3, with_pods=False)
    for site in (hub, ours, frr, frr_c):
        add_static_mgre(site)
    hub.ns.run("ip", "route", "add", str(TUNNEL_NET), "dev", "gre1")  # FRR's hub routes its spokes via gre1
    for spoke in (ours, frr, frr_c):
        spoke_routes(spoke, hub)
    hub_vty = start_frr_nhrpd(lab, hub, FrrNhrp(role="hub"))
    frr_vty = start_frr_nhrpd(lab, frr, FrrNhrp(role="spoke", nhs_nbma=(str(hub.nbma),)))
    frr_c_vty = start_frr_nhrpd(lab, frr_c, FrrNhrp(role="spoke", nhs_nbma=(str(hub.nbma),)))
    node = start_our_node(lab, ours, nhs=[str(hub.nbma)], site_prefixes=["10.1.1.0/24"])
    try:
        # 1. our spoke registers: FRR's hub shows it as dynamic with our NBMA; our NHS state is up.
        state = node.wait("NHS up", lambda s: s["nhs"].get(str(hub.nbma), {}).get("up", False), 60)
        wanted = {str(ours.tunnel_ip): ("dynamic", str(ours.nbma)), str(frr.tunnel_ip): ("dynamic", str(frr.nbma))}
        hub_cache = frr_cache_until(hub, hub_vty, lambda c: all(c.get(k) == v for k, v in wanted.items()), 60)
        show("FRR 8.4 hub cache after registration", hub_cache)
        show("our spoke NHS state", state["nhs"])
        show("our spoke registration events", state["counters"]["events"])
        assert hub_cache.get(str(ours.tunnel_ip)) == ("dynamic", str(ours.nbma)), hub_cache
        assert hub_cache.get(str(frr.tunnel_ip)) == ("dynamic", str(frr.nbma)), hub_cache
        assert state["nhs"][str(hub.nbma)]["protocol"] == str(hub.tunnel_ip)

        # 3a. our spoke resolves the FRR spoke across FRR's hub.
        node.command(f"resolve {frr.tunnel_ip}")
        state = node.wait(
            "resolution of the FRR spoke",
            lambda s: any(r["destination"] == str(frr.tunnel_ip) for r in s["resolutions"]),
            45,
        )
        show("our spoke resolution of the FRR spoke", state["resolutions"])
        show("our spoke cache", node.cache())
        done = next(r for r in state["resolutions"] if r["destination"] == str(frr.tunnel_ip))
        assert done["ok"] and done["nbma"] == str(frr.nbma), done
        assert node.cache().get(str(frr.tunnel_ip)) == ("shortcut", str(frr.nbma))

        show("FRR spoke B cache (it answered us)", nhrp_cache(frr, frr_vty))

        # 3a, other direction: FRR spoke C's traffic to us hairpins at FRR's hub, which redirects it;
        # C resolves our address through the hub and we answer it directly.
        sent, received = ping(frr_c.ns, str(ours.tunnel_ip), count=6, interval=0.5)
        show("ping FRR spoke C -> our spoke (via hub, then direct)", f"{received}/{sent}")
        frr_cache = frr_cache_until(frr_c, frr_c_vty, lambda c: str(ours.tunnel_ip) in c, 30)
        show("FRR spoke C cache", frr_cache)
        show("FRR spoke C shortcuts", frr_show(frr_c, frr_c_vty, "show ip nhrp shortcut"))
        state = node.wait("C's binding", lambda s: any(e["prefix"] == f"{frr_c.tunnel_ip}/32" for e in s["cache"]), 10)
        show("our spoke cache after C's resolution", node.cache())
        show("our spoke counters", state["counters"])
        assert received > 0
        assert frr_cache.get(str(ours.tunnel_ip), ("", ""))[1] == str(ours.nbma), frr_cache
        assert state["counters"]["packets_in"].get("resolution_request", 0) >= 1
        assert state["counters"]["packets_out"].get("resolution_reply", 0) >= 1
        assert node.cache().get(str(frr_c.tunnel_ip)) == ("cached", str(frr_c.nbma))
        assert not state["mirror_errors"], state["mirror_errors"]
    finally:
        show("FRR hub cache at the end", nhrp_cache(hub, hub_vty))
        node.stop()
