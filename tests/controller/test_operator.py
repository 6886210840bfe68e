"""The real operator (kopf) against the API emulator over HTTP: what users and agents see."""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta
from ipaddress import IPv4Interface
from typing import Any

from kubeharness import (
    HUBS,
    NODES,
    SPOKES,
    Cluster,
    OperatorFactory,
    eventually,
    hub,
    node,
    operator_calls,
    report,
    spoke,
)

from dmvpn.controller import core
from dmvpn.controller.access import OPERATOR_ACCESS, triples


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def allocated(cluster: Cluster, name: str, count: int) -> dict[str, str] | None:
    """The spoke's allocations once there are ``count`` of them."""
    allocations: dict[str, str] = cluster.status(SPOKES, name).get("allocations") or {}
    return allocations if len(allocations) == count else None


async def test_hub_and_spokes_get_nbma_allocations_conditions_and_events(
    cluster: Cluster, operator: OperatorFactory
) -> None:
    await cluster.create(node("hub-node", internal="192.0.2.1"))
    for index in range(3):
        await cluster.create(node(f"edge-{index}", {"dmvpn.io/role": "spoke"}, internal=f"198.51.100.{index + 1}"))
    await cluster.create(node("other", internal="198.51.100.99"))
    await operator()
    await cluster.create(hub("hub-1"))
    await cluster.create(spoke("branches"))

    allocations = await eventually(
        lambda: (
            len(cluster.status(SPOKES, "branches").get("allocations", {})) == 3
            and cluster.status(SPOKES, "branches")["allocations"]
        ),
        what="allocations",
    )
    addresses = {IPv4Interface(a) for a in allocations.values()}
    assert set(allocations) == {"edge-0", "edge-1", "edge-2"}
    assert len(addresses) == 3 and IPv4Interface("10.255.0.1/24") not in addresses
    assert all(str(a.network) == "10.255.0.0/24" for a in addresses)
    assert cluster.condition(SPOKES, "branches", "Accepted")["status"] == "True"
    ready = cluster.condition(SPOKES, "branches", "Ready")
    assert ready["status"] == "False" and ready["reason"] == "NodesNotReady"
    await eventually(lambda: cluster.status(HUBS, "hub-1").get("nbma") == "192.0.2.1", what="hub nbma")
    assert cluster.status(HUBS, "hub-1")["selectedNodes"] == 1
    await eventually(lambda: cluster.events("branches", "Allocated"), what="Allocated event")

    await cluster.report(HUBS, "hub-1", "hub-node", report("hub", peers=3))
    for index in range(3):
        await cluster.report(SPOKES, "branches", f"edge-{index}", report(shortcuts=index))
    await eventually(lambda: cluster.condition(SPOKES, "branches", "Ready")["status"] == "True", what="spoke Ready")
    status = cluster.status(SPOKES, "branches")
    assert (status["selectedNodes"], status["readyNodes"], status["hubsUp"], status["shortcuts"]) == (3, 3, 1, 3)
    await eventually(lambda: cluster.condition(HUBS, "hub-1", "Ready")["status"] == "True", what="hub Ready")
    assert cluster.status(HUBS, "hub-1")["registeredSpokes"] == 3
    await eventually(lambda: cluster.events("branches", "Ready") and cluster.events("hub-1", "Ready"), what="events")
    # the agents' entries are theirs: the operator never rewrote them
    assert cluster.status(SPOKES, "branches")["nodes"]["edge-1"]["shortcuts"] == 1


async def test_a_node_joining_the_selector_becomes_an_endpoint_and_a_leaving_one_is_withdrawn(
    cluster: Cluster, operator: OperatorFactory
) -> None:
    await cluster.create(node("hub-node", internal="192.0.2.1"))
    await cluster.create(node("edge-0", {"dmvpn.io/role": "spoke"}, internal="198.51.100.1"))
    await cluster.create(node("edge-1", internal="198.51.100.2"))
    await operator()
    await cluster.create(hub("hub-1"))
    await cluster.create(spoke("branches"))
    first = await eventually(lambda: allocated(cluster, "branches", 1), what="one allocation")

    await cluster.patch(NODES, "edge-1", {"metadata": {"labels": {"dmvpn.io/role": "spoke"}}})
    both = await eventually(lambda: allocated(cluster, "branches", 2), what="the joining node's allocation")
    assert both["edge-0"] == first["edge-0"] and both["edge-1"] != first["edge-0"]

    await cluster.report(SPOKES, "branches", "edge-0", report())
    await cluster.patch(NODES, "edge-0", {"metadata": {"labels": {"dmvpn.io/role": None}}})
    left = await eventually(lambda: allocated(cluster, "branches", 1), what="withdrawal")
    assert left == {"edge-1": both["edge-1"]}
    await eventually(lambda: cluster.events("branches", "Released"), what="Released event")
    # the agent of a node that left cleans its own entry; the operator only removes entries of deleted Nodes
    assert "edge-0" in cluster.status(SPOKES, "branches")["nodes"]
    await cluster.delete(NODES, "edge-0")
    await eventually(lambda: "edge-0" not in cluster.status(SPOKES, "branches").get("nodes", {}), what="entry GC")


async def test_deletion_waits_for_the_agents_cleanup_then_releases_the_object(
    cluster: Cluster, operator: OperatorFactory
) -> None:
    await cluster.create(node("hub-node", internal="192.0.2.1"))
    await cluster.create(node("edge-0", {"dmvpn.io/role": "spoke"}, internal="198.51.100.1"))
    await operator()
    await cluster.create(hub("hub-1"))
    await cluster.create(spoke("branches"))
    await eventually(lambda: allocated(cluster, "branches", 1), what="allocation")
    await cluster.report(SPOKES, "branches", "edge-0", report())
    await eventually(lambda: "dmvpn.io/cleanup" in cluster.get(SPOKES, "branches")["metadata"]["finalizers"])

    await cluster.delete(SPOKES, "branches")
    deleting = await eventually(
        lambda: (c := cluster.condition(SPOKES, "branches", "Ready")) and c["reason"] == "Deleting" and c,
        what="Deleting condition",
    )
    assert "edge-0" in deleting["message"]
    await asyncio.sleep(0.5)
    assert cluster.get(SPOKES, "branches") is not None, "released before the agent cleaned up"
    await cluster.report(SPOKES, "branches", "edge-0", None)  # the agent removed tunnels and SAs
    await eventually(lambda: cluster.get(SPOKES, "branches") is None, what="the object to go")


async def test_deletion_gives_up_waiting_after_the_timeout(cluster: Cluster, operator: OperatorFactory) -> None:
    await cluster.create(node("hub-node", internal="192.0.2.1"))
    await operator(rules=core.Config(cleanup_timeout=timedelta(seconds=1)))
    await cluster.create(hub("hub-1"))
    await eventually(lambda: cluster.condition(HUBS, "hub-1", "Accepted"), what="hub status")
    await cluster.report(HUBS, "hub-1", "hub-node", report("hub"))
    await eventually(lambda: "dmvpn.io/cleanup" in cluster.get(HUBS, "hub-1")["metadata"]["finalizers"])
    await cluster.delete(HUBS, "hub-1")
    await eventually(lambda: cluster.get(HUBS, "hub-1") is None, within=20, what="release after the timeout")
    # kopf posts events from its own background task: the event may land just after the release
    await eventually(lambda: cluster.events("hub-1", "CleanupTimeout"), what="the CleanupTimeout event")


async def test_invalid_objects_get_a_condition_that_says_what_to_fix_and_no_allocation(
    cluster: Cluster, operator: OperatorFactory
) -> None:
    await cluster.create(node("hub-node", internal="192.0.2.1"))
    await cluster.create(node("a", {"role": "hub"}, internal="192.0.2.2"))
    await cluster.create(node("b", {"role": "hub"}, internal="192.0.2.3"))
    await cluster.create(node("edge-0", {"dmvpn.io/role": "spoke"}, internal="198.51.100.1"))
    await operator()
    await cluster.create(hub("hub-1"))
    await cluster.create(hub("two-nodes", address="10.254.0.1/24", nodeSelector={"role": "hub"}))
    wrong_key = spoke("wrong-key")
    wrong_key["spec"]["tunnel"]["greKey"] = 7
    await cluster.create(wrong_key)
    typo = spoke("typo")
    typo["spec"]["tunel"] = typo["spec"].pop("tunnel")
    await cluster.create(typo)
    await cluster.create(spoke("no-hub", hubs=("hub-9",)))

    def refused(resource: str, name: str) -> dict[str, Any] | None:
        accepted = cluster.condition(resource, name, "Accepted")
        return accepted if accepted and accepted["status"] == "False" else None

    message = (await eventually(lambda: refused(SPOKES, "wrong-key")))["message"]
    assert "spec.tunnel.greKey: 7 differs from hub hub-1's 42" in message
    assert "did you mean 'tunnel'" in (await eventually(lambda: refused(SPOKES, "typo")))["message"]
    assert "no DMVPNHub named 'hub-9'" in (await eventually(lambda: refused(SPOKES, "no-hub")))["message"]
    ambiguous = await eventually(lambda: refused(HUBS, "two-nodes"))
    assert ambiguous["reason"] == "AmbiguousNodeSelector" and "matches 2 nodes (a, b)" in ambiguous["message"]
    for name in ("wrong-key", "typo", "no-hub"):
        assert not cluster.status(SPOKES, name).get("allocations")
        assert cluster.condition(SPOKES, name, "Ready")["reason"] == "InvalidSpec"
    warned = await eventually(lambda: cluster.events("wrong-key", "InvalidSpec"), what="a Warning event")
    assert warned[0]["type"] == "Warning"

    fixed = {"spec": {"tunnel": {"greKey": 42}}}
    await cluster.patch(SPOKES, "wrong-key", fixed)
    await eventually(lambda: allocated(cluster, "wrong-key", 1), what="allocation once fixed")
    assert cluster.condition(SPOKES, "wrong-key", "Accepted")["status"] == "True"


async def test_a_restarted_operator_keeps_the_allocations(cluster: Cluster, operator: OperatorFactory) -> None:
    await cluster.create(node("hub-node", internal="192.0.2.1"))
    for index in range(4):
        await cluster.create(node(f"edge-{index}", {"dmvpn.io/role": "spoke"}, internal=f"198.51.100.{index + 1}"))
    first = await operator()
    await cluster.create(hub("hub-1"))
    await cluster.create(spoke("branches"))
    await cluster.create(spoke("pinned", nodeName="edge-0"))
    before = await eventually(lambda: allocated(cluster, "branches", 4), what="allocations")
    pinned = await eventually(lambda: allocated(cluster, "pinned", 1), what="allocation")
    await first.stop()

    await cluster.delete(NODES, "edge-1")  # while nobody watches
    await cluster.create(node("edge-9", {"dmvpn.io/role": "spoke"}, internal="198.51.100.9"))
    await operator()
    after = await eventually(
        lambda: (a := allocated(cluster, "branches", 4)) and "edge-9" in a and a, what="allocations after restart"
    )
    assert {n: after[n] for n in ("edge-0", "edge-2", "edge-3")} == {
        n: before[n] for n in ("edge-0", "edge-2", "edge-3")
    }
    assert cluster.status(SPOKES, "pinned")["allocations"] == pinned
    everyone = list(after.values()) + list(pinned.values())
    assert len(set(everyone)) == len(everyone)


async def test_many_spokes_created_at_once_never_share_an_address(cluster: Cluster, operator: OperatorFactory) -> None:
    count = 40
    await cluster.create(node("hub-node", internal="192.0.2.1"))
    for index in range(count):
        await cluster.create(node(f"n{index}", {"site": f"s{index % 4}"}, internal=f"198.51.100.{index + 1}"))
    await operator()
    await cluster.create(hub("hub-1"))
    explicit = spoke("explicit", nodeName="n0")
    explicit["spec"]["tunnel"]["address"] = "10.255.0.2/24"
    bodies = [explicit] + [spoke(f"one-{i}", nodeName=f"n{i}") for i in range(1, count)]
    bodies += [spoke(f"site-{s}", nodeSelector={"site": f"s{s}"}) for s in range(4)]
    await asyncio.gather(*(cluster.create(body) for body in bodies))

    def all_allocated() -> list[str] | None:
        found: list[str] = []
        for body in bodies[1:]:
            name = body["metadata"]["name"]
            allocations = cluster.status(SPOKES, name).get("allocations") or {}
            want = 1 if name.startswith("one-") else count // 4
            if len(allocations) != want:
                return None
            found += allocations.values()
        return found

    addresses = await eventually(all_allocated, within=30, what="every allocation")
    assert len(addresses) == (count - 1) + count
    assert len(set(addresses)) == len(addresses), "an address was given twice"
    assert "10.255.0.1/24" not in addresses and "10.255.0.2/24" not in addresses


async def test_a_full_subnet_is_a_condition_not_a_crash(cluster: Cluster, operator: OperatorFactory) -> None:
    await cluster.create(node("hub-node", internal="192.0.2.1"))
    for index in range(7):
        await cluster.create(node(f"edge-{index}", {"dmvpn.io/role": "spoke"}, internal=f"198.51.100.{index + 1}"))
    await operator()
    await cluster.create(hub("hub-1", address="10.255.0.1/29"))  # 6 host addresses, one is the hub's
    await cluster.create(spoke("branches"))
    full = await eventually(
        lambda: (c := cluster.condition(SPOKES, "branches", "Ready")) and c["reason"] == "SubnetFull" and c,
        what="SubnetFull",
    )
    assert "10.255.0.0/29" in full["message"] and "2 nodes (edge-5, edge-6)" in full["message"]
    assert len(cluster.status(SPOKES, "branches")["allocations"]) == 5
    warned = await eventually(lambda: cluster.events("branches", "SubnetFull"), what="a Warning event")
    assert warned[0]["type"] == "Warning"
    await cluster.delete(NODES, "edge-0")
    await eventually(lambda: allocated(cluster, "branches", 6) is None and allocated(cluster, "branches", 5))
    await eventually(lambda: "edge-5" in (cluster.status(SPOKES, "branches").get("allocations") or {}))


async def test_the_operator_calls_only_what_its_declared_access_allows(
    cluster: Cluster, operator: OperatorFactory
) -> None:
    await cluster.create(node("hub-node", internal="192.0.2.1"))
    await cluster.create(node("edge-0", {"dmvpn.io/role": "spoke"}, internal="198.51.100.1"))
    await operator()
    await cluster.create(hub("hub-1"))
    await cluster.create(spoke("branches"))
    await eventually(lambda: allocated(cluster, "branches", 1))
    await cluster.report(SPOKES, "branches", "edge-0", report())
    await cluster.delete(SPOKES, "branches")
    await cluster.report(SPOKES, "branches", "edge-0", None)
    await eventually(lambda: cluster.get(SPOKES, "branches") is None)

    declared = triples(OPERATOR_ACCESS)
    used = operator_calls(cluster)
    assert used, "no request of the operator was seen"
    assert used <= declared, f"undeclared: {sorted(used - declared)}"
    # every declared right is exercised (least privilege: nothing granted "just in case")
    assert declared <= used, f"declared but unused: {sorted(declared - used)}"


async def test_metrics_are_served(cluster: Cluster, operator: OperatorFactory) -> None:
    await cluster.create(node("hub-node", internal="192.0.2.1"))
    await cluster.create(node("edge-0", {"dmvpn.io/role": "spoke"}, internal="198.51.100.1"))
    port = free_port()
    await operator(metrics_port=port, metrics_address="127.0.0.1")
    await cluster.create(hub("hub-1"))
    await cluster.create(spoke("branches"))
    await eventually(lambda: allocated(cluster, "branches", 1))
    async with cluster.session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    assert 'dmvpn_operator_allocations{spoke="branches"} 1.0' in text
    assert 'dmvpn_operator_objects{condition="Accepted",kind="spoke",status="True"}' in text
    assert "dmvpn_operator_reconcile_errors_total" in text
