"""Phase 2 and Phase 3 hooks against a real kernel: the kernel asks us for an NBMA address and our
answer makes the ping work; a hub logs hairpinned pod traffic to NFLOG, at once and rate-limited."""

from __future__ import annotations

import asyncio
import time

import pytest
from dplab import first_echo_sent_at, hub_desired, site_config, spoke_desired

from dmvpn.dataplane import (
    Dataplane,
    HairpinConfig,
    HairpinEvent,
    Neighbour,
    NflogReader,
    Route,
    Solicitation,
    install_hairpin_rule,
)
from dmvpn.lab.topology import TUNNEL_NET, Lab, hub_and_spokes

pytestmark = pytest.mark.kernel


async def test_solicitation_from_kernel_answered_makes_ping_work(lab: Lab) -> None:
    hub, spoke = hub_and_spokes(lab, spokes=1, with_pods=False)
    async with Dataplane(site_config(hub), netns=hub.ns.name) as hub_dp:
        await hub_dp.ensure_tunnel()
        neighbours, routes = hub_desired(hub, [spoke])
        await hub_dp.reconcile_neighbours(neighbours)
        await hub_dp.reconcile_routes(routes)
    # The spoke knows no NBMA at all: its tunnel subnet is link-scope, so the kernel must ask.
    async with Dataplane(site_config(spoke), netns=spoke.ns.name) as dp:
        await dp.ensure_tunnel()
        await dp.reconcile_routes({Route(TUNNEL_NET)})
        asks: list[tuple[float, Solicitation]] = []
        async with dp.solicitations() as listener:

            async def answer() -> None:
                async for ask in listener:
                    asks.append((time.time(), ask))  # wall clock, comparable with ping -D
                    if ask.tunnel_ip == hub.tunnel_ip:
                        await dp.set_neighbour(Neighbour(hub.tunnel_ip, hub.nbma))

            answering = asyncio.create_task(answer())
            out = await asyncio.to_thread(
                spoke.ns.run, "ping", "-n", "-D", "-c", "3", "-i", "0.3", "-W", "2", str(hub.tunnel_ip), check=False
            )
            answering.cancel()
        sent_at = first_echo_sent_at(out)
        seen = [(round(t - sent_at, 3), str(a.tunnel_ip)) for t, a in asks]
        print(f"\n[dataplane] solicitations (s after the first echo left): {seen}")
        assert "3 received" in out, f"the first packet waits in the neighbour queue and leaves on our answer: {out}"
        assert asks and asks[0][1].tunnel_ip == hub.tunnel_ip
        assert asks[0][0] - sent_at < 0.9, "the kernel asks on the first packet, not after a 1 s retransmit"
        assert await dp.neighbours() == (Neighbour(hub.tunnel_ip, hub.nbma),)


async def test_hub_hairpin_logged_to_nflog_at_once_and_rate_limited(lab: Lab) -> None:
    sites = hub_and_spokes(lab, spokes=2)
    hub, spokes = sites[0], sites[1:]
    for site in sites:
        async with Dataplane(site_config(site), netns=site.ns.name) as dp:
            await dp.ensure_tunnel()
            neighbours, routes = hub_desired(hub, spokes) if site is hub else spoke_desired(hub)
            await dp.reconcile_neighbours(neighbours)
            await dp.reconcile_routes(routes)
    config = HairpinConfig("gre1", group=1)
    assert await install_hairpin_rule(config, netns=hub.ns.name) is True
    assert await install_hairpin_rule(config, netns=hub.ns.name) is False
    spoke1, spoke2 = spokes
    assert spoke1.pod is not None
    events: list[tuple[float, HairpinEvent]] = []
    async with NflogReader(config.group, netns=hub.ns.name) as reader:

        async def collect() -> None:
            async for event in reader:
                events.append((time.time(), event))  # wall clock, comparable with ping -D

        collecting = asyncio.create_task(collect())
        out = await asyncio.to_thread(
            spoke1.pod.run, "ping", "-n", "-D", "-c", "8", "-i", "0.2", "-W", "2", str(spoke2.pod_ip), check=False
        )
        await asyncio.sleep(0.5)
        collecting.cancel()
    sent_at = first_echo_sent_at(out)
    seen = [(round(t - sent_at, 3), str(e.src), str(e.dst)) for t, e in events]
    print(f"\n[dataplane] hairpin events (s after the first echo left pod1): {seen}")
    assert "8 received" in out, f"logging must not drop anything: {out}"
    forward = [(t, e) for t, e in events if (e.src, e.dst) == (spoke1.pod_ip, spoke2.pod_ip)]
    backward = [(t, e) for t, e in events if (e.src, e.dst) == (spoke2.pod_ip, spoke1.pod_ip)]
    assert len(forward) == 1 and len(backward) == 1, "4/minute burst 1 per pair: one event each way"
    assert len(events) == 2
    first_t, first = forward[0]
    assert first_t - sent_at < 0.9, "queue-threshold 1: each packet at once, not the ~1 s NFLOG batching"
    assert first.header[0] == 0x45 and first.header[12:16] == spoke1.pod_ip.packed
    assert first.header[16:20] == spoke2.pod_ip.packed and 20 <= len(first.header) <= config.snaplen
    assert first.indev == first.outdev
