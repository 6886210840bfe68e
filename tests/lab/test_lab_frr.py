"""The lab proves its reference peer: FRR nhrpd spokes register with an FRR nhrpd hub in the guest."""

from __future__ import annotations

import time

import pytest

from dmvpn.lab.frr import FrrNhrp, nhrp_cache, start_frr_nhrpd, wait_for_cache_entry
from dmvpn.lab.topology import Lab, add_static_mgre, hub_and_spokes

pytestmark = pytest.mark.kernel


def test_frr_spoke_registers_with_frr_hub(lab: Lab) -> None:
    hub, spoke1 = hub_and_spokes(lab, spokes=1, with_pods=False)
    for site in (hub, spoke1):
        add_static_mgre(site)
    hub_vty = start_frr_nhrpd(lab, hub, FrrNhrp(role="hub"))
    start_frr_nhrpd(lab, spoke1, FrrNhrp(role="spoke", nhs_nbma=(str(hub.nbma),)))
    cache = wait_for_cache_entry(hub, hub_vty, str(spoke1.tunnel_ip), 60, version=8)
    print(f"\n[lab] FRR hub cache: {cache}")
    assert cache.get(str(spoke1.tunnel_ip)) == ("dynamic", str(spoke1.nbma)), f"spoke not registered: {cache}"


def test_frr10_authentication_accepts_match_and_refuses_mismatch(lab: Lab) -> None:
    """FRR 10 is the lab's peer for NHRP authentication (FRR 8.4 lacks it)."""
    hub, good, bad = hub_and_spokes(lab, spokes=2, with_pods=False)
    for site in (hub, good, bad):
        add_static_mgre(site)
    hub_vty = start_frr_nhrpd(lab, hub, FrrNhrp(role="hub", version=10, authentication="s3cret"))
    nhs = (str(hub.nbma),)
    start_frr_nhrpd(lab, good, FrrNhrp(role="spoke", nhs_nbma=nhs, version=10, authentication="s3cret"))
    start_frr_nhrpd(lab, bad, FrrNhrp(role="spoke", nhs_nbma=nhs, version=10, authentication="wrong"))
    wait_for_cache_entry(hub, hub_vty, str(good.tunnel_ip), 60, version=10)
    time.sleep(3.0)  # give the wrong-secret spoke the same chance to register
    cache = nhrp_cache(hub, hub_vty, version=10)
    print(f"\n[lab] FRR 10 hub cache (auth): {cache}")
    assert cache.get(str(good.tunnel_ip)) == ("dynamic", str(good.nbma))
    assert str(bad.tunnel_ip) not in cache
