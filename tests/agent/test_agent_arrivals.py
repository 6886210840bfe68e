"""A responder routes over a new spoke-to-spoke SA when the data plane logs the initiator's first packet over
it (the arrivals NFLOG source), instead of reading charon's counters (simulated cloud: fake kernel, fake
charon, real engine)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from ipaddress import IPv4Address

from dmvpn.agent import agent as agent_module
from dmvpn.agent import views
from dmvpn.agent.agent import Agent
from dmvpn.dataplane import HairpinEvent, Route

from .conftest import Cloud, hub_config, spoke_config, wait_for
from .test_agent_sim import S1_LAN, S1_NBMA, S1_TUNNEL, S2_NBMA, hairpin


class Arrivals:
    """What the data plane's arrivals reader yields: one logged packet per new inbound SA."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[HairpinEvent] = asyncio.Queue()

    def logged(self, src: IPv4Address, dst: IPv4Address) -> None:
        self.queue.put_nowait(HairpinEvent(src, dst, b""))

    @contextlib.asynccontextmanager
    async def reader(self) -> AsyncIterator[AsyncIterator[HairpinEvent]]:
        yield self._events()

    async def _events(self) -> AsyncIterator[HairpinEvent]:
        while True:
            yield await self.queue.get()


async def cloud_with_arrivals(cloud: Cloud) -> tuple[Agent, Arrivals]:
    """Hub + spoke-1 registered, spoke-2 (the higher address, the responder) with an arrivals source."""
    arrivals = Arrivals()
    await cloud.add(hub_config())
    await cloud.add(spoke_config(1, shortcut_idle_timeout=60))
    spoke2 = await cloud.add(spoke_config(2, shortcut_idle_timeout=60), arrivals=arrivals.reader)
    await wait_for(lambda: all(cloud.agents[s].engine.nhs[0].up for s in ("spoke-1", "spoke-2")))
    await wait_for(lambda: "arrivals" in spoke2._listening)
    return spoke2, arrivals


def ready_events(agent: Agent) -> list[str]:
    return [e["text"] for e in views.show_events(agent) if e["kind"] == "sa-ready"]


async def test_the_logged_first_packet_ends_the_wait_without_asking_charon(cloud: Cloud) -> None:
    spoke2, arrivals = await cloud_with_arrivals(cloud)
    cloud.net.packets_in[(S2_NBMA, S1_NBMA)] = 0
    hairpin(cloud, "10.1.1.10", "10.1.2.10")
    hairpin(cloud, "10.1.2.10", "10.1.1.10")
    await wait_for(lambda: S1_NBMA in spoke2.sa_up_peers)
    await asyncio.sleep(0.2)
    assert Route(S1_LAN, via=S1_TUNNEL) not in cloud.dataplanes["spoke-2"].routes, "nothing came in yet"
    arrivals.logged(S1_NBMA, S2_NBMA)
    await wait_for(lambda: Route(S1_LAN, via=S1_TUNNEL) in cloud.dataplanes["spoke-2"].routes, limit=0.5)
    assert ready_events(spoke2) == [f"{S1_NBMA}: routing over the SA it initiated (a packet came in over it)"]
    assert cloud.ipsecs["spoke-2"].counter_reads == 0, "no poll of charon while the listener is up"
    assert spoke2.stats.extra["sa_first_packets"] == 1


async def test_a_first_packet_logged_before_the_sa_up_event_counts(cloud: Cloud) -> None:
    """NFLOG can beat charon's SA-up event to the agent: the packet still ends the wait at once."""
    spoke2, arrivals = await cloud_with_arrivals(cloud)
    cloud.net.packets_in[(S2_NBMA, S1_NBMA)] = 0
    arrivals.logged(S1_NBMA, S2_NBMA)
    await wait_for(lambda: S1_NBMA in spoke2._early_arrivals)
    hairpin(cloud, "10.1.1.10", "10.1.2.10")
    hairpin(cloud, "10.1.2.10", "10.1.1.10")
    await wait_for(lambda: S1_NBMA in spoke2.sa_up_peers)
    await wait_for(lambda: Route(S1_LAN, via=S1_TUNNEL) in cloud.dataplanes["spoke-2"].routes, limit=0.5)
    assert ready_events(spoke2) == [f"{S1_NBMA}: routing over the SA it initiated (a packet came in before its SA-up)"]
    assert not spoke2._early_arrivals


async def test_a_packet_from_a_peer_we_do_not_wait_for_changes_nothing(cloud: Cloud) -> None:
    spoke2, arrivals = await cloud_with_arrivals(cloud)
    hub = next(iter(spoke2.sa_up_peers))
    arrivals.logged(hub, S2_NBMA)  # the hub's SA is up and never waited for
    await wait_for(lambda: spoke2.stats.extra.get("sa_first_packets") == 1)
    assert not spoke2._early_arrivals and not spoke2._peer_not_ready and ready_events(spoke2) == []


async def test_an_old_wait_does_not_end_the_wait_of_a_new_sa(cloud: Cloud) -> None:
    """The SA goes down and comes up again while its first wait runs: that wait's deadline must not free
    the routes of the new SA, which has its own."""
    spoke2, _ = await cloud_with_arrivals(cloud)
    wait_s = agent_module.PEER_READY_WAIT_S
    hairpin(cloud, "10.1.1.10", "10.1.2.10")
    hairpin(cloud, "10.1.2.10", "10.1.1.10")
    await wait_for(lambda: S1_NBMA in spoke2.sa_up_peers)
    first = spoke2._peer_not_ready[S1_NBMA]
    await asyncio.sleep(wait_s / 2)
    cloud.ipsecs["spoke-2"].peer_down(S1_NBMA)
    cloud.ipsecs["spoke-2"].peer_up(S1_NBMA)
    await wait_for(lambda: spoke2._peer_not_ready.get(S1_NBMA, first) != first)
    await asyncio.sleep(wait_s / 2 + 0.15)  # the first wait's deadline has passed
    assert S1_NBMA in spoke2._peer_not_ready, "the new SA's wait still holds"
    await wait_for(lambda: S1_NBMA not in spoke2._peer_not_ready, limit=wait_s)
    assert ready_events(spoke2) == [f"{S1_NBMA}: routing over the SA it initiated (nothing came in within 1 s)"]


async def test_background_tasks_are_not_kept_once_done(cloud: Cloud) -> None:
    await cloud.add(spoke_config(1, ipsec=True))
    agent = cloud.agents["spoke-1"]
    before = set(agent._tasks)
    for _ in range(50):
        agent._spawn(asyncio.sleep(0))
    assert len(agent._tasks) >= 50
    await asyncio.sleep(0.05)
    assert agent._tasks <= before
