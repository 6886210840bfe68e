"""The lab proves itself: hand-built multipoint GRE carries pod traffic via the hub, then directly."""

from __future__ import annotations

import pytest

from dmvpn.lab.topology import (
    Lab,
    add_static_mgre,
    hub_and_spokes,
    neighbour,
    ping,
    static_hub_and_spokes,
    static_shortcut,
)

pytestmark = pytest.mark.kernel


def test_pod_traffic_goes_via_hub_then_direct(lab: Lab) -> None:
    sites = hub_and_spokes(lab, spokes=2)
    hub, spoke1, spoke2 = sites
    static_hub_and_spokes(sites)
    assert spoke1.pod is not None
    before = hub.ns.link_stats("gre1")
    sent, received = ping(spoke1.pod, str(spoke2.pod_ip), count=3)
    via_hub = hub.ns.link_stats("gre1")
    assert (sent, received) == (3, 3)
    # Each echo and reply crosses the hub's gre1 once in and once out.
    assert via_hub["rx"] - before["rx"] >= 6 and via_hub["tx"] - before["tx"] >= 6
    print(f"\n[lab] via hub: hub gre1 rx +{via_hub['rx'] - before['rx']} tx +{via_hub['tx'] - before['tx']}")

    static_shortcut(spoke1, spoke2)
    static_shortcut(spoke2, spoke1)
    sent, received = ping(spoke1.pod, str(spoke2.pod_ip), count=3)
    direct = hub.ns.link_stats("gre1")
    assert (sent, received) == (3, 3)
    assert direct == via_hub, "after the shortcut no packet may cross the hub"
    spoke2_gre = spoke2.ns.link_stats("gre1")
    assert spoke2_gre["rx"] >= 3
    print(f"[lab] direct: hub gre1 unchanged {direct}, spoke2 gre1 {spoke2_gre}")


def test_gre_key_mismatch_carries_nothing(lab: Lab) -> None:
    """The GRE key is part of the tunnel identity: a site with another key must not be reachable."""
    hub, spoke1 = hub_and_spokes(lab, spokes=1)
    add_static_mgre(hub, key=42)
    add_static_mgre(spoke1, key=43)
    neighbour(hub, spoke1)
    hub.ns.run("ip", "route", "add", f"{spoke1.tunnel_ip}/32", "dev", "gre1")
    assert ping(hub.ns, str(spoke1.tunnel_ip), count=2, interval=0.2, timeout_s=1)[1] == 0
