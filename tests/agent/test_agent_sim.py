"""Whole DMVPN clouds of real agents (real NHRP engines and reconcile logic) over fake NBMA, data plane
and IPsec: registration after the SA, Phase 3 shortcuts gated by their SA, idle expiry, adoption, bad input."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from dmvpn.agent import views
from dmvpn.dataplane import HairpinEvent, Neighbour, Route
from dmvpn.ipsec.types import InitiatePolicy, IpsecError
from dmvpn.nhrp.cache import CacheEntry, EntryType
from dmvpn.nhrp.codec import Address, PacketType, TrafficIndication, encode
from dmvpn.nhrp.engine import ResolutionDone

from .conftest import HUB_NBMA, HUB_TUNNEL, Cloud, FakeDataplane, hub_config, ipv4_header, spoke_config, wait_for

S1_NBMA, S2_NBMA = IPv4Address("192.0.2.11"), IPv4Address("192.0.2.12")
S1_TUNNEL, S2_TUNNEL = IPv4Address("10.255.0.1"), IPv4Address("10.255.0.2")
S1_LAN, S2_LAN = IPv4Network("10.1.1.0/24"), IPv4Network("10.1.2.0/24")


async def registered_cloud(cloud: Cloud, ipsec: bool = True) -> None:
    await cloud.add(hub_config(ipsec=ipsec))
    await cloud.add(spoke_config(1, ipsec=ipsec))
    await cloud.add(spoke_config(2, ipsec=ipsec))
    hub = cloud.dataplanes["hub"]
    await wait_for(lambda: {Route(S1_LAN, via=S1_TUNNEL), Route(S2_LAN, via=S2_TUNNEL)} <= hub.routes)
    # The hub installs routes on the request; the spokes learn of it from the reply, a moment later.
    await wait_for(lambda: all(cloud.agents[s].engine.nhs[0].up for s in ("spoke-1", "spoke-2")))


def hairpin(cloud: Cloud, src: str, dst: str) -> None:
    cloud.agents["hub"].on_hairpin(HairpinEvent(IPv4Address(src), IPv4Address(dst), ipv4_header(src, dst)))


async def test_spokes_register_only_after_their_sa(cloud: Cloud) -> None:
    await registered_cloud(cloud)
    first_registration = next(
        i for i, (src, dst, data) in enumerate(cloud.net.sent) if data[17] == PacketType.REGISTRATION_REQUEST
    )
    assert frozenset({S1_NBMA, HUB_NBMA}) in cloud.net.sas
    assert cloud.agents["spoke-1"].stats.sends_held_for_sa >= 1, "registration was held until the SA came up"
    assert first_registration >= 0
    hub_view = views.show_dmvpn(cloud.agents["hub"])
    assert {(p["tunnel"], p["kind"], p["state"], p["ipsec"]) for p in hub_view["peers"]} == {
        (str(S1_TUNNEL), "spoke", "up", "up"),
        (str(S2_TUNNEL), "spoke", "up", "up"),
    }
    spoke_view = views.show_dmvpn(cloud.agents["spoke-1"])
    assert spoke_view["peers"][0] | {"uptime": None} == {
        "nbma": str(HUB_NBMA), "tunnel": str(HUB_TUNNEL), "kind": "nhs", "state": "up", "ipsec": "up", "uptime": None,
    }  # fmt: skip


async def test_phase3_shortcut_installed_once_sa_is_up_both_directions(cloud: Cloud) -> None:
    await registered_cloud(cloud)
    spoke1 = cloud.dataplanes["spoke-1"]
    hairpin(cloud, "10.1.1.10", "10.1.2.10")
    await wait_for(lambda: Route(S2_LAN, via=S2_TUNNEL) in spoke1.routes)
    assert Neighbour(S2_TUNNEL, S2_NBMA) in spoke1.neighbours
    sa_at = cloud.net.sas[frozenset({S1_NBMA, S2_NBMA})]
    route_at = next(t for t, what, item in spoke1.history if what == "+route" and item == Route(S2_LAN, via=S2_TUNNEL))
    assert route_at >= sa_at, "the shortcut must not carry traffic before its SA is up"
    # spoke-1 (192.0.2.11) is the lower address: the hub's Traffic Indication carried spoke-2's registration,
    # so spoke-1 asked nobody, spoke-2 never heard of it, and spoke-1 initiates at once. Once: if spoke-1
    # later drops the SA as idle, nobody makes it again until traffic asks (no ALWAYS keeper).
    assert cloud.agents["hub"].engine.counters.events["indication_answered"] == 1
    assert not [data for src, _, data in cloud.net.sent if src == S1_NBMA and data[17] == PacketType.RESOLUTION_REQUEST]
    assert (S2_NBMA, InitiatePolicy.ONCE) in cloud.ipsecs["spoke-1"].ensured
    assert not [peer for peer, _ in cloud.ipsecs["spoke-2"].ensured if peer == S1_NBMA]
    assert cloud.agents["spoke-1"].stats.shortcuts_created == 1
    kinds = [e["kind"] for e in views.show_events(cloud.agents["spoke-1"])]
    assert kinds.index("traffic-indication") < kinds.index("resolution-reply")
    # And back: spoke-2's traffic to spoke-1 hairpins at the hub too. spoke-2 is the higher address, but
    # the hub gave spoke-1 its answer moments ago (spoke-1 initiates), so spoke-2's indication carries
    # spoke-1's binding: spoke-2 asks nobody, and uses spoke-1's SA (up already).
    hairpin(cloud, "10.1.2.10", "10.1.1.10")
    await wait_for(lambda: Route(S1_LAN, via=S1_TUNNEL) in cloud.dataplanes["spoke-2"].routes)
    assert cloud.agents["hub"].engine.counters.events["indication_answered"] == 2
    assert cloud.agents["hub"].engine.counters.events["resolution_forwarded"] == 0
    assert not [data for src, _, data in cloud.net.sent if data[17] == PacketType.RESOLUTION_REQUEST]
    assert cloud.agents["spoke-2"].engine.counters.events["indication_answer_taken"] == 1
    shortcut_rows = [p for p in views.show_dmvpn(cloud.agents["spoke-1"])["peers"] if p["kind"] == "shortcut"]
    assert shortcut_rows and shortcut_rows[0]["state"] == "up" and shortcut_rows[0]["prefixes"] == [str(S2_LAN)]
    nhrp = {(row["protocol"], row["type"]) for row in views.show_nhrp(cloud.agents["spoke-1"])}
    assert {(str(S2_LAN), "shortcut"), (str(S2_TUNNEL), "shortcut"), (str(HUB_TUNNEL), "nhs")} <= nhrp


async def test_the_higher_address_resolving_leaves_the_sa_to_the_lower_responder(cloud: Cloud) -> None:
    """spoke-2 (.12) resolves spoke-1 (.11): the hub passes the request on, spoke-1 learns spoke-2's address
    from it and initiates at once; its reply, which waits for the SA, also goes back through the hub, so
    spoke-2 knows the binding early and waits for the SA (AUTO) instead of initiating a second IKE_SA."""
    await registered_cloud(cloud)
    spoke2 = cloud.dataplanes["spoke-2"]
    hairpin(cloud, "10.1.2.10", "10.1.1.10")
    await wait_for(lambda: Route(S1_LAN, via=S1_TUNNEL) in spoke2.routes)
    sa_at = cloud.net.sas[frozenset({S1_NBMA, S2_NBMA})]
    route_at = next(t for t, what, item in spoke2.history if what == "+route" and item == Route(S1_LAN, via=S1_TUNNEL))
    assert route_at >= sa_at, "the shortcut must not carry traffic before its SA is up"
    # (A second forward is a retransmission: the SA may come up before the relayed reply is read.)
    assert cloud.agents["hub"].engine.counters.events["resolution_forwarded"] >= 1
    assert cloud.agents["hub"].engine.counters.events["resolution_answered_from_cache"] == 0
    assert cloud.agents["hub"].engine.counters.events["indication_answered"] == 0
    assert (S2_NBMA, InitiatePolicy.ONCE) in cloud.ipsecs["spoke-1"].ensured
    assert [policy for peer, policy in cloud.ipsecs["spoke-2"].ensured if peer == S1_NBMA] == [InitiatePolicy.AUTO]
    assert cloud.agents["spoke-1"].stats.extra.get("replies_relayed", 0) >= 1
    relayed = [(src, dst) for src, dst, data in cloud.net.sent if data[17] == PacketType.RESOLUTION_REPLY]
    assert (S1_NBMA, HUB_NBMA) in relayed and (HUB_NBMA, S2_NBMA) in relayed
    # The held direct copy goes once the SA is up, and once more a moment later (the first copy may beat
    # the initiator's inbound SA); spoke-2 ignores the duplicates.
    await wait_for(lambda: cloud.agents["spoke-1"].stats.extra.get("held_sends_repeated", 0) >= 1)
    assert cloud.agents["spoke-2"].stats.shortcuts_created == 1


async def test_spokes_resolving_each_other_at_once_leave_the_sa_to_the_lower_address(cloud: Cloud) -> None:
    await registered_cloud(cloud)
    hairpin(cloud, "10.1.1.10", "10.1.2.10")  # both directions hairpin together
    hairpin(cloud, "10.1.2.10", "10.1.1.10")
    await wait_for(lambda: Route(S2_LAN, via=S2_TUNNEL) in cloud.dataplanes["spoke-1"].routes)
    await wait_for(lambda: Route(S1_LAN, via=S1_TUNNEL) in cloud.dataplanes["spoke-2"].routes)
    # spoke-1 (192.0.2.11) learns spoke-2's address from the hub's answer and initiates; spoke-2 (.12)
    # learns spoke-1's from its own indication and never initiates first (AUTO: its fallback would, if no
    # SA came).
    assert {policy for peer, policy in cloud.ipsecs["spoke-1"].ensured if peer == S2_NBMA} == {InitiatePolicy.ONCE}
    assert {policy for peer, policy in cloud.ipsecs["spoke-2"].ensured if peer == S1_NBMA} == {InitiatePolicy.AUTO}
    assert cloud.agents["spoke-2"].stats.extra.get("replies_relayed", 0) == 0, "the higher address answers nobody"
    # The hub answered spoke-1 first, so spoke-2's indication carried spoke-1's binding: nobody asked.
    assert cloud.agents["hub"].engine.counters.events["indication_answered"] == 2
    assert not [data for src, _, data in cloud.net.sent if data[17] == PacketType.RESOLUTION_REQUEST]


async def test_the_responder_routes_over_a_new_sa_once_a_packet_came_in_over_it(cloud: Cloud) -> None:
    """spoke-2 answered spoke-1's IKE_SA: its end was up before spoke-1 could decrypt, so its route through
    spoke-1 waits for a packet from spoke-1 over the SA; spoke-1, the initiator, routes at once."""
    await registered_cloud(cloud)
    cloud.net.packets_in[(S2_NBMA, S1_NBMA)] = 0
    hairpin(cloud, "10.1.1.10", "10.1.2.10")
    hairpin(cloud, "10.1.2.10", "10.1.1.10")
    await wait_for(lambda: Route(S2_LAN, via=S2_TUNNEL) in cloud.dataplanes["spoke-1"].routes)
    assert cloud.net.initiators[frozenset({S1_NBMA, S2_NBMA})] == S1_NBMA
    spoke2 = cloud.agents["spoke-2"]
    await wait_for(lambda: S1_NBMA in spoke2.sa_up_peers)
    await asyncio.sleep(0.2)
    assert Route(S1_LAN, via=S1_TUNNEL) not in cloud.dataplanes["spoke-2"].routes, "nothing came in yet"
    cloud.net.packets_in[(S2_NBMA, S1_NBMA)] = 3
    await wait_for(lambda: Route(S1_LAN, via=S1_TUNNEL) in cloud.dataplanes["spoke-2"].routes)
    ready = [e["text"] for e in views.show_events(spoke2) if e["kind"] == "sa-ready"]
    assert ready == [f"{S1_NBMA}: routing over the SA it initiated (a packet came in over it)"]
    assert not [e for e in views.show_events(cloud.agents["spoke-1"]) if e["kind"] == "sa-ready"]


async def test_a_responder_that_hears_nothing_routes_after_the_wait(cloud: Cloud) -> None:
    """One-way traffic: the initiator may send nothing over the SA. The wait bounds the delay."""
    from dmvpn.agent import agent as agent_module

    await registered_cloud(cloud)
    cloud.net.packets_in[(S2_NBMA, S1_NBMA)] = 0
    hairpin(cloud, "10.1.1.10", "10.1.2.10")
    hairpin(cloud, "10.1.2.10", "10.1.1.10")
    await wait_for(lambda: S1_NBMA in cloud.agents["spoke-2"].sa_up_peers)
    await wait_for(
        lambda: Route(S1_LAN, via=S1_TUNNEL) in cloud.dataplanes["spoke-2"].routes,
        limit=agent_module.PEER_READY_WAIT_S + 2,
    )
    ready = [e["text"] for e in views.show_events(cloud.agents["spoke-2"]) if e["kind"] == "sa-ready"]
    assert ready == [f"{S1_NBMA}: routing over the SA it initiated (nothing came in within 1 s)"]


async def test_only_an_nhs_answering_for_the_destination_makes_the_requester_initiate_at_once(cloud: Cloud) -> None:
    """An NHS answered itself: the destination never saw our request, nobody else brings the SA up. The
    responder's own reply, straight or relayed through an NHS, follows the tie-break (AUTO), and so does an
    answer in an indication: the lower end initiates, the higher one waits."""
    await cloud.add(spoke_config(1, ipsec=True))
    await cloud.add(spoke_config(2, ipsec=True))
    lower, higher = cloud.agents["spoke-1"], cloud.agents["spoke-2"]
    entry = CacheEntry(prefix=S2_LAN, type=EntryType.SHORTCUT, nbma=S2_NBMA, next_hop=S2_TUNNEL)
    answered = ResolutionDone(IPv4Address("10.1.2.10"), entry, relayed=True, nhs_answer=True)
    assert lower._shortcut_policy(answered) is InitiatePolicy.ONCE
    relayed = ResolutionDone(answered.destination, entry, relayed=True)
    assert lower._shortcut_policy(relayed) is InitiatePolicy.AUTO
    assert lower._shortcut_policy(ResolutionDone(answered.destination, entry)) is InitiatePolicy.AUTO
    indicated = replace(answered, indication_from=HUB_NBMA)
    assert lower._shortcut_policy(indicated) is InitiatePolicy.ONCE
    to_lower = CacheEntry(prefix=S1_LAN, type=EntryType.SHORTCUT, nbma=S1_NBMA, next_hop=S1_TUNNEL)
    assert higher._shortcut_policy(replace(indicated, entry=to_lower)) is InitiatePolicy.AUTO


async def test_idle_shortcut_expires_with_its_sa(cloud: Cloud) -> None:
    await registered_cloud(cloud)
    hairpin(cloud, "10.1.1.10", "10.1.2.10")
    spoke1 = cloud.dataplanes["spoke-1"]
    await wait_for(lambda: Route(S2_LAN, via=S2_TUNNEL) in spoke1.routes)
    agent = cloud.agents["spoke-1"]
    agent.sas = await cloud.ipsecs["spoke-1"].list_sas()
    assert agent.expire_idle_shortcuts() == []  # just made
    await asyncio.sleep(1.1)  # shortcutIdleTimeout is 1 s in these configs; no bytes moved
    agent.sas = await cloud.ipsecs["spoke-1"].list_sas()
    assert agent.expire_idle_shortcuts() == [S2_NBMA]
    await wait_for(lambda: Route(S2_LAN, via=S2_TUNNEL) not in spoke1.routes)
    await wait_for(lambda: S2_NBMA in cloud.ipsecs["spoke-1"].removed)
    assert Route(IPv4Network("10.1.0.0/16"), via=HUB_TUNNEL) in spoke1.routes
    assert agent.stats.shortcuts_expired == 1


async def test_an_sa_made_again_without_traffic_is_not_activity(cloud: Cloud) -> None:
    await registered_cloud(cloud)
    hairpin(cloud, "10.1.1.10", "10.1.2.10")
    await wait_for(lambda: Route(S2_LAN, via=S2_TUNNEL) in cloud.dataplanes["spoke-1"].routes)
    agent, ipsec = cloud.agents["spoke-1"], cloud.ipsecs["spoke-1"]
    ipsec.bytes[S2_NBMA] = 5000
    agent.sas = await ipsec.list_sas()
    await asyncio.sleep(1.1)
    ipsec.bytes[S2_NBMA] = 0  # the peer's charon replaced the SA: new counters, nothing carried
    agent.sas = await ipsec.list_sas()
    assert agent.expire_idle_shortcuts() == [S2_NBMA]


async def test_without_ipsec_the_usage_counter_keeps_a_busy_shortcut_and_ages_out_an_idle_one(cloud: Cloud) -> None:
    await registered_cloud(cloud, ipsec=False)
    hairpin(cloud, "10.1.1.10", "10.1.2.10")
    await wait_for(lambda: Route(S2_LAN, via=S2_TUNNEL) in cloud.dataplanes["spoke-1"].routes)
    agent = cloud.agents["spoke-1"]
    sent = 0
    for _ in range(4):  # busy for 4 idle timeouts: GRE to spoke-2 keeps growing
        sent += 1500
        agent.note_traffic({S2_NBMA: sent, HUB_NBMA: 99})
        assert agent.expire_idle_shortcuts() == []
        await asyncio.sleep(0.4)
    await asyncio.sleep(1.1)  # shortcutIdleTimeout is 1 s here; the counter stays where it was
    agent.note_traffic({S2_NBMA: sent, HUB_NBMA: 99})
    assert agent.expire_idle_shortcuts() == [S2_NBMA]
    await wait_for(lambda: Route(S2_LAN, via=S2_TUNNEL) not in cloud.dataplanes["spoke-1"].routes)


async def test_busy_shortcut_stays(cloud: Cloud) -> None:
    await registered_cloud(cloud)
    hairpin(cloud, "10.1.1.10", "10.1.2.10")
    await wait_for(lambda: Route(S2_LAN, via=S2_TUNNEL) in cloud.dataplanes["spoke-1"].routes)
    agent, ipsec = cloud.agents["spoke-1"], cloud.ipsecs["spoke-1"]
    for step in range(4):
        ipsec.bytes[S2_NBMA] = 1000 * (step + 1)
        agent.sas = await ipsec.list_sas()
        assert agent.expire_idle_shortcuts() == []
        await asyncio.sleep(0.4)


async def test_busy_shortcut_stays_when_sa_samples_are_slower_than_the_timeout(cloud: Cloud) -> None:
    """Idle time counts between SA samples: a late sample (charon slow on a loaded node) is no idleness.
    Before, a shortcut was removed whenever the last byte change was seen more than the timeout ago."""
    await registered_cloud(cloud)
    hairpin(cloud, "10.1.1.10", "10.1.2.10")
    spoke1 = cloud.dataplanes["spoke-1"]
    await wait_for(lambda: Route(S2_LAN, via=S2_TUNNEL) in spoke1.routes)
    agent, ipsec = cloud.agents["spoke-1"], cloud.ipsecs["spoke-1"]
    sample = ipsec.list_sas

    async def charon_too_slow() -> list[object]:
        raise TimeoutError("vici: no answer")

    ipsec.list_sas = charon_too_slow  # type: ignore[method-assign,assignment]  # the agent's own polls get nothing
    now = [agent.clock()]
    agent.clock = lambda: now[0]
    ipsec.bytes[S2_NBMA] = 1000
    agent.sas = await sample()
    now[0] += 1.5  # longer than shortcutIdleTimeout (1 s), without a fresh sample
    await asyncio.sleep(0.6)  # the agent's idle loop (every 0.25 s) runs meanwhile
    assert Route(S2_LAN, via=S2_TUNNEL) in spoke1.routes and agent.stats.shortcuts_expired == 0
    ipsec.bytes[S2_NBMA] = 2000
    agent.sas = await sample()
    now[0] += 1.1
    agent.sas = await sample()  # unchanged one timeout after the last change: idle
    await wait_for(lambda: Route(S2_LAN, via=S2_TUNNEL) not in spoke1.routes)
    assert agent.stats.shortcuts_expired == 1


async def test_restarted_spoke_adopts_kernel_state_without_removing_anything(cloud: Cloud) -> None:
    await registered_cloud(cloud)
    hairpin(cloud, "10.1.1.10", "10.1.2.10")
    spoke1 = cloud.dataplanes["spoke-1"]
    await wait_for(lambda: Route(S2_LAN, via=S2_TUNNEL) in spoke1.routes)
    old = cloud.agents.pop("spoke-1")
    await old.close()  # like kill -9: nothing is flushed
    kernel = FakeDataplane(neighbours=set(spoke1.neighbours), routes=set(spoke1.routes))
    cloud.net.ipsecs.pop(S1_NBMA)
    new = await cloud.add(spoke_config(1), dataplane=kernel)
    await wait_for(lambda: new.engine.nhs[0].up)
    await asyncio.sleep(0.2)
    removed = [item for _, what, item in kernel.history if what.startswith("-")]
    assert removed == [], f"a restart must not remove live state, removed {removed}"
    assert new.stats.adopted_entries == 2


async def test_restarted_hub_keeps_spoke_routes(cloud: Cloud) -> None:
    await registered_cloud(cloud)
    hub_dp = cloud.dataplanes["hub"]
    old = cloud.agents.pop("hub")
    await old.close()
    kernel = FakeDataplane(neighbours=set(hub_dp.neighbours), routes=set(hub_dp.routes))
    cloud.net.ipsecs.pop(HUB_NBMA)
    await cloud.add(hub_config(), dataplane=kernel)
    await asyncio.sleep(0.3)
    assert [item for _, what, item in kernel.history if what.startswith("-")] == []
    # and a Traffic Indication still works from the adopted registrations
    hairpin(cloud, "10.1.1.10", "10.1.2.10")
    await wait_for(lambda: Route(S2_LAN, via=S2_TUNNEL) in cloud.dataplanes["spoke-1"].routes)


async def test_malformed_nhrp_is_counted_and_dropped(cloud: Cloud) -> None:
    await registered_cloud(cloud, ipsec=False)
    hub = cloud.agents["hub"]
    garbage = [b"", b"\x00", b"\xff" * 19, bytes(20) + b"\x01" * 40, b"\x00\x01\x08\x00" + bytes(60)]
    for data in garbage:
        hub._on_packet(data, IPv4Address("192.0.2.99"))
    counters = views.show_counters(hub)
    assert counters["drops"].get("decode_error", 0) == len(garbage)
    assert hub.stats.extra.get("engine_errors", 0) == 0
    hairpin(cloud, "10.1.1.10", "10.1.2.10")  # still serving
    await wait_for(lambda: Route(S2_LAN, via=S2_TUNNEL) in cloud.dataplanes["spoke-1"].routes)


async def test_reconcile_failure_is_retried(cloud: Cloud) -> None:
    await cloud.add(hub_config(ipsec=False), dataplane=FakeDataplane(fail_next=1))
    await cloud.add(spoke_config(1, ipsec=False))
    await wait_for(lambda: Route(S1_LAN, via=S1_TUNNEL) in cloud.dataplanes["hub"].routes, limit=5)
    hub = cloud.agents["hub"]
    assert hub.stats.reconcile_errors == 1 and hub.stats.full_reconciles == 1
    cloud.dataplanes["hub"].fail_next = 1  # an incremental pass fails next
    await cloud.add(spoke_config(2, ipsec=False))
    await wait_for(lambda: Route(S2_LAN, via=S2_TUNNEL) in cloud.dataplanes["hub"].routes, limit=5)
    assert hub.stats.reconcile_errors == 2
    assert hub.stats.full_reconciles == 2, "after a failed write the next pass compares against the kernel"


async def test_changes_after_the_first_pass_are_written_incrementally(cloud: Cloud) -> None:
    await registered_cloud(cloud, ipsec=False)
    hairpin(cloud, "10.1.1.10", "10.1.2.10")
    await wait_for(lambda: Route(S2_LAN, via=S2_TUNNEL) in cloud.dataplanes["spoke-1"].routes)
    spoke1 = cloud.agents["spoke-1"]
    assert spoke1.stats.full_reconciles == 1, "only the pass after the start dumps the kernel's tables"
    assert cloud.dataplanes["spoke-1"].incremental >= 1
    assert spoke1.installed == spoke1.desired()


async def test_dual_hub_failover_keeps_shortcuts(cloud: Cloud) -> None:
    from dataclasses import replace

    from dmvpn.agent.config import HubPeer

    hub_b = HubPeer(nbma=IPv4Address("192.0.2.2"), tunnel_ip=IPv4Address("10.255.0.253"), name="hub-b",
                    summary_prefixes=(IPv4Network("10.1.0.0/16"),))  # fmt: skip
    await cloud.add(hub_config(ipsec=False))
    await cloud.add(replace(hub_config(ipsec=False), node="hub-b", nbma=hub_b.nbma,
                            tunnel=__import__("ipaddress").IPv4Interface("10.255.0.253/24")))  # fmt: skip
    for index in (1, 2):
        config = spoke_config(index, ipsec=False, shortcut_idle_timeout=300)
        await cloud.add(replace(config, hubs=(*config.hubs, hub_b)))
    spoke1 = cloud.dataplanes["spoke-1"]
    await wait_for(lambda: all(nhs.up for nhs in cloud.agents["spoke-1"].engine.nhs))
    hairpin(cloud, "10.1.1.10", "10.1.2.10")
    await wait_for(lambda: Route(S2_LAN, via=S2_TUNNEL) in spoke1.routes)
    # hub A dies: its packets vanish; spoke-1 declares it down and moves the summary to hub B
    dead = cloud.agents.pop("hub")
    await dead.close()
    agent = cloud.agents["spoke-1"]
    for nhs in agent.engine._registrar.nhs:  # fast-forward: refresh now instead of in holdTime/3
        nhs.next_send = 0
    agent._timer_wakeup.set()
    await wait_for(lambda: Route(IPv4Network("10.1.0.0/16"), via=hub_b.tunnel_ip) in spoke1.routes, limit=30)
    assert Route(S2_LAN, via=S2_TUNNEL) in spoke1.routes, "existing shortcuts keep forwarding"


async def test_spoke_whose_nbma_changes_re_registers_and_peers_rebuild_their_shortcut(cloud: Cloud) -> None:
    """spoke-2 comes back at a new NBMA address (a new Node address, a DHCP lease): with non-unique
    registrations the hub rebinds it at once and purges spoke-1's shortcut to the old address, whose SA
    spoke-1 removes; the next hairpin builds the shortcut to the new address."""
    from dataclasses import replace

    await cloud.add(hub_config())
    await cloud.add(spoke_config(1, unique_registration=False, shortcut_idle_timeout=300))
    await cloud.add(spoke_config(2, unique_registration=False, shortcut_idle_timeout=300))
    hub, spoke1 = cloud.dataplanes["hub"], cloud.dataplanes["spoke-1"]
    await wait_for(lambda: Route(S2_LAN, via=S2_TUNNEL) in hub.routes)
    hairpin(cloud, "10.1.1.10", "10.1.2.10")
    await wait_for(lambda: Neighbour(S2_TUNNEL, S2_NBMA) in spoke1.neighbours)

    moved_nbma = IPv4Address("192.0.2.52")
    old = cloud.agents.pop("spoke-2")
    await old.close()
    cloud.net.ipsecs.pop(S2_NBMA)
    await cloud.add(replace(spoke_config(2, unique_registration=False, shortcut_idle_timeout=300), nbma=moved_nbma))
    await wait_for(lambda: Neighbour(S2_TUNNEL, moved_nbma) in hub.neighbours)
    assert Neighbour(S2_TUNNEL, S2_NBMA) not in hub.neighbours
    await wait_for(lambda: Neighbour(S2_TUNNEL, S2_NBMA) not in spoke1.neighbours)
    assert Route(S2_LAN, via=S2_TUNNEL) not in spoke1.routes, "back via the hub until resolved again"
    await wait_for(lambda: S2_NBMA in cloud.ipsecs["spoke-1"].removed)
    assert cloud.ipsecs["spoke-1"].removed.count(S2_NBMA) == 1, "one removal, however many bindings went"

    # Traffic keeps hairpinning at the hub, which indicates again once its per-pair limit allows (2 per 5 s).
    for _ in range(16):
        hairpin(cloud, "10.1.1.10", "10.1.2.10")
        await asyncio.sleep(0.5)
        if Neighbour(S2_TUNNEL, moved_nbma) in spoke1.neighbours:
            break
    await wait_for(lambda: Neighbour(S2_TUNNEL, moved_nbma) in spoke1.neighbours)
    assert Route(S2_LAN, via=S2_TUNNEL) in spoke1.routes


async def test_unique_registration_from_a_moved_spoke_is_refused_and_reported(cloud: Cloud) -> None:
    """The default (unique bit set, as IOS): the hub keeps the old binding and the moved spoke's NHS stays
    down, visibly, until the old binding expires or the spoke is set to non-unique."""
    from dataclasses import replace

    await registered_cloud(cloud, ipsec=False)
    old = cloud.agents.pop("spoke-2")
    await old.close()
    moved = await cloud.add(replace(spoke_config(2, ipsec=False), nbma=IPv4Address("192.0.2.52")))
    await wait_for(lambda: cloud.agents["hub"].engine.counters.events["registration_unique_conflict"] >= 1)
    assert not moved.engine.nhs[0].up
    assert Neighbour(S2_TUNNEL, S2_NBMA) in cloud.dataplanes["hub"].neighbours
    nhs_row = views.show_dmvpn(moved)["peers"][0]
    assert nhs_row["kind"] == "nhs" and nhs_row["state"] != "up"


async def test_busy_shortcut_is_renewed_before_it_expires_and_never_leaves_the_kernel(cloud: Cloud) -> None:
    """Holding time 6 s: a shortcut still in use is resolved again ~3 s before it would expire; its routes
    stay put across several holding times (before, they went at expiry and traffic fell back to the hub)."""
    await cloud.add(hub_config(ipsec=False, hold_time=6))
    for index in (1, 2):
        await cloud.add(spoke_config(index, ipsec=False, hold_time=6, shortcut_idle_timeout=300))
    hub, spoke1 = cloud.dataplanes["hub"], cloud.dataplanes["spoke-1"]
    await wait_for(lambda: Route(S2_LAN, via=S2_TUNNEL) in hub.routes)
    hairpin(cloud, "10.1.1.10", "10.1.2.10")
    await wait_for(lambda: Route(S2_LAN, via=S2_TUNNEL) in spoke1.routes)
    await asyncio.sleep(14.0)  # more than two holding times
    assert Route(S2_LAN, via=S2_TUNNEL) in spoke1.routes
    assert [item for _, what, item in spoke1.history if what == "-route"] == []
    renewed = [e for e in views.show_events(cloud.agents["spoke-1"]) if e["kind"] == "shortcut-renewed"]
    assert len(renewed) >= 2 and cloud.agents["spoke-1"].stats.shortcuts_created == 1


async def test_idle_shortcut_is_not_renewed(cloud: Cloud) -> None:
    await cloud.add(hub_config(ipsec=False, hold_time=6))
    for index in (1, 2):
        await cloud.add(spoke_config(index, ipsec=False, hold_time=6, shortcut_idle_timeout=2))
    spoke1 = cloud.dataplanes["spoke-1"]
    await wait_for(lambda: Route(S2_LAN, via=S2_TUNNEL) in cloud.dataplanes["hub"].routes)
    hairpin(cloud, "10.1.1.10", "10.1.2.10")
    await wait_for(lambda: Route(S2_LAN, via=S2_TUNNEL) in spoke1.routes)
    await wait_for(lambda: Route(S2_LAN, via=S2_TUNNEL) not in spoke1.routes, limit=8)
    assert not [e for e in views.show_events(cloud.agents["spoke-1"]) if e["kind"] == "shortcut-renewed"]


async def test_ipsec_guard_drops_are_counted_in_show_counters_and_metrics(cloud: Cloud) -> None:
    """Clear GRE the guard dropped (a rogue sender without IKE credentials) is visible, not silent."""
    from prometheus_client import CollectorRegistry, generate_latest

    from dmvpn.agent.metrics import Metrics
    from dmvpn.ipsec.types import GuardCounters

    await registered_cloud(cloud)
    hub = cloud.agents["hub"]
    assert views.show_counters(hub)["ipsecGuard"] is None  # not sampled yet

    async def counters() -> GuardCounters:
        return GuardCounters(dropped_in_packets=7, dropped_in_bytes=700, dropped_out_packets=1, dropped_out_bytes=90)

    hub._guard_counters = counters
    await hub._sample_guard()
    assert views.show_counters(hub)["ipsecGuard"] == {"droppedInPackets": 7, "droppedOutPackets": 1}
    registry = CollectorRegistry()
    Metrics(registry).attach(hub)
    text = generate_latest(registry).decode()
    assert 'dmvpn_ipsec_guard_dropped_packets_total{direction="in"} 7.0' in text
    assert 'dmvpn_nhrp_packets_total{direction="in",type="registration_request"}' in text


async def test_a_hairpin_reader_that_fails_to_start_is_started_again(cloud: Cloud) -> None:
    """nft too slow on a loaded node's first use: the hub says so and listens once it works, so Phase 3
    redirects are late, not lost for the agent's life."""
    import contextlib
    from collections.abc import AsyncIterator

    from dmvpn.agent.agent import Agent

    attempts: list[int] = []
    delivered = asyncio.Queue[HairpinEvent]()

    @contextlib.asynccontextmanager
    async def flaky_reader() -> AsyncIterator[AsyncIterator[HairpinEvent]]:
        attempts.append(1)
        if len(attempts) == 1:
            raise TimeoutError("nft did not finish within 10 s")

        async def events() -> AsyncIterator[HairpinEvent]:
            while True:
                yield await delivered.get()

        yield events()

    config = hub_config(ipsec=False)
    dataplane = FakeDataplane()
    hub = Agent(config, dataplane, None, cloud.net.transport_for(config.nbma), hairpin=flaky_reader)
    cloud.agents["hub"], cloud.dataplanes["hub"] = hub, dataplane
    await hub.start()
    await cloud.add(spoke_config(1, ipsec=False))
    await cloud.add(spoke_config(2, ipsec=False))
    await wait_for(lambda: any(e["kind"] == "hairpin" and e["text"] == "listening" for e in hub.events), limit=5)
    assert [e["kind"] for e in hub.events].count("hairpin-failed") == 1 and hub.stats.extra["hairpin_restarts"] == 1
    await wait_for(lambda: Route(S2_LAN, via=S2_TUNNEL) in dataplane.routes)
    delivered.put_nowait(
        HairpinEvent(IPv4Address("10.1.1.10"), IPv4Address("10.1.2.10"), ipv4_header("10.1.1.10", "10.1.2.10"))
    )
    await wait_for(lambda: Route(S2_LAN, via=S2_TUNNEL) in cloud.dataplanes["spoke-1"].routes)


async def test_phase2_on_demand_resolution_serves_both_directions(cloud: Cloud) -> None:
    """The kernel at spoke-1 asks for spoke-2's tunnel address; spoke-1 resolves it and spoke-2, which
    answered, can reach spoke-1 at once (its replies to the first packets go straight back)."""
    from dmvpn.dataplane import Solicitation

    await cloud.add(hub_config(ipsec=False, phase=2))
    await cloud.add(spoke_config(1, ipsec=False, phase=2))
    await cloud.add(spoke_config(2, ipsec=False, phase=2))
    await wait_for(lambda: all(cloud.agents[s].engine.nhs[0].up for s in ("spoke-1", "spoke-2")))
    cloud.agents["spoke-1"].on_solicitation(Solicitation(S2_TUNNEL, 7))
    await wait_for(lambda: Neighbour(S2_TUNNEL, S2_NBMA) in cloud.dataplanes["spoke-1"].neighbours)
    await wait_for(lambda: Neighbour(S1_TUNNEL, S1_NBMA) in cloud.dataplanes["spoke-2"].neighbours)
    assert cloud.agents["spoke-2"].stats.solicitations == 0, "spoke-2 needed no resolution of its own"


async def test_teardown_removes_every_kernel_helper_even_when_one_fails(cloud: Cloud) -> None:
    removed: list[str] = []

    async def remove(what: str) -> None:
        if what == "ipsec guard":
            raise RuntimeError("nft: too slow")
        removed.append(what)

    helpers = [(what, lambda what=what: remove(what)) for what in ("hairpin chain", "ipsec guard", "traffic counter")]
    hub = await cloud.add(hub_config(ipsec=False), uninstall=helpers)
    assert await hub.remove_kernel_helpers() == ["ipsec guard"]
    assert removed == ["hairpin chain", "traffic counter"]


async def test_housekeeping_waits_until_resolution_traffic_has_passed(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shortcut being built (the hairpin at the hub, the Traffic Indication and the resolution at the
    spoke) puts the periodic SA-list and guard samples off until it is quiet, at most the given limit."""
    import time

    from dmvpn.agent import agent as agent_module

    await registered_cloud(cloud)
    hub, spoke1 = cloud.agents["hub"], cloud.agents["spoke-1"]
    started = time.monotonic()
    await hub._until_resolution_quiet(limit_s=5.0)  # registrations are no resolution traffic
    assert time.monotonic() - started < 1.0 and "housekeeping_deferred" not in hub.stats.extra

    monkeypatch.setattr(agent_module, "HOUSEKEEPING_QUIET_S", 0.4)
    hairpin(cloud, "10.1.1.10", "10.1.2.10")
    await wait_for(lambda: spoke1._resolution_traffic_at > started)  # the Traffic Indication arrived
    await spoke1._until_resolution_quiet(limit_s=5.0)
    assert time.monotonic() >= spoke1._resolution_traffic_at + 0.4, "returned before the traffic was quiet"
    # at least this wait (the agent's own sampling task may have waited too)
    assert views.show_counters(spoke1)["agent"]["housekeeping_deferred"] >= 1

    monkeypatch.setattr(agent_module, "HOUSEKEEPING_QUIET_S", 60.0)
    hairpin(cloud, "10.1.1.10", "10.1.2.10")
    started = time.monotonic()
    await hub._until_resolution_quiet(limit_s=0.3)  # never quiet: the limit still ends the wait
    assert 0.3 <= time.monotonic() - started < 5.0
    assert hub.stats.extra["housekeeping_deferred"] >= 1


async def test_packets_wake_the_timer_without_running_every_timer(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each packet wakes the timer task so it sees new deadlines; the engine's timers run only when one
    is due, or at least once a second on an agent that is woken all the time."""
    import time

    await registered_cloud(cloud, ipsec=False)
    hub = cloud.agents["hub"]
    ticks: list[float] = []
    real_tick = hub.engine.tick

    def counted_tick(now: float) -> list[Any]:
        ticks.append(now)
        return real_tick(now)

    monkeypatch.setattr(hub.engine, "tick", counted_tick)
    monkeypatch.setattr(hub.engine, "next_deadline", lambda: None)  # nothing is due
    await asyncio.sleep(0.05)
    ticks.clear()
    started = time.monotonic()
    for _ in range(50):  # fifty packets' wake-ups within a fraction of a second
        hub._timer_wakeup.set()
        await asyncio.sleep(0.002)
    assert len(ticks) <= 1, f"{len(ticks)} ticks for 50 wake-ups with nothing due"
    while time.monotonic() - started < 1.6:  # woken all the time: still ticks within about a second
        hub._timer_wakeup.set()
        await asyncio.sleep(0.01)
    assert ticks, "an agent woken all the time never ran its timers"


async def test_a_resolution_requests_cached_binding_costs_the_phase3_responder_no_reconcile(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The responder caches the requester's binding (CACHED), which no Phase 3 plan uses: recomputing
    the plan for it would only delay the next packet. The requester still installs its shortcut."""
    await registered_cloud(cloud, ipsec=False)
    # Our hub would answer our spokes itself: spoke-1 stands in for a requester that sets the A bit (the
    # engine's default), so the request goes on to spoke-2.
    requester = cloud.agents["spoke-1"].engine._ctx
    requester.config = replace(requester.config, authoritative_requests=True)
    responder = cloud.agents["spoke-2"]
    passes: list[int] = []
    real_desired = responder.desired

    def counted_desired() -> Any:
        passes.append(1)
        return real_desired()

    monkeypatch.setattr(responder, "desired", counted_desired)
    await asyncio.sleep(0.05)
    passes.clear()
    hairpin(cloud, "10.1.1.10", "10.1.2.10")
    await wait_for(lambda: Route(S2_LAN, via=S2_TUNNEL) in cloud.dataplanes["spoke-1"].routes)
    await wait_for(lambda: any(e.type == EntryType.CACHED for e in responder.engine.cache))
    await asyncio.sleep(0.1)
    assert passes == [], "the responder ran a reconcile pass for a binding its plan cannot use"


async def test_charons_configuration_is_checked_by_the_periodic_sample_and_a_failed_check_is_reported(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ensure_peer never compares charon's connections with ours (a shortcut waits for it); the periodic
    SA sample does, and a check that fails is reported and tried again at the next sample."""
    await registered_cloud(cloud)
    spoke = cloud.agents["spoke-1"]
    ipsec = cloud.ipsecs["spoke-1"]
    calls: list[int] = []

    async def failing_once() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise IpsecError("get-conns failed: charon is busy")

    monkeypatch.setattr(ipsec, "verify_if_due", failing_once)
    await wait_for(lambda: len(calls) >= 1, limit=10.0)
    assert spoke.stats.last_error == "ipsec verify: get-conns failed: charon is busy"
    await wait_for(lambda: len(calls) >= 2, limit=10.0)  # the loop kept sampling


async def test_the_request_leaves_before_the_indication_is_noted_and_a_refused_one_is_not_noted(
    cloud: Cloud,
) -> None:
    """Noting a Traffic Indication (a decode and a log line) waits until the Resolution Request it caused
    has left; an indication the engine does not act on (here: for our own site) starts no clock."""
    await registered_cloud(cloud, ipsec=False)
    spoke1 = cloud.agents["spoke-1"]
    transport = spoke1.transport
    assert transport is not None
    noted_at_send: list[int] = []
    real_send = transport.send

    def watched_send(nbma: Address, data: bytes) -> bool:
        if data[17] == PacketType.RESOLUTION_REQUEST:
            noted_at_send.append(sum(e["kind"] == "traffic-indication" for e in spoke1.events))
        return real_send(nbma, data)

    transport.send = watched_send  # type: ignore[method-assign]
    # An indication without our hub's answer in it (as an FRR or IOS hub sends it): spoke-1 must ask.
    plain = TrafficIndication(hop_count=1, src_nbma=HUB_NBMA, src_protocol=HUB_TUNNEL, dst_protocol=S1_TUNNEL,
                              original_packet=ipv4_header("10.1.1.10", "10.1.2.10"))  # fmt: skip
    spoke1._on_packet(encode(plain), HUB_NBMA)
    await wait_for(lambda: any(e["kind"] == "traffic-indication" for e in spoke1.events))
    assert noted_at_send[0] == 0, "the indication was noted before its request left"

    own = TrafficIndication(hop_count=1, src_nbma=HUB_NBMA, src_protocol=HUB_TUNNEL, dst_protocol=S1_TUNNEL,
                            original_packet=ipv4_header("10.1.2.10", "10.1.1.20"))  # fmt: skip
    spoke1._on_packet(encode(own), HUB_NBMA)
    assert IPv4Address("10.1.1.20") not in spoke1._resolving_since
    assert sum(e["kind"] == "traffic-indication" for e in spoke1.events) == 1
