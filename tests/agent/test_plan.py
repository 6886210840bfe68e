"""Pure reconcile decisions per role and phase."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

from hypothesis import given
from hypothesis import strategies as st

from dmvpn.agent import plan
from dmvpn.agent.config import HubPeer
from dmvpn.dataplane import Neighbour, Route
from dmvpn.nhrp.cache import CacheEntry, EntryType

from .conftest import HUB_NBMA, HUB_TUNNEL, hub_config, spoke_config

S2_NBMA = IPv4Address("192.0.2.12")
S2_TUNNEL = IPv4Address("10.255.0.2")
S2_LAN = IPv4Network("10.1.2.0/24")


def shortcut(prefix: IPv4Network, expires: float | None = 100.0) -> CacheEntry:
    return CacheEntry(prefix=prefix, type=EntryType.SHORTCUT, nbma=S2_NBMA, next_hop=S2_TUNNEL, expires=expires)


SHORTCUT_ENTRIES = [shortcut(S2_LAN), shortcut(IPv4Network(S2_TUNNEL))]


def test_phase3_spoke_routes_summary_and_tunnel_subnet_via_hub() -> None:
    want = plan.desired(spoke_config(1), [], nhs_up={HUB_NBMA}, sa_up=set(), now=0)
    assert want.neighbours == {Neighbour(HUB_TUNNEL, HUB_NBMA)}
    assert want.routes == {
        Route(IPv4Network("10.255.0.0/24"), via=HUB_TUNNEL),
        Route(IPv4Network("10.1.0.0/16"), via=HUB_TUNNEL),
        Route(IPv4Network("10.1.0.0/24"), via=HUB_TUNNEL),
    }


def test_shortcut_waits_for_its_sa() -> None:
    config = spoke_config(1)
    before = plan.desired(config, SHORTCUT_ENTRIES, {HUB_NBMA}, sa_up=set(), now=0)
    assert Route(S2_LAN, via=S2_TUNNEL) not in before.routes
    after = plan.desired(config, SHORTCUT_ENTRIES, {HUB_NBMA}, sa_up={S2_NBMA}, now=0)
    assert Route(S2_LAN, via=S2_TUNNEL) in after.routes
    assert Route(IPv4Network(S2_TUNNEL)) in after.routes
    assert Neighbour(S2_TUNNEL, S2_NBMA) in after.neighbours


def test_shortcut_without_ipsec_is_immediate_and_expired_ones_are_not() -> None:
    config = spoke_config(1, ipsec=False)
    assert Route(S2_LAN, via=S2_TUNNEL) in plan.desired(config, SHORTCUT_ENTRIES, {HUB_NBMA}, set(), 0).routes
    stale = [shortcut(S2_LAN, expires=5.0)]
    assert Route(S2_LAN, via=S2_TUNNEL) not in plan.desired(config, stale, {HUB_NBMA}, set(), now=6.0).routes


def test_phase1_sends_everything_via_hub_and_ignores_shortcuts() -> None:
    config = spoke_config(1, ipsec=False, phase=1)
    want = plan.desired(config, SHORTCUT_ENTRIES, {HUB_NBMA}, set(), 0)
    assert Route(S2_LAN, via=HUB_TUNNEL) in want.routes
    assert Neighbour(S2_TUNNEL, S2_NBMA) not in want.neighbours


def test_phase2_routes_peer_prefixes_via_peer_on_the_link() -> None:
    config = spoke_config(1, ipsec=False, phase=2)
    want = plan.desired(config, [], {HUB_NBMA}, set(), 0)
    assert Route(S2_LAN, via=S2_TUNNEL) in want.routes
    assert Route(IPv4Network("10.255.0.0/24")) in want.routes  # kernel solicits peers' tunnel addresses
    resolved = plan.desired(config, [shortcut(IPv4Network(S2_TUNNEL))], {HUB_NBMA}, set(), 0)
    assert Neighbour(S2_TUNNEL, S2_NBMA) in resolved.neighbours


def test_phase2_responder_uses_the_requesters_binding_for_its_replies() -> None:
    """spoke-2 answered spoke-1's Resolution Request and cached spoke-1's binding (S bit): its replies to
    spoke-1's first packets go to spoke-1's tunnel address directly (its Phase 2 route), so that binding
    becomes a neighbour at once; before, the replies waited on a resolution of their own and were lost."""
    requester = CacheEntry(
        prefix=IPv4Network("10.255.0.1/32"), type=EntryType.CACHED, nbma=IPv4Address("192.0.2.11"),
        next_hop=IPv4Address("10.255.0.1"), expires=100,
    )  # fmt: skip
    phase2 = plan.desired(spoke_config(2, ipsec=False, phase=2), [requester], {HUB_NBMA}, set(), 0)
    assert Neighbour(IPv4Address("10.255.0.1"), IPv4Address("192.0.2.11")) in phase2.neighbours
    with_ipsec = spoke_config(2, ipsec=True, phase=2)
    assert (
        Neighbour(IPv4Address("10.255.0.1"), IPv4Address("192.0.2.11"))
        not in plan.desired(with_ipsec, [requester], {HUB_NBMA}, set(), 0).neighbours
    ), "not before the SA to the requester is up"
    phase3 = plan.desired(spoke_config(2, ipsec=False), [requester], {HUB_NBMA}, set(), 0)
    assert Neighbour(IPv4Address("10.255.0.1"), IPv4Address("192.0.2.11")) not in phase3.neighbours


def test_dual_hub_prefers_first_up_hub() -> None:
    second = HubPeer(nbma=IPv4Address("192.0.2.2"), tunnel_ip=IPv4Address("10.255.0.253"), name="hub-b")
    config = spoke_config(1)
    config = replace(config, hubs=(*config.hubs, second))
    both = plan.desired(config, [], {HUB_NBMA, second.nbma}, set(), 0)
    assert Route(IPv4Network("10.1.0.0/16"), via=HUB_TUNNEL) in both.routes
    failover = plan.desired(config, [], {second.nbma}, set(), 0)
    assert Route(IPv4Network("10.1.0.0/16"), via=second.tunnel_ip) in failover.routes
    assert Route(IPv4Network("10.1.0.0/16"), via=HUB_TUNNEL) not in failover.routes
    assert {Neighbour(HUB_TUNNEL, HUB_NBMA), Neighbour(second.tunnel_ip, second.nbma)} <= failover.neighbours


def test_dual_hub_routes_each_hubs_own_lan_via_that_hub() -> None:
    """Hub B's LAN is only behind hub B: routing it via the active hub A (which has no route to it) made
    it unreachable from spokes while A was up (seen in the dual-hub kernel lab)."""
    lan_b = IPv4Network("10.1.200.0/24")
    second = HubPeer(
        nbma=IPv4Address("192.0.2.2"),
        tunnel_ip=IPv4Address("10.255.0.253"),
        name="hub-b",
        summary_prefixes=(IPv4Network("10.1.0.0/16"),),
        site_prefixes=(lan_b,),
    )
    config = spoke_config(1)
    config = replace(config, hubs=(*config.hubs, second))
    both = plan.desired(config, [], {HUB_NBMA, second.nbma}, set(), 0)
    assert Route(lan_b, via=second.tunnel_ip) in both.routes
    assert Route(IPv4Network("10.1.0.0/24"), via=HUB_TUNNEL) in both.routes
    assert Route(IPv4Network("10.1.0.0/16"), via=HUB_TUNNEL) in both.routes
    assert len({route.prefix for route in both.routes}) == len(both.routes), "one route per prefix"
    failover = plan.desired(config, [], {second.nbma}, set(), 0)
    assert Route(IPv4Network("10.1.0.0/16"), via=second.tunnel_ip) in failover.routes
    assert Route(lan_b, via=second.tunnel_ip) in failover.routes


def test_hub_installs_registrations() -> None:
    entries = [
        CacheEntry(prefix=IPv4Network(S2_TUNNEL), type=EntryType.DYNAMIC, nbma=S2_NBMA, next_hop=S2_TUNNEL, expires=9),
        CacheEntry(prefix=S2_LAN, type=EntryType.DYNAMIC, nbma=S2_NBMA, next_hop=S2_TUNNEL, expires=9),
        CacheEntry(prefix=IPv4Network("10.1.0.0/24"), type=EntryType.LOCAL, next_hop=HUB_TUNNEL),
    ]
    want = plan.desired(hub_config(), entries, set(), set(), now=0)
    assert want.neighbours == {Neighbour(S2_TUNNEL, S2_NBMA)}
    assert want.routes == {Route(IPv4Network("10.255.0.0/24")), Route(S2_LAN, via=S2_TUNNEL)}
    assert plan.desired(hub_config(), entries, set(), set(), now=10).neighbours == frozenset()


def test_own_prefixes_are_never_routed_into_the_tunnel() -> None:
    own = CacheEntry(prefix=IPv4Network("10.1.1.0/24"), type=EntryType.SHORTCUT, nbma=S2_NBMA, next_hop=S2_TUNNEL)
    want = plan.desired(spoke_config(1, ipsec=False), [own], {HUB_NBMA}, set(), 0)
    assert not any(route.prefix == IPv4Network("10.1.1.0/24") for route in want.routes)


def test_adoption_rebuilds_shortcuts_and_registrations() -> None:
    neighbours = [Neighbour(HUB_TUNNEL, HUB_NBMA), Neighbour(S2_TUNNEL, S2_NBMA)]
    routes = [Route(S2_LAN, via=S2_TUNNEL), Route(IPv4Network("10.1.0.0/16"), via=HUB_TUNNEL)]
    spoke = plan.adopted_entries(spoke_config(1), neighbours, routes, now=0)
    assert {(e.prefix, e.type) for e in spoke} == {
        (IPv4Network(S2_TUNNEL), EntryType.SHORTCUT),
        (S2_LAN, EntryType.SHORTCUT),
    }
    hub = plan.adopted_entries(hub_config(), [Neighbour(S2_TUNNEL, S2_NBMA)], [Route(S2_LAN, via=S2_TUNNEL)], 0)
    assert {e.type for e in hub} == {EntryType.DYNAMIC} and len(hub) == 2


def test_changes_write_only_the_difference_and_never_replace_a_conflicted_key() -> None:
    peer = Neighbour(IPv4Address("10.255.0.2"), IPv4Address("192.0.2.12"))
    moved = Neighbour(peer.tunnel_ip, IPv4Address("192.0.2.99"))
    gone = Neighbour(IPv4Address("10.255.0.3"), IPv4Address("192.0.2.13"))
    lan, other, old, new = (IPv4Network(f"10.{i}.0.0/16") for i in (2, 88, 3, 4))
    before = plan.Desired(
        frozenset({peer, gone}),
        frozenset(
            {Route(lan, via=peer.tunnel_ip), Route(other, via=peer.tunnel_ip), Route(IPv4Network("10.3.0.0/16"))}
        ),
    )
    after = plan.Desired(
        frozenset({moved}),
        frozenset(
            {Route(lan, via=gone.tunnel_ip), Route(other, via=gone.tunnel_ip), Route(IPv4Network("10.4.0.0/16"))}
        ),
    )
    diff = plan.changes(before, after, conflicts={(other, 0)})
    assert diff.set_neighbours == (moved,) and diff.remove_neighbours == (gone,)
    assert diff.change_routes == (Route(lan, via=gone.tunnel_ip),), "a key we installed is replaced in place"
    assert diff.add_routes == (Route(new), Route(other, via=gone.tunnel_ip)), (
        "a key a foreign route held is only ever created, never replaced"
    )
    assert diff.remove_routes == (Route(old),)
    assert not plan.changes(after, after), "nothing to write when nothing changed"


def test_only_the_bindings_a_plan_can_use_call_for_a_reconcile() -> None:
    kinds = {phase: {t for t in EntryType if plan.uses(spoke_config(1, phase=phase), t)} for phase in (1, 2, 3)}
    assert kinds == {1: set(), 2: {EntryType.SHORTCUT, EntryType.CACHED}, 3: {EntryType.SHORTCUT}}
    assert {t for t in EntryType if plan.uses(hub_config(), t)} == {EntryType.DYNAMIC}
    # uses() must agree with what desired() actually installs: a Phase 2 CACHED binding is a route.
    cached = replace(shortcut(S2_LAN), type=EntryType.CACHED)
    phase2 = spoke_config(1, ipsec=False, phase=2)
    assert Route(S2_LAN, via=S2_TUNNEL) in plan.desired(phase2, [cached], {HUB_NBMA}, set(), 0).routes
    phase3 = spoke_config(1, ipsec=False)
    assert plan.desired(phase3, [cached], {HUB_NBMA}, set(), 0) == plan.desired(phase3, [], {HUB_NBMA}, set(), 0)


@given(st.integers(0, 2**32 - 1), st.integers(0, 32), st.integers(0, 2**32 - 1), st.integers(0, 32), st.booleans())
def test_within_agrees_with_ipaddress_subnet_of(a: int, a_len: int, b: int, b_len: int, nested: bool) -> None:
    inner = IPv4Network((a, a_len), strict=False)
    outer = IPv4Network((b if not nested else a, b_len), strict=False)  # often nested, often not
    assert plan._within(inner, outer) == inner.subnet_of(outer)
