"""Fakes for the agent's ports: an in-memory NBMA network, data plane and IPsec, so whole DMVPN clouds of
real agents (real NHRP engines, real reconcile logic) run in one event loop without a kernel."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

import pytest

from dmvpn.agent.agent import Agent
from dmvpn.agent.config import HubPeer, IpsecSettings, NodeConfig, PeerSpoke
from dmvpn.dataplane import (
    Changes,
    Neighbour,
    ReconcileReport,
    Route,
    Snapshot,
    TunnelAction,
    TunnelReport,
)
from dmvpn.ipsec.types import ApplyReport, ChildSaInfo, IkeSaInfo, InitiatePolicy, PeerAction, SaEvent
from dmvpn.nhrp.codec import Address

HUB_NBMA = IPv4Address("192.0.2.1")
HUB_TUNNEL = IPv4Address("10.255.0.254")
SA_DELAY = 0.05


class FakeNet:
    """Delivers NHRP packets between agents by NBMA address, after ``delay`` seconds."""

    def __init__(self, delay: float = 0.002) -> None:
        self.delay = delay
        self.endpoints: dict[IPv4Address, Callable[[bytes, Address], None]] = {}
        self.sent: list[tuple[IPv4Address, IPv4Address, bytes]] = []
        self.sas: dict[frozenset[IPv4Address], float] = {}  # established pair -> when
        self.initiators: dict[frozenset[IPv4Address], IPv4Address] = {}  # established pair -> who initiated
        self.ipsecs: dict[IPv4Address, FakeIpsec] = {}
        # Packets each end received over an SA: (receiver, sender) -> count; unset means traffic flows (1).
        self.packets_in: dict[tuple[IPv4Address, IPv4Address], int] = {}

    def transport_for(self, me: IPv4Address) -> Callable[..., FakeTransport]:
        def factory(ifindex: int, on_packet: Callable[[bytes, Address], None]) -> FakeTransport:
            self.endpoints[me] = on_packet
            return FakeTransport(self, me)

        return factory

    def deliver(self, src: IPv4Address, dst: IPv4Address, data: bytes) -> None:
        self.sent.append((src, dst, data))
        handler = self.endpoints.get(dst)
        if handler is not None:
            asyncio.get_running_loop().call_later(self.delay, handler, data, src)

    def establish(self, a: IPv4Address, b: IPv4Address) -> None:
        pair = frozenset({a, b})
        if pair in self.sas:
            return
        self.sas[pair] = asyncio.get_running_loop().time()
        self.initiators[pair] = a
        for me, peer in ((a, b), (b, a)):
            if me in self.ipsecs:
                self.ipsecs[me].peer_up(peer)


@dataclass
class FakeTransport:
    net: FakeNet
    me: IPv4Address
    closed: bool = False

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        pass

    def send(self, nbma: Address, data: bytes) -> bool:
        assert isinstance(nbma, IPv4Address)
        self.net.deliver(self.me, nbma, data)
        return True

    def close(self) -> None:
        self.closed = True
        self.net.endpoints.pop(self.me, None)


@dataclass
class FakeDataplane:
    neighbours: set[Neighbour] = field(default_factory=set)
    routes: set[Route] = field(default_factory=set)
    history: list[tuple[float, str, Any]] = field(default_factory=list)
    fail_next: int = 0
    incremental: int = 0  # passes that came through apply_changes

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ensure_tunnel(self) -> TunnelReport:
        return TunnelReport(TunnelAction.CREATED, ifindex=7)

    async def remove_tunnel(self) -> bool:
        removed = bool(self.neighbours or self.routes)
        self.neighbours, self.routes = set(), set()
        return removed

    async def reconcile_neighbours(self, desired: Iterable[Neighbour]) -> ReconcileReport[Neighbour]:
        from dmvpn.dataplane import DataplaneError

        if self.fail_next:
            self.fail_next -= 1
            raise DataplaneError("injected failure")
        want = set(desired)
        added, removed = want - self.neighbours, self.neighbours - want
        self.neighbours = want
        now = asyncio.get_running_loop().time()
        self.history += [(now, "+neigh", n) for n in added] + [(now, "-neigh", n) for n in removed]
        return ReconcileReport(added=tuple(added), removed=tuple(removed))

    async def reconcile_routes(self, desired: Iterable[Route]) -> ReconcileReport[Route]:
        want = set(desired)
        added, removed = want - self.routes, self.routes - want
        self.routes = want
        now = asyncio.get_running_loop().time()
        self.history += [(now, "+route", r) for r in added] + [(now, "-route", r) for r in removed]
        return ReconcileReport(added=tuple(added), removed=tuple(removed))

    async def apply_changes(self, changes: Changes) -> ReconcileReport[Route]:
        """The incremental path: the same history entries as a full pass would log."""
        self.incremental += 1
        neighbours = {n for n in self.neighbours if n.tunnel_ip not in {c.tunnel_ip for c in changes.set_neighbours}}
        await self.reconcile_neighbours((neighbours | set(changes.set_neighbours)) - set(changes.remove_neighbours))
        keys = {(r.prefix, r.metric) for r in changes.change_routes + changes.remove_routes}
        routes = {r for r in self.routes if (r.prefix, r.metric) not in keys}
        report = await self.reconcile_routes(routes | set(changes.add_routes) | set(changes.change_routes))
        return ReconcileReport(added=changes.add_routes, replaced=changes.change_routes, removed=report.removed)

    async def snapshot(self) -> Snapshot:
        return Snapshot(device=None, neighbours=tuple(sorted(self.neighbours)), routes=tuple(sorted(self.routes)))

    async def stats(self) -> None:
        return None


class FakeStream:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[SaEvent | None] = asyncio.Queue()

    def __aiter__(self) -> AsyncIterator[SaEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[SaEvent]:
        while (event := await self.queue.get()) is not None:
            yield event

    def close(self) -> None:
        self.queue.put_nowait(None)


class FakeIpsec:
    """IKE takes SA_DELAY seconds; an SA is up at both ends at once."""

    def __init__(self, net: FakeNet, me: IPv4Address, hub: bool) -> None:
        self.net = net
        self.me = me
        self.hub = hub
        self.up: set[IPv4Address] = set()
        self.streams: list[FakeStream] = []
        self.ensured: list[tuple[IPv4Address, InitiatePolicy]] = []
        self.removed: list[IPv4Address] = []
        self.bytes: dict[IPv4Address, int] = {}
        net.ipsecs[me] = self
        # charon outlives an agent restart: SAs it holds are up from the start
        self.up = {peer for pair in net.sas if me in pair for peer in pair if peer != me}
        self.verifications = 0
        self.counter_reads = 0  # packets_in calls (the responder's poll of charon)
        # TRAP: the SA initiated with the trap is up this long after it; None: it never comes (IKE failed)
        self.acquire_after: float | None = None

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def apply(self) -> ApplyReport:
        return ApplyReport()

    async def ensure_peer(self, nbma: IPv4Address, policy: InitiatePolicy = InitiatePolicy.AUTO) -> PeerAction:
        self.ensured.append((nbma, policy))
        if nbma in self.up:
            return PeerAction.ALREADY_UP
        if policy is InitiatePolicy.TRAP:
            if self.acquire_after is not None:
                asyncio.get_running_loop().call_later(self.acquire_after, self.net.establish, self.me, nbma)
            return PeerAction.TRAPPED
        asyncio.get_running_loop().call_later(SA_DELAY, self.net.establish, self.me, nbma)
        return PeerAction.INITIATED

    async def remove_peer(self, nbma: IPv4Address) -> None:
        self.removed.append(nbma)
        self.net.sas.pop(frozenset({self.me, nbma}), None)
        for me, peer in ((self.me, nbma), (nbma, self.me)):
            if me in self.net.ipsecs:
                self.net.ipsecs[me].peer_down(peer)

    def peer_up(self, peer: IPv4Address) -> None:
        self.up.add(peer)
        self._emit(SaEvent(peer, True, "child-updown", datetime.datetime.now(datetime.UTC)))

    def peer_down(self, peer: IPv4Address) -> None:
        self.up.discard(peer)
        self._emit(SaEvent(peer, False, "child-updown", datetime.datetime.now(datetime.UTC)))

    def _emit(self, event: SaEvent) -> None:
        for stream in self.streams:
            stream.queue.put_nowait(event)

    def sa_up(self, nbma: IPv4Address) -> bool:
        return nbma in self.up

    def answered_only(self, nbma: IPv4Address) -> bool:
        pair = frozenset({self.me, nbma})
        return nbma in self.up and self.net.initiators.get(pair, self.me) != self.me

    async def packets_in(self, nbma: IPv4Address) -> int:
        self.counter_reads += 1
        return self.net.packets_in.get((self.me, nbma), 1)

    def events(self) -> FakeStream:
        stream = FakeStream()
        self.streams.append(stream)
        return stream

    async def verify_if_due(self) -> ApplyReport | None:
        self.verifications += 1
        return None

    async def list_sas(self) -> list[IkeSaInfo]:
        return [
            IkeSaInfo(
                conn="dmvpn", unique_id=1, state="ESTABLISHED", local_host=self.me, remote_host=peer, local_id="",
                remote_id="", initiator=True, spi_initiator="", spi_responder="", established_s=1, rekey_time_s=None,
                encryption=None,
                children=(ChildSaInfo("gre", 1, "INSTALLED", "TRANSPORT", "ESP", "", "", self.bytes.get(peer, 0), 0,
                                      0, 0, None, None, None, None),),
            )
            for peer in sorted(self.up)
        ]  # fmt: skip


PSK = b"0123456789abcdef0123"


def hub_config(ipsec: bool = True, phase: int = 3, **overrides: Any) -> NodeConfig:
    config = NodeConfig(
        node="hub",
        object_name="hub",
        role="hub",
        interface="dmvpn0",
        nbma=HUB_NBMA,
        tunnel=IPv4Interface(f"{HUB_TUNNEL}/24"),
        phase=phase,
        ipsec=IpsecSettings(mode="required", psk=PSK) if ipsec else IpsecSettings(),
        site_prefixes=(IPv4Network("10.1.0.0/24"),),
        summary_prefixes=(IPv4Network("10.1.0.0/16"),),
    )
    return replace(config, **overrides)


def spoke_config(index: int, ipsec: bool = True, phase: int = 3, spokes: int = 2, **overrides: Any) -> NodeConfig:
    hub = HubPeer(
        nbma=HUB_NBMA,
        tunnel_ip=HUB_TUNNEL,
        name="hub",
        summary_prefixes=(IPv4Network("10.1.0.0/16"),) if phase != 2 else (),
        site_prefixes=(IPv4Network("10.1.0.0/24"),),
    )
    peers = tuple(
        PeerSpoke(f"spoke-{i}", IPv4Address(f"10.255.0.{i}"), (IPv4Network(f"10.1.{i}.0/24"),))
        for i in range(1, spokes + 1)
        if i != index
    )
    config = NodeConfig(
        node=f"spoke-{index}",
        object_name=f"spoke-{index}",
        role="spoke",
        interface="dmvpn0",
        nbma=IPv4Address(f"192.0.2.{10 + index}"),
        tunnel=IPv4Interface(f"10.255.0.{index}/24"),
        phase=phase,
        shortcut_idle_timeout=1,
        ipsec=IpsecSettings(mode="required", psk=PSK) if ipsec else IpsecSettings(),
        site_prefixes=(IPv4Network(f"10.1.{index}.0/24"),),
        hubs=(hub,),
        peer_spokes=peers,
    )
    return replace(config, **overrides)


@dataclass
class Cloud:
    net: FakeNet
    agents: dict[str, Agent] = field(default_factory=dict)
    dataplanes: dict[str, FakeDataplane] = field(default_factory=dict)
    ipsecs: dict[str, FakeIpsec] = field(default_factory=dict)

    async def add(self, config: NodeConfig, dataplane: FakeDataplane | None = None, **options: Any) -> Agent:
        dataplane = dataplane or FakeDataplane()
        ipsec = FakeIpsec(self.net, config.nbma, config.is_hub) if config.ipsec.required else None
        agent = Agent(config, dataplane, ipsec, self.net.transport_for(config.nbma), **options)
        self.agents[config.node] = agent
        self.dataplanes[config.node] = dataplane
        if ipsec is not None:
            self.ipsecs[config.node] = ipsec
        await agent.start()
        return agent

    async def close(self) -> None:
        for agent in self.agents.values():
            await agent.close()


@pytest.fixture
async def cloud() -> AsyncIterator[Cloud]:
    built = Cloud(FakeNet())
    try:
        yield built
    finally:
        await built.close()


async def wait_for(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def ipv4_header(src: str, dst: str) -> bytes:
    """A minimal IPv4 header + 8 bytes of ICMP, as a hairpinned packet's NFLOG payload starts."""
    header = bytes([0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 1, 0, 0]) + IPv4Address(src).packed + IPv4Address(dst).packed
    return header + bytes(8)


@contextlib.contextmanager
def no_exceptions() -> Iterator[None]:
    yield
