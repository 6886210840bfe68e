"""The operator's pure core: decisions from plain dicts, no kopf, no API server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from kubeharness import hub, node, report, spoke

from dmvpn.controller import core
from dmvpn.controller.allocation import allocate, usable_hosts
from dmvpn.controller.ledger import Ledger

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
NET = IPv4Network("10.255.0.0/24")


def facts(*bodies: dict[str, Any]) -> dict[str, core.NodeFacts]:
    return {body["metadata"]["name"]: core.NodeFacts.from_node(body) for body in bodies}


def edges(count: int) -> dict[str, core.NodeFacts]:
    return facts(
        node("hub-node", internal="192.0.2.1"),
        *(node(f"e{i}", {"dmvpn.io/role": "spoke"}, internal=f"198.51.100.{i + 1}") for i in range(count)),
    )


def condition(outcome: core.Outcome, kind: str) -> dict[str, Any]:
    return next(c for c in outcome.status["conditions"] if c["type"] == kind)


def with_status(body: dict[str, Any], **status: Any) -> dict[str, Any]:
    return {**body, "status": status}


# --- allocation ------------------------------------------------------------------------------------


def test_allocation_keeps_previous_addresses_and_fills_the_lowest_free_ones() -> None:
    previous = {"b": IPv4Interface("10.255.0.7/24")}
    result = allocate(NET, ["a", "b", "c"], previous, reserved={IPv4Address("10.255.0.1")}, occupied=set())
    assert result.addresses == {
        "a": IPv4Interface("10.255.0.2/24"),
        "b": IPv4Interface("10.255.0.7/24"),
        "c": IPv4Interface("10.255.0.3/24"),
    }


def test_a_reserved_address_evicts_a_previous_owner_but_an_occupied_one_does_not() -> None:
    previous = {"a": IPv4Interface("10.255.0.5/24"), "b": IPv4Interface("10.255.0.6/24")}
    result = allocate(
        NET, ["a", "b"], previous, reserved={IPv4Address("10.255.0.5")}, occupied={IPv4Address("10.255.0.6")}
    )
    assert result.addresses["b"] == IPv4Interface("10.255.0.6/24")
    assert result.addresses["a"] == IPv4Interface("10.255.0.1/24") and result.moved == ("a",)


def test_a_full_subnet_leaves_nodes_unallocated() -> None:
    small = IPv4Network("10.255.0.0/30")
    assert usable_hosts(small) == 2
    result = allocate(small, ["a", "b", "c"], {}, reserved={IPv4Address("10.255.0.1")}, occupied=set())
    assert result.addresses == {"a": IPv4Interface("10.255.0.2/30")} and result.unallocated == ("b", "c")


@given(
    nodes=st.sets(st.sampled_from([f"n{i}" for i in range(40)]), max_size=40),
    previous=st.dictionaries(st.sampled_from([f"n{i}" for i in range(40)]), st.integers(0, 63), max_size=40),
    reserved=st.sets(st.integers(0, 63), max_size=20),
)
def test_allocation_never_duplicates_and_avoids_reserved(
    nodes: set[str], previous: dict[str, int], reserved: set[int]
) -> None:
    network = IPv4Network("10.0.0.0/26")
    reserved_ips = {network[i] for i in reserved}
    before = {n: IPv4Interface(f"{network[i]}/26") for n, i in previous.items()}
    result = allocate(network, nodes, before, reserved=reserved_ips, occupied=set())
    addresses = [a.ip for a in result.addresses.values()]
    assert len(addresses) == len(set(addresses))
    assert not set(addresses) & reserved_ips
    assert network.network_address not in addresses and network.broadcast_address not in addresses
    assert set(result.addresses) | set(result.unallocated) == nodes
    again = allocate(network, nodes, result.addresses, reserved=reserved_ips, occupied=set())
    assert again.addresses == result.addresses  # stable


def test_the_ledger_sees_pending_allocations_of_other_spokes() -> None:
    ledger = Ledger()

    def take(name: str, node_name: str) -> dict[str, IPv4Interface]:
        def decide(claims: Any) -> dict[str, IPv4Interface]:
            used = {a.ip for owner, addresses in claims.items() if owner != name for a in addresses}
            return allocate(NET, [node_name], {}, reserved=used, occupied=set()).addresses

        return ledger.decide(name, {}, decide, lambda d: d)

    first, second = take("a", "n1"), take("b", "n2")  # nothing persisted yet: only the ledger knows
    assert first["n1"] != second["n2"]
    ledger.release("a")
    assert take("c", "n3")["n3"] == first["n1"]


# --- hubs ------------------------------------------------------------------------------------------


def test_a_hub_takes_its_nbma_from_the_node_and_is_ready_when_its_agent_serves() -> None:
    body = hub("hub-1", nbma={"fromNode": "ExternalIP"})
    nodes = facts(node("hub-node", internal="192.0.2.1", external="203.0.113.1"))
    outcome = core.reconcile_hub(body, nodes, now=NOW)
    assert outcome.accepted and outcome.status["nbma"] == "203.0.113.1"
    assert condition(outcome, "Ready")["reason"] == "NodesNotReady"
    served = with_status(body, nodes={"hub-node": {**report("hub", peers=5), "lastUpdate": "2025-01-01T11:59:50Z"}})
    outcome = core.reconcile_hub(served, nodes, now=NOW)
    assert outcome.ready and outcome.status["registeredSpokes"] == 5
    stale = core.reconcile_hub(served, nodes, now=NOW + timedelta(hours=1))
    assert not stale.ready and "last report" in condition(stale, "Ready")["message"]


def test_a_hub_without_the_address_type_says_how_to_fix_it() -> None:
    outcome = core.reconcile_hub(hub("hub-1"), facts(node("hub-node", external="203.0.113.1")), now=NOW)
    ready = condition(outcome, "Ready")
    assert ready["reason"] == "NoNbmaAddress" and "spec.nbma.fromNode" in ready["message"]
    assert outcome.events and outcome.events[0].type == "Warning"


def test_a_hub_selecting_no_node_or_two_nodes() -> None:
    body = hub("hub-1", nodeSelector={"role": "hub"})
    none = core.reconcile_hub(body, facts(node("x")), now=NOW)
    assert none.accepted and condition(none, "Ready")["reason"] == "NoNodesSelected"
    two = core.reconcile_hub(body, facts(node("a", {"role": "hub"}), node("b", {"role": "hub"})), now=NOW)
    assert not two.accepted and condition(two, "Accepted")["reason"] == "AmbiguousNodeSelector"


# --- spokes ----------------------------------------------------------------------------------------


def neighbours(**extra: Any) -> core.Neighbours:
    return core.Neighbours(hubs={"hub-1": hub("hub-1"), **extra.pop("hubs", {})}, **extra)


def test_a_spoke_gets_addresses_avoiding_hubs_explicit_spokes_federated_hubs_and_other_claims() -> None:
    pinned = spoke("pinned", nodeName="e0")
    pinned["spec"]["tunnel"]["address"] = "10.255.0.2/24"
    remote = spoke("remote", nodeName="e1", hubs=())
    remote["spec"]["hubs"] = [{"nbma": "203.0.113.9", "tunnelAddress": "10.255.0.3"}]
    claims = {"aaa": frozenset({IPv4Interface("10.255.0.4/24")}), "zzz": frozenset({IPv4Interface("10.255.0.5/24")})}
    outcome = core.reconcile_spoke(
        spoke("mmm"), edges(2), neighbours(spokes={"pinned": pinned, "remote": remote}, claims=claims), now=NOW
    )
    assert {str(a) for a in outcome.allocations.values()} == {"10.255.0.6/24", "10.255.0.7/24"}
    assert outcome.events[0].reason == "Allocated"


def test_an_invalid_spoke_keeps_what_it_had_and_gets_nothing_new() -> None:
    body = spoke("s")
    body["spec"]["tunnel"]["greKey"] = 7
    body = with_status(body, allocations={"e0": "10.255.0.9/24"})
    outcome = core.reconcile_spoke(body, edges(3), neighbours(), now=NOW)
    assert not outcome.accepted and outcome.allocations == {"e0": IPv4Interface("10.255.0.9/24")}
    assert "spec.tunnel.greKey" in condition(outcome, "Accepted")["message"]


def test_spoke_hub_consistency_problems_are_reported_with_their_paths() -> None:
    other = hub("hub-2", address="10.254.0.1/24")
    two = core.reconcile_spoke(
        spoke("s", hubs=("hub-1", "hub-2")), edges(1), neighbours(hubs={"hub-2": other}), now=NOW
    )
    assert "different tunnel subnets" in condition(two, "Accepted")["message"]
    broken = hub("hub-2")
    broken["spec"]["tunnel"]["greKey"] = "x"
    bad = core.reconcile_spoke(spoke("s", hubs=("hub-2",)), edges(1), neighbours(hubs={"hub-2": broken}), now=NOW)
    message = condition(bad, "Accepted")["message"]
    assert "DMVPNHub hub-2 is not valid" in message and "no DMVPNHub named" not in message
    remote = spoke("s", hubs=())
    remote["spec"]["hubs"] = [{"nbma": "203.0.113.9", "tunnelAddress": "10.255.0.3"}]
    alone = core.reconcile_spoke(remote, edges(1), neighbours(), now=NOW)
    assert "no in-cluster hub" in condition(alone, "Accepted")["message"]


def test_a_younger_spoke_cannot_take_an_older_spokes_explicit_address() -> None:
    older = spoke("older", nodeName="e0")
    older["spec"]["tunnel"]["address"] = "10.255.0.2/24"
    older["metadata"]["creationTimestamp"] = "2025-01-01T00:00:00Z"
    younger = spoke("younger", nodeName="e1")
    younger["spec"]["tunnel"]["address"] = "10.255.0.2/24"
    younger["metadata"]["creationTimestamp"] = "2025-01-02T00:00:00Z"
    refused = core.reconcile_spoke(younger, edges(2), neighbours(spokes={"older": older}), now=NOW)
    assert "already DMVPNSpoke older's tunnel.address" in condition(refused, "Accepted")["message"]
    kept = core.reconcile_spoke(older, edges(2), neighbours(spokes={"younger": younger}), now=NOW)
    assert kept.accepted and kept.allocations == {}


def test_readiness_degradation_and_summaries_from_agent_reports() -> None:
    fresh = "2025-01-01T11:59:30Z"
    body = with_status(
        spoke("s"),
        nodes={
            "e0": {**report(shortcuts=2), "lastUpdate": fresh},
            "e1": {**report(registered=False, message="IKE: no proposal chosen"), "lastUpdate": fresh},
            "e2": {"role": "spoke"},  # malformed: no lastUpdate
        },
    )
    outcome = core.reconcile_spoke(body, edges(3), neighbours(), now=NOW)
    status = outcome.status
    assert (status["selectedNodes"], status["readyNodes"], status["hubsUp"], status["shortcuts"]) == (3, 1, 1, 2)
    ready = condition(outcome, "Ready")
    assert ready["reason"] == "NodesNotReady" and "IKE: no proposal chosen" in ready["message"]
    assert "e2: unreadable report" in ready["message"]
    assert condition(outcome, "Degraded")["status"] == "True"


def test_conditions_keep_their_transition_time_and_events_fire_once() -> None:
    first = core.reconcile_spoke(spoke("s"), edges(1), neighbours(), now=NOW)
    later = core.reconcile_spoke(
        spoke("s"), edges(1), neighbours(), now=NOW + timedelta(minutes=5), previous=first.status
    )
    assert condition(later, "Accepted")["lastTransitionTime"] == condition(first, "Accepted")["lastTransitionTime"]
    assert later.events == ()


# --- deletion and patches --------------------------------------------------------------------------


def test_finalization_waits_for_existing_nodes_only_and_gives_up_after_the_timeout() -> None:
    body = with_status(spoke("s"), nodes={"e0": report(), "gone": report()})
    body["metadata"]["deletionTimestamp"] = "2025-01-01T11:59:00Z"
    waiting = core.finalize(body, edges(1), now=NOW)
    assert not waiting.done and waiting.waiting == ("e0",)
    assert "e0" in waiting.status["conditions"][0]["message"]
    late = core.finalize(body, edges(1), now=NOW + timedelta(minutes=5))
    assert late.done and late.timed_out and late.events[0].reason == "CleanupTimeout"
    clean = core.finalize(with_status(body, nodes={"gone": report()}), edges(1), now=NOW)
    assert clean.done and not clean.timed_out


def test_status_patch_only_touches_what_changed_and_nulls_removed_keys() -> None:
    current = {"allocations": {"a": "10.255.0.2/24", "b": "10.255.0.3/24"}, "nbma": "192.0.2.1", "hubsUp": 1}
    desired = {"allocations": {"a": "10.255.0.2/24", "c": "10.255.0.4/24"}, "nbma": None, "hubsUp": 1}
    assert core.status_patch(current, desired, ["gone"]) == {
        "allocations": {"b": None, "c": "10.255.0.4/24"},
        "nbma": None,
        "nodes": {"gone": None},
    }
