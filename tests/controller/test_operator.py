"""The real operator (kopf) against the API emulator over HTTP: what users and agents see."""

from __future__ import annotations

from ipaddress import IPv4Interface

from kubeharness import HUBS, SPOKES, Cluster, OperatorFactory, eventually, hub, node, report, spoke


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
    assert cluster.events("branches", "Ready") and cluster.events("hub-1", "Ready")
    # the agents' entries are theirs: the operator never rewrote them
    assert cluster.status(SPOKES, "branches")["nodes"]["edge-1"]["shortcuts"] == 1
