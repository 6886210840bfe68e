"""The lab proves its reference peer: FRR nhrpd spokes register with an FRR nhrpd hub in the guest."""

from __future__ import annotations

import time

import pytest

from dmvpn.lab.frr import FrrNhrp, start_frr_nhrpd, vtysh
from dmvpn.lab.topology import Lab, add_static_mgre, hub_and_spokes

pytestmark = pytest.mark.kernel


def test_frr_spoke_registers_with_frr_hub(lab: Lab) -> None:
    hub, spoke1 = hub_and_spokes(lab, spokes=1, with_pods=False)
    for site in (hub, spoke1):
        add_static_mgre(site)
    hub_vty = start_frr_nhrpd(lab, hub, FrrNhrp(role="hub"))
    start_frr_nhrpd(lab, spoke1, FrrNhrp(role="spoke", nhs_nbma=(str(hub.nbma),)))
    cache = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and str(spoke1.tunnel_ip) not in cache:
        time.sleep(1.0)
        cache = vtysh(hub, hub_vty, "show ip nhrp cache")
    print(f"\n[lab] FRR hub cache:\n{cache}")
    row = next((line for line in cache.splitlines() if str(spoke1.tunnel_ip) in line), "")
    assert "dynamic" in row and str(spoke1.nbma) in row, f"spoke not registered:\n{cache}"
