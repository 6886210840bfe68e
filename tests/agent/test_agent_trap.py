"""The lower end of a new shortcut routes into a trap policy at once (InitiatePolicy.TRAP): the kernel
holds the packets until the SA that charon initiated with the trap is up, so nothing crosses the hub while
IKE runs. Simulated cloud: fake kernel, fake charon, real engine."""

from __future__ import annotations

import asyncio

import pytest

from dmvpn.agent import agent as agent_module
from dmvpn.agent import views
from dmvpn.dataplane import Route
from dmvpn.ipsec import InitiatePolicy

from .conftest import Cloud, hub_config, spoke_config, wait_for
from .test_agent_sim import S2_LAN, S2_NBMA, S2_TUNNEL, hairpin


async def noop_guard() -> None:
    pass


async def trap_cloud(cloud: Cloud, *, guard: bool = True) -> None:
    """Hub + spoke-1 (the lower address, with the IPsec guard and so traps) + spoke-2, registered."""
    await cloud.add(hub_config())
    await cloud.add(spoke_config(1, shortcut_idle_timeout=60), **({"install_guard": noop_guard} if guard else {}))
    await cloud.add(spoke_config(2, shortcut_idle_timeout=60))
    await wait_for(lambda: all(cloud.agents[s].engine.nhs[0].up for s in ("spoke-1", "spoke-2")))


def to_spoke2_routed(cloud: Cloud) -> bool:
    return Route(S2_LAN, via=S2_TUNNEL) in cloud.dataplanes["spoke-1"].routes


def events_of(cloud: Cloud, node: str, kind: str) -> list[str]:
    return [e["text"] for e in views.show_events(cloud.agents[node]) if e["kind"] == kind]


async def test_the_lower_end_routes_into_the_trap_before_its_sa(cloud: Cloud) -> None:
    await trap_cloud(cloud)
    cloud.ipsecs["spoke-1"].acquire_after = 0.3
    hairpin(cloud, "10.1.1.10", "10.1.2.10")
    await wait_for(lambda: to_spoke2_routed(cloud), limit=0.25)
    spoke1 = cloud.agents["spoke-1"]
    assert S2_NBMA not in spoke1.sa_up_peers, "routed before the SA: the kernel holds the packets"
    assert (S2_NBMA, InitiatePolicy.TRAP) in cloud.ipsecs["spoke-1"].ensured
    assert [nbma for nbma, _ in cloud.ipsecs["spoke-1"].ensured].count(S2_NBMA) == 1
    await wait_for(lambda: S2_NBMA in spoke1.sa_up_peers, limit=2.0)
    assert to_spoke2_routed(cloud) and not spoke1._trapped
    assert events_of(cloud, "spoke-1", "trap-withdrawn") == []


async def test_an_unused_trap_is_withdrawn_and_the_sa_initiated(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """No SA (the trap's IKE exchange failed or stalled): after TRAP_WAIT_S the routes go (traffic back via the
    hub) and the SA is initiated (AUTO: the lower end initiates unless charon has one under way); its
    SA-up brings the routes back."""
    monkeypatch.setattr(agent_module, "TRAP_WAIT_S", 0.3)
    await trap_cloud(cloud)
    hairpin(cloud, "10.1.1.10", "10.1.2.10")
    await wait_for(lambda: to_spoke2_routed(cloud), limit=0.25)
    await wait_for(lambda: not to_spoke2_routed(cloud), limit=1.0)
    assert S2_NBMA not in cloud.agents["spoke-1"].sa_up_peers
    withdrawn = events_of(cloud, "spoke-1", "trap-withdrawn")
    assert withdrawn == [f"{S2_NBMA}: no SA within 0.3 s; via the hub again, initiating"]
    await wait_for(lambda: (S2_NBMA, InitiatePolicy.AUTO) in cloud.ipsecs["spoke-1"].ensured, limit=1.0)
    await wait_for(lambda: to_spoke2_routed(cloud), limit=1.0)
    assert cloud.agents["spoke-1"].stats.extra["traps_withdrawn"] == 1


async def test_no_trap_without_the_guard(cloud: Cloud) -> None:
    """The guard brings xfrm_larval_drop=0 and the outbound rule that lets queued packets pass: without
    it a trap would lose what it should queue, so the lower end initiates and routes after its SA."""
    await trap_cloud(cloud, guard=False)
    hairpin(cloud, "10.1.1.10", "10.1.2.10")
    await wait_for(lambda: to_spoke2_routed(cloud), limit=2.0)
    assert S2_NBMA in cloud.agents["spoke-1"].sa_up_peers
    policies = [policy for nbma, policy in cloud.ipsecs["spoke-1"].ensured if nbma == S2_NBMA]
    assert policies == [InitiatePolicy.ONCE]


async def test_a_peer_forgotten_while_trapped_loses_its_trap(cloud: Cloud) -> None:
    await trap_cloud(cloud)
    hairpin(cloud, "10.1.1.10", "10.1.2.10")
    await wait_for(lambda: to_spoke2_routed(cloud), limit=0.25)
    spoke1 = cloud.agents["spoke-1"]
    for entry in [e for e in spoke1.engine.cache if e.nbma == S2_NBMA]:
        spoke1.engine.cache.remove(entry.prefix)
    spoke1._forget_spoke_peer(S2_NBMA)
    await wait_for(lambda: S2_NBMA in cloud.ipsecs["spoke-1"].removed, limit=1.0)
    assert not spoke1._trapped
    await asyncio.sleep(0.05)
    spoke1._dirty.set()
    await wait_for(lambda: not to_spoke2_routed(cloud), limit=1.0)
