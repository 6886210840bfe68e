"""NHRP authentication (Cisco cleartext extension) against FRR 10.3 nhrpd, both ways (kernel lab).

A matching secret registers; a wrong one is refused on both sides, and the refusal does not turn into an
endless exchange of Error Indications (two FRR 10 peers do that: lab notes, ~11,600 packets in 35 s).
"""

from __future__ import annotations

import time

import pytest
from interop_harness import frr_cache_until, show, start_our_node

from dmvpn.lab.frr import FrrNhrp, nhrp_cache, start_frr_nhrpd
from dmvpn.lab.topology import Lab, add_static_mgre, hub_and_spokes

pytestmark = pytest.mark.kernel

SECRET = "s3cret"
WINDOW_S = 10.0
# Packets a refused peer may exchange with us in WINDOW_S: its registration retries plus our rate-limited
# Error Indications (burst 5, then 1/s) - far below a ping-pong's thousands.
MAX_PACKETS_IN_WINDOW = 40


def total(counter: dict[str, int]) -> int:
    return sum(counter.values())


def test_frr10_hub_accepts_our_right_secret_and_refuses_our_wrong_one(lab: Lab) -> None:
    hub, good, bad = hub_and_spokes(lab, spokes=2, with_pods=False)
    for site in (hub, good, bad):
        add_static_mgre(site)
    hub_vty = start_frr_nhrpd(lab, hub, FrrNhrp(role="hub", version=10, authentication=SECRET))
    ours_good = start_our_node(lab, good, nhs=[str(hub.nbma)], secret=SECRET)
    ours_bad = start_our_node(lab, bad, nhs=[str(hub.nbma)], secret="wrong")
    try:
        ours_good.wait("NHS up", lambda s: s["nhs"].get(str(hub.nbma), {}).get("up", False), 60)
        cache = frr_cache_until(hub, hub_vty, lambda c: str(good.tunnel_ip) in c, 30, version=10)
        before = ours_bad.state()["counters"]
        time.sleep(WINDOW_S)
        after = ours_bad.state()
        cache = nhrp_cache(hub, hub_vty, version=10)
        show("FRR 10 hub cache (auth)", cache)
        show("our right-secret spoke NHS", ours_good.state()["nhs"])
        show("our wrong-secret spoke NHS", after["nhs"])
        show("our wrong-secret spoke counters", after["counters"])
        window_in = total(after["counters"]["packets_in"]) - total(before["packets_in"])
        window_out = total(after["counters"]["packets_out"]) - total(before["packets_out"])
        show(f"wrong-secret spoke packets in/out during {WINDOW_S:.0f} s", f"{window_in}/{window_out}")
        assert cache.get(str(good.tunnel_ip)) == ("dynamic", str(good.nbma)), cache
        assert str(bad.tunnel_ip) not in cache, cache
        assert not after["nhs"].get(str(hub.nbma), {}).get("up", False)
        assert window_in + window_out <= MAX_PACKETS_IN_WINDOW
    finally:
        ours_good.stop()
        ours_bad.stop()


def test_our_hub_accepts_frr10_right_secret_and_refuses_wrong_one(lab: Lab) -> None:
    hub, good, bad = hub_and_spokes(lab, spokes=2, with_pods=False)
    for site in (hub, good, bad):
        add_static_mgre(site)
    our_hub = start_our_node(lab, hub, server=True, secret=SECRET)
    nhs = (str(hub.nbma),)
    start_frr_nhrpd(lab, good, FrrNhrp(role="spoke", nhs_nbma=nhs, version=10, authentication=SECRET))
    start_frr_nhrpd(lab, bad, FrrNhrp(role="spoke", nhs_nbma=nhs, version=10, authentication="wrong"))
    try:
        our_hub.wait("the right-secret FRR spoke", lambda s: str(good.tunnel_ip) in our_hub.cache(), 60)
        our_hub.wait("an authentication failure", lambda s: s["counters"]["drops"].get("auth_failure", 0) > 0, 30)
        before = our_hub.state()["counters"]
        time.sleep(WINDOW_S)
        after = our_hub.state()["counters"]
        show("our hub cache (auth)", our_hub.cache())
        show("our hub counters", after)
        window_in = total(after["packets_in"]) - total(before["packets_in"])
        window_out = total(after["packets_out"]) - total(before["packets_out"])
        show(f"our hub packets in/out during {WINDOW_S:.0f} s", f"{window_in}/{window_out}")
        assert our_hub.cache()[str(good.tunnel_ip)] == ("dynamic", str(good.nbma))
        assert str(bad.tunnel_ip) not in our_hub.cache()
        assert after["drops"]["auth_failure"] >= 1
        assert after["error_indications_out"].get("authentication_failure", 0) >= 1
        assert window_in + window_out <= MAX_PACKETS_IN_WINDOW
    finally:
        our_hub.stop()
