"""The NFLOG reader (with the real hairpin rule) and the Phase 2 solicitation listener on this host's
kernel: a router forwarding packets back out of the interface they came in on (a veth here; the mGRE
cases are in test_kernel_phase2_phase3)."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address

import pytest

from dmvpn.dataplane import (
    DataplaneError,
    HairpinConfig,
    HairpinEvent,
    NflogReader,
    Solicitation,
    SolicitationListener,
    install_hairpin_rule,
)


@dataclass
class Hairpin:
    router: str
    host: str


def sh(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True)


@pytest.fixture
def hairpin() -> Iterator[Hairpin]:
    """host (10.9.0.2) -> router (10.9.0.1) -> back to host for 10.8.0.0/24: in and out of r0."""
    tag = uuid.uuid4().hex[:6]
    topo = Hairpin(f"dpr-{tag}", f"dph-{tag}")
    try:
        sh("ip", "netns", "add", topo.router)
        sh("ip", "netns", "add", topo.host)
        sh("ip", "link", "add", "r0", "netns", topo.router, "type", "veth", "peer", "name", "h0", "netns", topo.host)
        sh("ip", "-n", topo.router, "addr", "add", "10.9.0.1/24", "dev", "r0")
        sh("ip", "-n", topo.router, "link", "set", "r0", "up")
        sh("ip", "-n", topo.host, "addr", "add", "10.9.0.2/24", "dev", "h0")
        sh("ip", "-n", topo.host, "link", "set", "h0", "up")
        sh("ip", "-n", topo.host, "route", "add", "10.8.0.0/24", "via", "10.9.0.1")
        sh("ip", "-n", topo.router, "route", "add", "10.8.0.0/24", "via", "10.9.0.2")
        sh("ip", "netns", "exec", topo.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        yield topo
    finally:
        for name in (topo.router, topo.host):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


async def collect_while_pinging(reader: NflogReader, ns: str, dst: str, count: int) -> list[tuple[float, HairpinEvent]]:
    events: list[tuple[float, HairpinEvent]] = []
    started = time.monotonic()

    async def collect() -> None:
        async for event in reader:
            events.append((time.monotonic() - started, event))

    task = asyncio.create_task(collect())
    argv = ["ip", "netns", "exec", ns, "ping", "-n", "-q", "-c", str(count), "-i", "0.1", "-W", "0.3", dst]
    ping = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL)
    await asyncio.wait_for(ping.wait(), 30)
    await asyncio.sleep(0.3)
    task.cancel()
    return events


async def test_hairpinned_packets_reach_the_reader_at_once_and_rate_limited(hairpin: Hairpin) -> None:
    config = HairpinConfig("r0", group=7)
    await install_hairpin_rule(config, netns=hairpin.router)
    async with NflogReader(config.group, netns=hairpin.router) as reader:
        events = await collect_while_pinging(reader, hairpin.host, "10.8.0.5", count=6)
        assert len(events) == 1, f"4/minute burst 1: one event for six packets, got {events}"
        elapsed, event = events[0]
        assert elapsed < 1.0
        assert (event.src, event.dst) == (IPv4Address("10.9.0.2"), IPv4Address("10.8.0.5"))
        assert event.header[:1] == b"\x45" and event.header[9] == 1  # IPv4, ICMP
        assert event.indev is not None and event.indev == event.outdev
        # Another destination in another /24 is another pair: it gets its own event.
        sh("ip", "-n", hairpin.router, "route", "add", "10.7.0.0/24", "via", "10.9.0.2")
        sh("ip", "-n", hairpin.host, "route", "add", "10.7.0.0/24", "via", "10.9.0.1")
        more = await collect_while_pinging(reader, hairpin.host, "10.7.0.5", count=3)
        assert [e.dst for _, e in more] == [IPv4Address("10.7.0.5")]
    assert reader.overruns == 0


async def test_a_group_bound_twice_is_a_clear_error(hairpin: Hairpin) -> None:
    async with NflogReader(8, netns=hairpin.router):
        with pytest.raises(DataplaneError, match="already bound"):
            async with NflogReader(8, netns=hairpin.router):
                pass


async def test_solicitation_listener_hears_the_kernel_ask(hairpin: Hairpin) -> None:
    """app_solicit works on any ARP device: an unknown neighbour on r0 makes the kernel ask us."""
    for key, value in (("app_solicit", 1), ("ucast_solicit", 0), ("mcast_solicit", 0)):
        sh("ip", "netns", "exec", hairpin.router, "sysctl", "-qw", f"net.ipv4.neigh.r0.{key}={value}")
    asks: list[Solicitation] = []
    async with SolicitationListener("r0", netns=hairpin.router) as listener:

        async def collect() -> None:
            async for ask in listener:
                asks.append(ask)

        task = asyncio.create_task(collect())
        argv = ["ip", "netns", "exec", hairpin.router, "ping", "-c", "1", "-W", "1", "10.9.0.99"]
        ping = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL)
        await asyncio.wait_for(ping.wait(), 30)
        await asyncio.sleep(0.2)
        task.cancel()
    assert asks and {ask.tunnel_ip for ask in asks} == {IPv4Address("10.9.0.99")}
    assert asks[0].ifindex == listener.ifindex
