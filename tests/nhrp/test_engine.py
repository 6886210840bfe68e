"""The sans-IO engine, driven through a simulated NBMA network with a fake clock."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_network

import pytest

from dmvpn.nhrp.cache import ChangeKind, EntryType
from dmvpn.nhrp.codec import (
    CIE,
    Authentication,
    CIECode,
    ErrorCode,
    ErrorIndication,
    ForwardTransitNHS,
    IndicationAnswer,
    Message,
    NATAddress,
    Packet,
    PacketType,
    PurgeFlag,
    RegistrationFlag,
    ResolutionFlag,
    ResponderAddress,
    ReverseTransitNHS,
    TrafficIndication,
    decode,
    encode,
    find_extension,
)
from dmvpn.nhrp.counters import DropReason
from dmvpn.nhrp.engine import (
    Action,
    CacheChanged,
    Engine,
    EngineConfig,
    NATAddressChanged,
    NHSConfig,
    NHSStateChanged,
    ResolutionDone,
    ResolutionFailed,
    Send,
)
from dmvpn.nhrp.engine.context import Context

A = IPv4Address
HUB_NBMA, HUB2_NBMA = A("192.0.2.1"), A("192.0.2.2")
HUB, HUB2 = A("172.16.0.1"), A("172.16.0.2")
SPOKE_A_NBMA, SPOKE_B_NBMA, SPOKE_C_NBMA = A("198.51.100.10"), A("198.51.100.20"), A("198.51.100.30")
SPOKE_A, SPOKE_B, SPOKE_C = A("172.16.0.10"), A("172.16.0.20"), A("172.16.0.30")
SITE_A, SITE_B = ip_network("10.10.0.0/16"), ip_network("10.20.0.0/16")
NAT_PUBLIC = A("203.0.113.7")


def ip_packet(src: str, dst: str) -> bytes:
    """An IPv4 ICMP echo header (20 + 8 bytes), as the data plane hands a hairpinned packet over."""
    return bytes.fromhex("450000240001400040010000") + A(src).packed + A(dst).packed + bytes.fromhex("0800f7fe00010000")


@dataclass
class Wire:
    src: IPv4Address  # as the receiver sees it (after NAT)
    dst: IPv4Address
    packet: Packet


@dataclass
class SimNet:
    """Engines keyed by the NBMA address others reach them at; a fake clock; optional NAT."""

    now: float = 0.0
    nodes: dict[IPv4Address, Engine] = field(default_factory=dict)
    public: dict[IPv4Address, IPv4Address] = field(default_factory=dict)  # configured -> as seen
    wire: list[Wire] = field(default_factory=list)
    events: list[tuple[IPv4Address, Action]] = field(default_factory=list)
    cut: set[IPv4Address] = field(default_factory=set)  # nodes whose traffic is lost both ways
    queue: list[tuple[IPv4Address, Send]] = field(default_factory=list)

    def add(self, config: EngineConfig, *, seen_as: IPv4Address | None = None) -> Engine:
        engine = Engine(config)
        address = seen_as or config.nbma_address
        assert isinstance(address, IPv4Address)
        self.nodes[address] = engine
        self.public[address] = address
        return engine

    def address_of(self, engine: Engine) -> IPv4Address:
        return next(address for address, node in self.nodes.items() if node is engine)

    def take(self, engine: Engine, actions: list[Action]) -> None:
        sender = self.address_of(engine)
        for action in actions:
            if isinstance(action, Send):
                self.queue.append((sender, action))
            else:
                self.events.append((sender, action))

    def run(self, limit: int = 500) -> None:
        for _ in range(limit):
            if not self.queue:
                return
            sender, send = self.queue.pop(0)
            assert isinstance(send.nbma, IPv4Address)
            self.wire.append(Wire(sender, send.nbma, decode(send.data)))
            receiver = self.nodes.get(send.nbma)
            if receiver is None or sender in self.cut or send.nbma in self.cut:
                continue
            self.take(receiver, receiver.receive(send.data, sender, self.now))
        raise AssertionError("the simulated network did not go quiet")

    def start(self) -> None:
        for engine in self.nodes.values():
            self.take(engine, engine.start(self.now))
        self.run()

    def advance(self, seconds: float) -> None:
        """Move the clock forward, firing every engine's timers on the way."""
        target = self.now + seconds
        for _ in range(10000):
            deadlines = [d for e in self.nodes.values() if (d := e.next_deadline()) is not None]
            due = min(deadlines, default=None)
            if due is None or due > target:
                break
            self.now = max(self.now, due)
            for engine in list(self.nodes.values()):
                deadline = engine.next_deadline()
                if deadline is not None and deadline <= self.now:
                    self.take(engine, engine.tick(self.now))
            self.run()
        self.now = target

    def call(self, engine: Engine, method: Callable[..., list[Action]], *args: object) -> None:
        self.take(engine, method(*args, self.now))
        self.run()

    def sent(self, kind: PacketType, *, src: IPv4Address | None = None, dst: IPv4Address | None = None) -> list[Wire]:
        return [
            w
            for w in self.wire
            if w.packet.packet_type == kind and (src is None or w.src == src) and (dst is None or w.dst == dst)
        ]

    def of(self, node: IPv4Address, kind: type) -> list[object]:
        return [action for address, action in self.events if address == node and isinstance(action, kind)]


def hub_config(**overrides: object) -> EngineConfig:
    base = EngineConfig(protocol_address=HUB, nbma_address=HUB_NBMA, server=True)
    return replace(base, **overrides)  # type: ignore[arg-type]


def spoke_config(protocol: IPv4Address, nbma: IPv4Address, **overrides: object) -> EngineConfig:
    base = EngineConfig(protocol_address=protocol, nbma_address=nbma, nhs=(NHSConfig(nbma=HUB_NBMA, protocol=HUB),))
    return replace(base, **overrides)  # type: ignore[arg-type]


@pytest.fixture
def net() -> SimNet:
    """A simulated NBMA network (named so as not to shadow the kernel lab's ``lab`` fixture)."""
    return SimNet()


def hub_and_two_spokes(net: SimNet, **spoke_overrides: object) -> tuple[Engine, Engine, Engine]:
    hub = net.add(hub_config())
    a = net.add(spoke_config(SPOKE_A, SPOKE_A_NBMA, site_prefixes=(SITE_A,), **spoke_overrides))
    b = net.add(spoke_config(SPOKE_B, SPOKE_B_NBMA, site_prefixes=(SITE_B,), **spoke_overrides))
    net.start()
    return hub, a, b


# --- registration ---------------------------------------------------------------------------------


def test_spoke_registers_itself_and_its_site_prefix(net: SimNet) -> None:
    hub, a, _ = hub_and_two_spokes(net)
    request = net.sent(PacketType.REGISTRATION_REQUEST, src=SPOKE_A_NBMA)[0].packet
    assert isinstance(request, Message)
    assert request.flags & RegistrationFlag.UNIQUE
    assert [(c.prefix_length, c.client_protocol) for c in request.cies] == [(32, None), (16, A("10.10.0.0"))]
    assert request.cies[0].holding_time == 7200
    registered = hub.cache.get(SITE_A)
    assert registered is not None and registered.type == EntryType.DYNAMIC
    assert (registered.nbma, registered.next_hop) == (SPOKE_A_NBMA, SPOKE_A)
    assert hub.cache.get(ip_network(SPOKE_A)).nbma == SPOKE_A_NBMA  # type: ignore[union-attr]
    assert [e.up for e in net.of(SPOKE_A_NBMA, NHSStateChanged)] == [True]  # type: ignore[attr-defined]
    assert a.nhs[0].up
    hub_events = [a for a in net.of(HUB_NBMA, CacheChanged) if a.entry.type == EntryType.DYNAMIC]  # type: ignore[attr-defined]
    assert {e.entry.prefix for e in hub_events} >= {SITE_A, ip_network(SPOKE_A)}  # type: ignore[attr-defined]
    assert a.cache.get(ip_network(HUB)).type == EntryType.NHS  # type: ignore[union-attr]
    assert hub.counters.events["registration_accepted"] == 4


def test_refresh_at_a_third_of_the_holding_time(net: SimNet) -> None:
    hub_and_two_spokes(net, holding_time=600)
    assert len(net.sent(PacketType.REGISTRATION_REQUEST, src=SPOKE_A_NBMA)) == 1
    net.advance(199)
    assert len(net.sent(PacketType.REGISTRATION_REQUEST, src=SPOKE_A_NBMA)) == 1
    net.advance(1)
    assert len(net.sent(PacketType.REGISTRATION_REQUEST, src=SPOKE_A_NBMA)) == 2
    net.advance(200)
    assert len(net.sent(PacketType.REGISTRATION_REQUEST, src=SPOKE_A_NBMA)) == 3


def test_registration_retries_back_off_from_1_to_64_seconds(net: SimNet) -> None:
    net.add(hub_config())
    spoke = net.add(spoke_config(SPOKE_A, SPOKE_A_NBMA))
    net.cut.add(HUB_NBMA)
    net.start()
    times = [0.0]
    for _ in range(11):
        deadline = spoke.next_deadline()
        assert deadline is not None
        net.advance(deadline - net.now)
        times.append(net.now)
    gaps = [round(later - earlier, 3) for earlier, later in itertools.pairwise(times)]
    assert gaps == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 64.0, 64.0, 64.0, 64.0]
    assert len(net.sent(PacketType.REGISTRATION_REQUEST, src=SPOKE_A_NBMA)) == 12
    assert not spoke.nhs[0].up


def test_nhs_down_after_unanswered_refreshes_then_up_again(net: SimNet) -> None:
    hub_and_two_spokes(net, holding_time=300)
    net.cut.add(HUB_NBMA)
    net.advance(100)  # the refresh goes unanswered; retries at +1, +3, +7 s, down at the 4th (+15 s)
    net.advance(14.5)
    assert len(net.of(SPOKE_A_NBMA, NHSStateChanged)) == 1
    net.advance(1)
    states = [(e.up, e.reason) for e in net.of(SPOKE_A_NBMA, NHSStateChanged)]  # type: ignore[attr-defined]
    assert states == [(True, "registered"), (False, "no registration reply")]
    net.cut.clear()
    net.advance(20)
    assert net.of(SPOKE_A_NBMA, NHSStateChanged)[-1].up  # type: ignore[attr-defined]


def test_registration_expires_on_the_hub(net: SimNet) -> None:
    hub, _, _ = hub_and_two_spokes(net, holding_time=300)
    net.cut.add(SPOKE_A_NBMA)
    net.advance(299)
    assert hub.cache.get(SITE_A) is not None
    net.advance(2)
    assert hub.cache.get(SITE_A) is None
    removed = [
        e.entry.prefix  # type: ignore[attr-defined]
        for e in net.of(HUB_NBMA, CacheChanged)
        if e.kind == ChangeKind.REMOVED  # type: ignore[attr-defined]
    ]
    assert SITE_A in removed and ip_network(SPOKE_A) in removed


def test_dual_nhs_each_tracked_separately(net: SimNet) -> None:
    net.add(hub_config())
    hub2 = net.add(hub_config(protocol_address=HUB2, nbma_address=HUB2_NBMA))
    nhs = (NHSConfig(nbma=HUB_NBMA, protocol=HUB), NHSConfig(nbma=HUB2_NBMA))  # hub 2 learned dynamically
    spoke = net.add(spoke_config(SPOKE_A, SPOKE_A_NBMA, nhs=nhs, holding_time=300))
    net.start()
    assert [r.up for r in spoke.nhs] == [True, True]
    assert spoke.nhs[1].protocol == HUB2
    assert hub2.cache.get(ip_network(SPOKE_A)) is not None
    net.cut.add(HUB_NBMA)
    net.advance(120)
    assert [r.up for r in spoke.nhs] == [False, True]
    net.call(spoke, spoke.resolve, A("10.99.0.1"))
    assert net.sent(PacketType.RESOLUTION_REQUEST, src=SPOKE_A_NBMA)[-1].dst == HUB2_NBMA


def test_a_retransmitted_resolution_follows_the_nhs_that_is_still_up(net: SimNet) -> None:
    """Hub 1 dies while a resolution asked of it is pending: once hub 1 is declared down, the next
    retransmission goes to hub 2 and is answered (before, every retry went to the dead hub)."""
    net.add(hub_config())
    net.add(hub_config(protocol_address=HUB2, nbma_address=HUB2_NBMA))
    nhs = (NHSConfig(nbma=HUB_NBMA, protocol=HUB), NHSConfig(nbma=HUB2_NBMA, protocol=HUB2))
    a = net.add(spoke_config(SPOKE_A, SPOKE_A_NBMA, nhs=nhs, holding_time=300))
    net.add(spoke_config(SPOKE_B, SPOKE_B_NBMA, nhs=nhs, site_prefixes=(SITE_B,), holding_time=300))
    net.start()
    net.cut.add(HUB_NBMA)
    net.call(a, a.resolve, A("10.20.0.5"))
    assert net.sent(PacketType.RESOLUTION_REQUEST, src=SPOKE_A_NBMA)[-1].dst == HUB_NBMA
    a._registrar.nhs[0].up = False  # declared down meanwhile (its refreshes went unanswered)
    net.advance(1.5)  # the first retransmission
    assert net.sent(PacketType.RESOLUTION_REQUEST, src=SPOKE_A_NBMA)[-1].dst == HUB2_NBMA
    assert a.cache.get(SITE_B) is not None and a.cache.get(SITE_B).nbma == SPOKE_B_NBMA  # type: ignore[union-attr]


def test_a_failed_renewal_leaves_no_negative_entry(net: SimNet) -> None:
    _, a, _ = hub_and_two_spokes(net, holding_time=600)
    net.call(a, a.resolve, A("10.20.0.5"))
    net.cut.add(SPOKE_B_NBMA)
    net.call(a, a.renew, A("10.20.0.5"))
    net.advance(20)  # every attempt unanswered
    assert [e for _, e in net.events if isinstance(e, ResolutionFailed)], "the renewal failed"
    assert a.cache.get(ip_network(A("10.20.0.5"))) is None, "no negative entry"
    assert a.cache.get(SITE_B) is not None, "the binding stays until it expires"


def test_unique_address_registered_from_another_nbma_is_refused_with_code_14(net: SimNet) -> None:
    hub = net.add(hub_config())
    net.add(spoke_config(SPOKE_A, SPOKE_A_NBMA))
    impostor = net.add(spoke_config(SPOKE_A, SPOKE_C_NBMA))
    net.start()
    replies = net.sent(PacketType.REGISTRATION_REPLY, dst=SPOKE_C_NBMA)
    assert replies and isinstance(replies[0].packet, Message)
    assert replies[0].packet.cies[0].code == CIECode.UNIQUE_ADDRESS_REGISTERED
    assert not impostor.nhs[0].up
    assert hub.cache.get(ip_network(SPOKE_A)).nbma == SPOKE_A_NBMA  # type: ignore[union-attr]
    assert hub.counters.events["registration_unique_conflict"] == 1


def test_a_spoke_that_moved_to_a_new_nbma_is_rebound_and_purged_from_those_who_resolved_it(net: SimNet) -> None:
    """Non-unique registrations ('ip nhrp registration no-unique'): spoke B comes back at a new NBMA
    address (its agent restarted with the new address); the hub rebinds B's tunnel address and site
    prefix at once and purges A's shortcut to the old address; A's next resolution finds the new one."""
    hub = net.add(hub_config())
    a = net.add(spoke_config(SPOKE_A, SPOKE_A_NBMA, site_prefixes=(SITE_A,), unique=False))
    net.add(spoke_config(SPOKE_B, SPOKE_B_NBMA, site_prefixes=(SITE_B,), unique=False))
    net.start()
    net.call(a, a.resolve, A("10.20.0.5"))
    assert a.cache.get(SITE_B).nbma == SPOKE_B_NBMA  # type: ignore[union-attr]

    del net.nodes[SPOKE_B_NBMA]  # the old address is gone
    moved = net.add(spoke_config(SPOKE_B, SPOKE_C_NBMA, site_prefixes=(SITE_B,), unique=False))
    net.take(moved, moved.start(net.now))
    net.run()
    assert moved.nhs[0].up, "the re-registration from the new address is accepted"
    for prefix in (ip_network(SPOKE_B), SITE_B):
        assert hub.cache.get(prefix).nbma == SPOKE_C_NBMA  # type: ignore[union-attr]
    assert hub.counters.events["registration_moved"] == 2
    assert net.sent(PacketType.PURGE_REQUEST, src=HUB_NBMA, dst=SPOKE_A_NBMA), "A is told the old binding is gone"
    assert a.cache.get(SITE_B) is None and a.cache.get(ip_network(SPOKE_B)) is None

    net.call(a, a.resolve, A("10.20.0.5"))
    rebuilt = a.cache.get(SITE_B)
    assert rebuilt is not None and rebuilt.type == EntryType.SHORTCUT and rebuilt.nbma == SPOKE_C_NBMA


def test_a_refresh_from_the_same_nbma_purges_nobody(net: SimNet) -> None:
    _, a, _ = hub_and_two_spokes(net, unique=False, holding_time=600)
    net.call(a, a.resolve, A("10.20.0.5"))
    net.advance(201)  # both spokes refresh their registrations
    assert len(net.sent(PacketType.REGISTRATION_REQUEST, src=SPOKE_B_NBMA)) == 2
    assert not net.sent(PacketType.PURGE_REQUEST)
    assert a.cache.get(SITE_B) is not None


def test_prefix_registrations_broader_than_the_minimum_are_refused(net: SimNet) -> None:
    hub = net.add(hub_config())
    net.add(spoke_config(SPOKE_A, SPOKE_A_NBMA, site_prefixes=(ip_network("10.0.0.0/7"),)))
    net.start()
    reply = net.sent(PacketType.REGISTRATION_REPLY)[0].packet
    assert isinstance(reply, Message)
    assert [c.code for c in reply.cies] == [CIECode.SUCCESS, CIECode.ADMINISTRATIVELY_PROHIBITED]
    assert hub.cache.get(ip_network("10.0.0.0/7")) is None
    assert net.nodes[SPOKE_A_NBMA].nhs[0].up


# --- resolution -----------------------------------------------------------------------------------


def test_phase3_resolution_builds_shortcuts_in_both_directions(net: SimNet) -> None:
    hub, a, b = hub_and_two_spokes(net)
    net.call(a, a.resolve, A("10.20.0.5"))
    request = net.sent(PacketType.RESOLUTION_REQUEST, src=SPOKE_A_NBMA)[0]
    assert request.dst == HUB_NBMA
    forwarded = net.sent(PacketType.RESOLUTION_REQUEST, src=HUB_NBMA)[0]
    assert forwarded.dst == SPOKE_B_NBMA
    assert forwarded.packet.hop_count == request.packet.hop_count - 1
    transit = find_extension(forwarded.packet, ForwardTransitNHS)
    assert transit is not None and [c.client_protocol for c in transit.cies] == [HUB]
    reply = net.sent(PacketType.RESOLUTION_REPLY)[0]
    assert (reply.src, reply.dst) == (SPOKE_B_NBMA, SPOKE_A_NBMA)  # straight back, not via the hub
    assert isinstance(reply.packet, Message) and reply.packet.flags & ResolutionFlag.A
    shortcut = a.cache.get(SITE_B)
    assert shortcut is not None and shortcut.type == EntryType.SHORTCUT
    assert (shortcut.nbma, shortcut.next_hop) == (SPOKE_B_NBMA, SPOKE_B)
    assert a.cache.get(ip_network(SPOKE_B)).nbma == SPOKE_B_NBMA  # type: ignore[union-attr]
    done = net.of(SPOKE_A_NBMA, ResolutionDone)
    assert len(done) == 1 and done[0].entry.prefix == SITE_B  # type: ignore[attr-defined]
    reverse = b.cache.get(ip_network(SPOKE_A))
    assert reverse is not None and reverse.type == EntryType.CACHED and reverse.nbma == SPOKE_A_NBMA
    assert hub.counters.events["resolution_forwarded"] == 1


def test_responder_answers_even_when_it_already_has_a_shortcut(net: SimNet) -> None:
    """FRR issue 4845: a spoke with a shortcut stopped answering, leaving the reverse via the hub."""
    _, a, b = hub_and_two_spokes(net)
    net.call(a, a.resolve, A("10.20.0.5"))
    net.call(b, b.resolve, A("10.10.0.5"))
    replies = net.sent(PacketType.RESOLUTION_REPLY, src=SPOKE_A_NBMA)
    assert replies and replies[0].dst == SPOKE_B_NBMA
    assert b.cache.get(SITE_A).type == EntryType.SHORTCUT  # type: ignore[union-attr]


def test_a_reply_to_a_request_that_came_through_the_hub_names_the_hub_as_relay(net: SimNet) -> None:
    _, a, _ = hub_and_two_spokes(net)
    net.take(a, a.resolve(A("10.20.0.5"), net.now))
    sends: list[Send] = []
    for _ in range(10):  # a -> hub -> b, stopping before b's reply goes out
        sender, send = net.queue.pop(0)
        actions = net.nodes[send.nbma].receive(send.data, sender, net.now)
        if send.nbma == SPOKE_B_NBMA:
            sends = [x for x in actions if isinstance(x, Send)]
            break
        net.take(net.nodes[send.nbma], actions)
    [reply] = sends
    assert reply.packet_type == PacketType.RESOLUTION_REPLY
    assert (reply.nbma, reply.relay) == (SPOKE_A_NBMA, HUB_NBMA)


def test_a_reply_relayed_by_the_hub_reaches_the_requester_as_relayed(net: SimNet) -> None:
    """RFC 2332's reverse path: the responder hands its reply to the hub, which passes it on (adding itself
    to the reverse transit record); the requester takes the responder's NBMA from the CIE."""
    _, a, _ = hub_and_two_spokes(net)
    net.take(a, a.resolve(A("10.20.0.5"), net.now))
    for _ in range(10):
        sender, send = net.queue.pop(0)
        if sender == SPOKE_B_NBMA and send.packet_type == PacketType.RESOLUTION_REPLY:
            assert send.relay == HUB_NBMA
            net.queue.insert(0, (sender, replace(send, nbma=send.relay)))  # to the hub instead
            break
        net.take(net.nodes[send.nbma], net.nodes[send.nbma].receive(send.data, sender, net.now))
    net.run()
    relayed = net.sent(PacketType.RESOLUTION_REPLY, src=HUB_NBMA, dst=SPOKE_A_NBMA)
    assert relayed, "the hub passed the reply on"
    transit = find_extension(relayed[0].packet, ReverseTransitNHS)  # type: ignore[arg-type]
    assert transit is not None and [c.client_protocol for c in transit.cies] == [HUB]
    [done] = net.of(SPOKE_A_NBMA, ResolutionDone)
    assert done.relayed and done.entry.nbma == SPOKE_B_NBMA  # type: ignore[attr-defined]
    assert a.cache.get(SITE_B).type == EntryType.SHORTCUT  # type: ignore[union-attr]


def test_a_reply_straight_from_the_responder_is_not_relayed(net: SimNet) -> None:
    _, a, _ = hub_and_two_spokes(net)
    net.call(a, a.resolve, A("10.20.0.5"))
    [done] = net.of(SPOKE_A_NBMA, ResolutionDone)
    assert not done.relayed  # type: ignore[attr-defined]
    assert [s.dst for s in net.sent(PacketType.RESOLUTION_REPLY)] == [SPOKE_A_NBMA]


def test_cached_result_is_returned_without_asking(net: SimNet) -> None:
    _, a, _ = hub_and_two_spokes(net)
    net.call(a, a.resolve, A("10.20.0.5"))
    before = len(net.wire)
    net.call(a, a.resolve, A("10.20.9.9"))
    assert len(net.wire) == before
    assert len(net.of(SPOKE_A_NBMA, ResolutionDone)) == 2


def test_renew_asks_again_and_refreshes_the_shortcut_in_place(net: SimNet) -> None:
    _, a, _ = hub_and_two_spokes(net, holding_time=600)
    net.call(a, a.resolve, A("10.20.0.5"))
    first = a.cache.get(SITE_B)
    assert first is not None and first.expires == 600
    net.advance(500)
    events_before = len(net.events)
    net.call(a, a.renew, A("10.20.0.5"))
    assert len(net.sent(PacketType.RESOLUTION_REQUEST, src=SPOKE_A_NBMA)) == 2, "a cached answer does not stop it"
    renewed = a.cache.get(SITE_B)
    assert renewed is not None and renewed.expires == 1100 and renewed.nbma == SPOKE_B_NBMA
    removed = [e for _, e in net.events[events_before:] if isinstance(e, CacheChanged) and e.kind == ChangeKind.REMOVED]
    assert removed == [], "refreshed in place: the routes never go"
    net.advance(200)  # past the first expiry
    assert a.cache.get(SITE_B) is not None


def test_retransmit_resolutions_resends_pending_requests_now_keeping_their_attempts(net: SimNet) -> None:
    _, a, _ = hub_and_two_spokes(net)
    net.cut.add(SPOKE_B_NBMA)  # the responder's answer cannot come back yet
    net.call(a, a.resolve, A("10.20.0.5"))
    assert len(net.sent(PacketType.RESOLUTION_REQUEST, src=SPOKE_A_NBMA)) == 1
    net.advance(0.5)
    net.cut.clear()
    net.call(a, a.retransmit_resolutions)
    assert len(net.sent(PacketType.RESOLUTION_REQUEST, src=SPOKE_A_NBMA)) == 2
    assert a.cache.get(SITE_B) is not None, "answered without waiting for the backoff"
    net.call(a, a.retransmit_resolutions)  # nothing pending: nothing sent
    assert len(net.sent(PacketType.RESOLUTION_REQUEST, src=SPOKE_A_NBMA)) == 2


def test_unknown_destination_gets_a_nak_and_a_negative_entry(net: SimNet) -> None:
    _, a, _ = hub_and_two_spokes(net)
    net.call(a, a.resolve, A("10.99.0.1"))
    failed = net.of(SPOKE_A_NBMA, ResolutionFailed)
    assert [(f.reason, f.code) for f in failed] == [("nak", CIECode.NO_BINDING_EXISTS)]  # type: ignore[attr-defined]
    assert a.cache.get(ip_network("10.99.0.1/32")).type == EntryType.NEGATIVE  # type: ignore[union-attr]
    sent = len(net.sent(PacketType.RESOLUTION_REQUEST))
    net.call(a, a.resolve, A("10.99.0.1"))
    assert len(net.sent(PacketType.RESOLUTION_REQUEST)) == sent
    assert net.of(SPOKE_A_NBMA, ResolutionFailed)[-1].reason == "negative-cache"  # type: ignore[attr-defined]
    net.advance(31)
    net.call(a, a.resolve, A("10.99.0.1"))
    assert len(net.sent(PacketType.RESOLUTION_REQUEST)) == sent + 1


def test_resolution_retries_then_times_out_into_the_negative_cache(net: SimNet) -> None:
    _, a, _ = hub_and_two_spokes(net)
    net.cut.add(SPOKE_B_NBMA)
    net.call(a, a.resolve, A("10.20.0.5"))
    net.advance(0.5)
    assert len(net.sent(PacketType.RESOLUTION_REQUEST, src=SPOKE_A_NBMA)) == 1
    net.advance(20)
    assert len(net.sent(PacketType.RESOLUTION_REQUEST, src=SPOKE_A_NBMA)) == 4
    assert [f.reason for f in net.of(SPOKE_A_NBMA, ResolutionFailed)] == ["timeout"]  # type: ignore[attr-defined]
    assert a.cache.lookup(A("10.20.0.5"), net.now).type == EntryType.NEGATIVE  # type: ignore[union-attr]


def test_no_nhs_up_fails_at_once(net: SimNet) -> None:
    spoke = net.add(spoke_config(SPOKE_A, SPOKE_A_NBMA))
    net.call(spoke, spoke.resolve, A("10.20.0.5"))
    assert net.of(SPOKE_A_NBMA, ResolutionFailed)[0].reason == "no-nhs"  # type: ignore[attr-defined]


def test_shortcut_expires_with_the_responders_holding_time(net: SimNet) -> None:
    hub = net.add(hub_config(holding_time=600))
    a = net.add(spoke_config(SPOKE_A, SPOKE_A_NBMA, holding_time=600))
    net.add(spoke_config(SPOKE_B, SPOKE_B_NBMA, site_prefixes=(SITE_B,), holding_time=90))
    net.start()
    net.call(a, a.resolve, A("10.20.0.5"))
    net.advance(89)
    assert a.cache.get(SITE_B) is not None
    net.advance(2)
    assert a.cache.get(SITE_B) is None
    assert hub.cache.get(SITE_B) is not None  # B refreshed at 30 s and 60 s


# --- traffic indications --------------------------------------------------------------------------


def test_hairpin_sends_a_traffic_indication_that_triggers_a_shortcut(net: SimNet) -> None:
    hub, a, _ = hub_and_two_spokes(net)
    net.call(hub, hub.hairpin, ip_packet("10.10.0.5", "10.20.0.5"))
    indication = net.sent(PacketType.TRAFFIC_INDICATION)[0]
    assert (indication.src, indication.dst) == (HUB_NBMA, SPOKE_A_NBMA)
    assert isinstance(indication.packet, TrafficIndication)
    assert indication.packet.hop_count == 1
    assert indication.packet.dst_protocol == A("10.10.0.5")
    assert indication.packet.original_packet == ip_packet("10.10.0.5", "10.20.0.5")
    assert a.cache.get(SITE_B) is not None
    assert hub.counters.events["traffic_indication_sent"] == 1


def test_traffic_indications_are_rate_limited_per_pair(net: SimNet) -> None:
    hub, _, _ = hub_and_two_spokes(net)
    for _ in range(5):
        net.call(hub, hub.hairpin, ip_packet("10.10.0.5", "10.20.0.5"))
    assert len(net.sent(PacketType.TRAFFIC_INDICATION)) == 2  # the burst
    assert hub.counters.drops[DropReason.RATE_LIMITED] == 3
    net.call(hub, hub.hairpin, ip_packet("10.10.0.6", "10.20.0.5"))  # another pair is not limited
    assert len(net.sent(PacketType.TRAFFIC_INDICATION)) == 3
    net.advance(5)
    net.call(hub, hub.hairpin, ip_packet("10.10.0.5", "10.20.0.5"))
    assert len(net.sent(PacketType.TRAFFIC_INDICATION)) == 4


def test_spoke_holds_down_repeated_indications_for_a_destination(net: SimNet) -> None:
    _, a, _ = hub_and_two_spokes(net)
    net.cut.add(SPOKE_B_NBMA)  # resolution stays pending, then fails
    indication = TrafficIndication(
        hop_count=1,
        src_nbma=HUB_NBMA,
        src_protocol=HUB,
        dst_protocol=A("10.10.0.5"),
        original_packet=ip_packet("10.10.0.5", "10.20.0.5"),
    )
    for _ in range(3):
        net.take(a, a.receive(encode(indication), HUB_NBMA, net.now))
        net.run()
    assert a.counters.drops[DropReason.RATE_LIMITED] == 2
    assert a.counters.events["traffic_indication_acted_on"] == 1


def answering_hub_and_two_spokes(net: SimNet, **hub_overrides: object) -> tuple[Engine, Engine, Engine]:
    """Our Phase 3 hub (answers in its indications) and two spokes that accept an NHS's answers."""
    hub = net.add(hub_config(indication_answers=True, **hub_overrides))
    a = net.add(spoke_config(SPOKE_A, SPOKE_A_NBMA, site_prefixes=(SITE_A,), authoritative_requests=False))
    b = net.add(spoke_config(SPOKE_B, SPOKE_B_NBMA, site_prefixes=(SITE_B,), authoritative_requests=False))
    net.start()
    return hub, a, b


def indication_with_answer(answer: CIE, destination: str = "10.20.0.5") -> TrafficIndication:
    return TrafficIndication(
        hop_count=1,
        src_nbma=HUB_NBMA,
        src_protocol=HUB,
        dst_protocol=A("10.10.0.5"),
        original_packet=ip_packet("10.10.0.5", destination),
        extensions=(IndicationAnswer(cies=(answer,)),),
    )


B_ANSWER = CIE(prefix_length=16, holding_time=600, client_nbma=SPOKE_B_NBMA, client_protocol=SPOKE_B)


def test_an_indication_carries_the_hubs_answer_and_the_spoke_asks_nobody(net: SimNet) -> None:
    """The hub puts the destination's registration in its Traffic Indication: the source installs the shortcut
    on the indication, a round trip to the hub sooner; no Resolution Request leaves, the destination sees
    nothing, and the hub remembers the spoke for purges as it would after answering its request."""
    hub, a, b = answering_hub_and_two_spokes(net)
    net.call(hub, hub.hairpin, ip_packet("10.10.0.5", "10.20.0.5"))
    (indication,) = net.sent(PacketType.TRAFFIC_INDICATION)
    carried = find_extension(indication.packet, IndicationAnswer)
    assert carried is not None and not carried.compulsory
    assert [(c.client_nbma, c.client_protocol, c.prefix_length) for c in carried.cies] == [(SPOKE_B_NBMA, SPOKE_B, 16)]
    assert not net.sent(PacketType.RESOLUTION_REQUEST)
    shortcut = a.cache.get(SITE_B)
    assert shortcut is not None and shortcut.type == EntryType.SHORTCUT
    assert (shortcut.nbma, shortcut.next_hop) == (SPOKE_B_NBMA, SPOKE_B)
    assert a.cache.get(ip_network(SPOKE_B)) is not None, "the next hop has its own binding"
    (done,) = net.of(SPOKE_A_NBMA, ResolutionDone)
    assert isinstance(done, ResolutionDone) and done.nhs_answer and done.indication_from == HUB_NBMA
    assert b.cache.get(ip_network(SPOKE_A)) is None
    assert hub.counters.events["indication_answered"] == 1 and a.counters.events["indication_answer_taken"] == 1
    assert hub._server is not None and SPOKE_A in hub._server.interested[SITE_B]


def test_a_hub_answering_lower_requesters_only_answers_in_the_lower_ones_indication(net: SimNet) -> None:
    """With IPsec (NhsAnswers.LOWER_REQUESTER) only the lower NBMA address learns from the indication; the
    higher one asks, and its request goes on to the lower, as for a request without the indication."""
    from dmvpn.nhrp.engine import NhsAnswers

    hub, _, _ = answering_hub_and_two_spokes(net, nhs_answers=NhsAnswers.LOWER_REQUESTER)
    net.call(hub, hub.hairpin, ip_packet("10.20.0.5", "10.10.0.5"))  # to B, the higher: no answer in it
    (to_b,) = net.sent(PacketType.TRAFFIC_INDICATION, dst=SPOKE_B_NBMA)
    assert find_extension(to_b.packet, IndicationAnswer) is None
    assert net.sent(PacketType.RESOLUTION_REQUEST, src=HUB_NBMA, dst=SPOKE_A_NBMA), "forwarded to A"
    net.call(hub, hub.hairpin, ip_packet("10.10.0.6", "10.20.0.6"))  # to A, the lower: answered
    (to_a,) = net.sent(PacketType.TRAFFIC_INDICATION, dst=SPOKE_A_NBMA)
    assert find_extension(to_a.packet, IndicationAnswer) is not None
    assert not net.sent(PacketType.RESOLUTION_REQUEST, src=SPOKE_A_NBMA)


def test_the_higher_end_has_the_answer_in_its_indication_once_the_lower_end_had_its_own(net: SimNet) -> None:
    """Two-way traffic: the lower end (A) got B's binding in its indication and initiates the SA, so B's
    indication, moments later, carries A's binding too and B asks nobody (its request would cross the hub
    and A while their IKE exchange runs). Only for a while (ANSWER_MEMORY_S): later, B asks again."""
    from dmvpn.nhrp.engine import NhsAnswers
    from dmvpn.nhrp.engine.server import ANSWER_MEMORY_S

    hub, a, b = answering_hub_and_two_spokes(net, nhs_answers=NhsAnswers.LOWER_REQUESTER)
    net.call(hub, hub.hairpin, ip_packet("10.10.0.5", "10.20.0.5"))  # A -> B: A, the lower, is answered
    net.call(hub, hub.hairpin, ip_packet("10.20.0.5", "10.10.0.5"))  # B -> A: so is B now
    (to_b,) = net.sent(PacketType.TRAFFIC_INDICATION, dst=SPOKE_B_NBMA)
    carried = find_extension(to_b.packet, IndicationAnswer)
    assert carried is not None and [c.client_nbma for c in carried.cies] == [SPOKE_A_NBMA]
    assert not net.sent(PacketType.RESOLUTION_REQUEST), "neither spoke asked"
    shortcut = b.cache.get(SITE_A)
    assert shortcut is not None and (shortcut.type, shortcut.nbma) == (EntryType.SHORTCUT, SPOKE_A_NBMA)
    assert hub.counters.events["indication_answered"] == 2
    assert a.counters.events["indication_answer_taken"] == b.counters.events["indication_answer_taken"] == 1
    assert hub._server is not None and SPOKE_B in hub._server.interested[SITE_A], "B hears a purge of A"

    net.advance(ANSWER_MEMORY_S + 1)
    net.call(hub, hub.hairpin, ip_packet("10.20.0.7", "10.10.0.7"))
    late = net.sent(PacketType.TRAFFIC_INDICATION, dst=SPOKE_B_NBMA)[-1]
    assert find_extension(late.packet, IndicationAnswer) is None, "the lower end's answer is too old by now"


def test_the_hubs_memory_of_its_answers_stays_bounded_and_keeps_the_recent_ones(net: SimNet) -> None:
    """Every answer is remembered for ANSWER_MEMORY_S; a hub answering many spokes keeps at most
    MAX_REMEMBERED_ANSWERS, dropping the old ones first, so memory does not grow with the cloud's traffic."""
    from dmvpn.nhrp.cache import CacheEntry
    from dmvpn.nhrp.engine.server import ANSWER_MEMORY_S, MAX_REMEMBERED_ANSWERS

    hub, _, _ = answering_hub_and_two_spokes(net)
    server = hub._server
    assert server is not None
    registrant = CacheEntry(prefix=SITE_B, type=EntryType.DYNAMIC, nbma=SPOKE_B_NBMA, next_hop=SPOKE_B)
    # Keys only (no packet is sent): IPv6 documentation addresses give enough distinct recipients.
    for index in range(MAX_REMEMBERED_ANSWERS):  # old answers, all from one moment
        server._note_answer(IPv6Address("2001:db8::") + index, registrant, 0.0)
    later = ANSWER_MEMORY_S + 1
    server._note_answer(SPOKE_A_NBMA, registrant, later)
    assert len(server._answered) == 1, "the too-old answers went when the memory was full"
    for index in range(MAX_REMEMBERED_ANSWERS + 10):  # recent ones only: the oldest go, one at a time
        server._note_answer(IPv6Address("2001:db8:1::") + index, registrant, later)
    assert len(server._answered) <= MAX_REMEMBERED_ANSWERS
    assert (IPv6Address("2001:db8:1::") + MAX_REMEMBERED_ANSWERS + 9, SPOKE_B_NBMA) in server._answered


def test_the_hubs_answer_is_ignored_without_the_switch_or_from_a_stranger(net: SimNet) -> None:
    """An answer in an indication counts only from an NHS we are registered with, and only for a spoke that
    accepts an NHS's answers; otherwise the spoke resolves as the RFC says (the answer is not a binding)."""
    hub = net.add(hub_config(indication_answers=True))
    a = net.add(spoke_config(SPOKE_A, SPOKE_A_NBMA, site_prefixes=(SITE_A,)))  # insists on A
    net.add(spoke_config(SPOKE_B, SPOKE_B_NBMA, site_prefixes=(SITE_B,)))
    net.start()
    net.call(hub, hub.hairpin, ip_packet("10.10.0.5", "10.20.0.5"))
    assert net.sent(PacketType.RESOLUTION_REQUEST, src=SPOKE_A_NBMA), "it asked"
    assert a.counters.events["indication_answer_taken"] == 0

    c = net.add(spoke_config(SPOKE_C, SPOKE_C_NBMA, authoritative_requests=False))
    net.start()
    stranger = A("203.0.113.99")
    actions = c.receive(encode(indication_with_answer(B_ANSWER)), stranger, net.now)
    assert c.cache.get(SITE_B) is None and c.counters.events["indication_answer_taken"] == 0
    assert [s.nbma for s in actions if isinstance(s, Send)] == [HUB_NBMA], "it asked its NHS instead"


@pytest.mark.parametrize(
    "answer",
    [
        replace(B_ANSWER, client_protocol=IPv6Address("2001:db8::20")),  # a next hop of the wrong family
        replace(B_ANSWER, client_nbma=SPOKE_C_NBMA),  # our own NBMA address
        replace(B_ANSWER, code=CIECode.NO_BINDING_EXISTS),
        replace(B_ANSWER, client_protocol=None),
    ],
)
def test_an_unusable_answer_in_an_indication_is_counted_and_the_spoke_asks(net: SimNet, answer: CIE) -> None:
    net.add(hub_config())
    c = net.add(spoke_config(SPOKE_C, SPOKE_C_NBMA, authoritative_requests=False))
    net.start()
    actions = c.receive(encode(indication_with_answer(answer)), HUB_NBMA, net.now)
    assert c.counters.drops[DropReason.BAD_TRAFFIC_INDICATION] == 1
    assert c.cache.get(SITE_B) is None
    (request,) = [s for s in actions if isinstance(s, Send)]
    assert request.packet_type == PacketType.RESOLUTION_REQUEST


def test_a_spoke_that_took_the_hubs_answer_is_purged_when_the_registration_goes(net: SimNet) -> None:
    hub = net.add(hub_config(indication_answers=True))
    a = net.add(spoke_config(SPOKE_A, SPOKE_A_NBMA, site_prefixes=(SITE_A,), authoritative_requests=False))
    net.add(spoke_config(SPOKE_B, SPOKE_B_NBMA, site_prefixes=(SITE_B,), holding_time=600))
    net.start()
    net.call(hub, hub.hairpin, ip_packet("10.10.0.5", "10.20.0.5"))
    assert a.cache.get(SITE_B) is not None
    net.cut.add(SPOKE_B_NBMA)
    net.advance(601)
    assert net.sent(PacketType.PURGE_REQUEST, src=HUB_NBMA, dst=SPOKE_A_NBMA)
    assert a.cache.get(SITE_B) is None


def test_hairpin_for_an_unknown_source_is_dropped(net: SimNet) -> None:
    hub, _, _ = hub_and_two_spokes(net)
    net.call(hub, hub.hairpin, ip_packet("10.77.0.5", "10.20.0.5"))
    assert hub.counters.drops[DropReason.NO_ROUTE] == 1
    net.call(hub, hub.hairpin, b"\x00garbage")
    assert hub.counters.drops[DropReason.BAD_TRAFFIC_INDICATION] == 1


# --- authentication -------------------------------------------------------------------------------


def test_matching_secrets_work_and_every_packet_carries_them(net: SimNet) -> None:
    hub = net.add(hub_config(auth_secret=b"s3cret"))
    a = net.add(spoke_config(SPOKE_A, SPOKE_A_NBMA, auth_secret=b"s3cret"))
    net.add(spoke_config(SPOKE_B, SPOKE_B_NBMA, auth_secret=b"s3cret", site_prefixes=(SITE_B,)))
    net.start()
    net.call(a, a.resolve, A("10.20.0.5"))
    assert a.cache.get(SITE_B) is not None
    for wire in net.wire:
        auth = find_extension(wire.packet, Authentication)
        assert auth is not None and (auth.spi, auth.data) == (1, b"s3cret")
    assert hub.counters.drops[DropReason.AUTH_FAILURE] == 0


def test_authentication_failure_sends_one_error_indication_and_no_ping_pong(net: SimNet) -> None:
    hub = net.add(hub_config(auth_secret=b"right"))
    spoke = net.add(spoke_config(SPOKE_A, SPOKE_A_NBMA, auth_secret=b"wrong"))
    net.start()
    assert hub.counters.drops[DropReason.AUTH_FAILURE] == 1
    assert hub.counters.error_indications_out[ErrorCode.AUTHENTICATION_FAILURE] == 1
    errors = net.sent(PacketType.ERROR_INDICATION)
    assert len(errors) == 1 and errors[0].dst == SPOKE_A_NBMA
    assert isinstance(errors[0].packet, ErrorIndication)
    assert errors[0].packet.error_code == ErrorCode.AUTHENTICATION_FAILURE
    # The spoke cannot authenticate the hub's indication either; it counts it and stays silent.
    assert spoke.counters.drops[DropReason.AUTH_FAILURE] == 1
    assert spoke.counters.packets_out[PacketType.ERROR_INDICATION] == 0
    assert hub.cache.get(ip_network(SPOKE_A)) is None
    net.advance(10)
    assert len(net.sent(PacketType.ERROR_INDICATION)) == len(net.sent(PacketType.REGISTRATION_REQUEST))


def test_what_we_send_carries_our_authentication_only() -> None:
    """A packet we pass on loses the extension another hop added, and gains ours when we have a secret;
    with neither there is nothing to change and the packet goes out as built."""
    request = Message(type=PacketType.RESOLUTION_REQUEST, request_id=7, src_nbma=SPOKE_A_NBMA,
                      src_protocol=SPOKE_A, dst_protocol=SPOKE_B)  # fmt: skip
    foreign = replace(request, extensions=(Authentication(data=b"theirs"), NATAddress()))
    plain = Context(hub_config())
    assert plain.with_our_authentication(request) is request
    stripped = plain.with_our_authentication(foreign)
    assert find_extension(stripped, Authentication) is None and stripped.extensions == (NATAddress(),)
    ours = Context(hub_config(auth_secret=b"s3cret")).with_our_authentication(foreign)
    assert [e for e in ours.extensions if isinstance(e, Authentication)] == [Authentication(data=b"s3cret")]


def test_missing_authentication_is_a_failure_too(net: SimNet) -> None:
    hub = net.add(hub_config(auth_secret=b"right"))
    net.add(spoke_config(SPOKE_A, SPOKE_A_NBMA))
    net.start()
    assert hub.counters.drops[DropReason.AUTH_FAILURE] == 1


def test_an_authenticated_error_indication_about_our_registration_marks_the_nhs_down(net: SimNet) -> None:
    _, a, _ = hub_and_two_spokes(net, holding_time=300)
    net.cut.add(HUB_NBMA)
    net.advance(100)  # a refresh is outstanding
    outstanding = net.sent(PacketType.REGISTRATION_REQUEST, src=SPOKE_A_NBMA)[-1].packet
    indication = ErrorIndication(
        error_code=ErrorCode.PROTOCOL_ERROR,
        src_nbma=HUB_NBMA,
        src_protocol=HUB,
        dst_protocol=SPOKE_A,
        offending_packet=encode(outstanding),
    )
    actions = a.receive(encode(indication), HUB_NBMA, net.now)
    assert not any(isinstance(action, Send) for action in actions)  # never answered
    assert [x.up for x in actions if isinstance(x, NHSStateChanged)] == [False]
    assert a.counters.error_indications_in[ErrorCode.PROTOCOL_ERROR] == 1


# --- errors on the wire ---------------------------------------------------------------------------


def resolution_request(dst: IPv4Address, **overrides: object) -> Message:
    base = Message(
        type=PacketType.RESOLUTION_REQUEST,
        flags=ResolutionFlag.Q | ResolutionFlag.A | ResolutionFlag.S,
        request_id=99,
        src_nbma=SPOKE_A_NBMA,
        src_protocol=SPOKE_A,
        dst_protocol=dst,
        cies=(CIE(prefix_length=32, holding_time=600),),
        extensions=(ResponderAddress(), ForwardTransitNHS(), ReverseTransitNHS()),
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def test_loop_in_the_forward_transit_record_is_error_3(net: SimNet) -> None:
    hub, _, _ = hub_and_two_spokes(net)
    looped = resolution_request(
        A("10.20.0.5"),
        extensions=(ForwardTransitNHS(cies=(CIE(client_nbma=HUB_NBMA, client_protocol=HUB),)),),
    )
    actions = hub.receive(encode(looped), SPOKE_A_NBMA, net.now)
    sends = [a for a in actions if isinstance(a, Send)]
    assert len(sends) == 1 and sends[0].nbma == SPOKE_A_NBMA
    error = decode(sends[0].data)
    assert isinstance(error, ErrorIndication) and error.error_code == ErrorCode.LOOP_DETECTED
    assert decode(error.offending_packet) == looped
    assert hub.counters.drops[DropReason.LOOP_DETECTED] == 1


def test_hop_count_exhausted_is_error_15(net: SimNet) -> None:
    hub, _, _ = hub_and_two_spokes(net)
    actions = hub.receive(encode(resolution_request(A("10.20.0.5"), hop_count=1)), SPOKE_A_NBMA, net.now)
    (send,) = [a for a in actions if isinstance(a, Send)]
    error = decode(send.data)
    assert isinstance(error, ErrorIndication) and error.error_code == ErrorCode.HOP_COUNT_EXCEEDED


def test_hub_answers_from_its_cache_when_authority_is_not_required(net: SimNet) -> None:
    hub, _, _ = hub_and_two_spokes(net)
    request = resolution_request(A("10.20.0.5"), flags=ResolutionFlag.Q)
    actions = hub.receive(encode(request), SPOKE_A_NBMA, net.now)
    (send,) = [a for a in actions if isinstance(a, Send)]
    reply = decode(send.data)
    assert isinstance(reply, Message) and reply.type == PacketType.RESOLUTION_REPLY
    assert not reply.flags & ResolutionFlag.A
    assert (reply.cies[0].client_nbma, reply.cies[0].client_protocol, reply.cies[0].prefix_length) == (
        SPOKE_B_NBMA,
        SPOKE_B,
        16,
    )


def test_a_request_without_a_is_answered_by_the_hub_holding_the_registration(net: SimNet) -> None:
    """RFC 2332: the NHS serving the destination may answer for its client. The requester learns the binding
    from the hub (one hop and one node sooner), the hub remembers it for purges, the destination sees nothing."""
    hub, a, b = hub_and_two_spokes(net, authoritative_requests=False)
    net.call(a, a.resolve, A("10.20.0.5"))
    (request,) = net.sent(PacketType.RESOLUTION_REQUEST)
    assert isinstance(request.packet, Message) and not request.packet.flags & ResolutionFlag.A
    assert not net.sent(PacketType.RESOLUTION_REQUEST, src=HUB_NBMA), "answered, not forwarded"
    (reply,) = net.sent(PacketType.RESOLUTION_REPLY)
    assert (reply.src, reply.dst) == (HUB_NBMA, SPOKE_A_NBMA)
    shortcut = a.cache.get(SITE_B)
    assert shortcut is not None and shortcut.type == EntryType.SHORTCUT
    assert (shortcut.nbma, shortcut.next_hop) == (SPOKE_B_NBMA, SPOKE_B)
    (done,) = net.of(SPOKE_A_NBMA, ResolutionDone)
    assert isinstance(done, ResolutionDone) and done.nhs_answer and done.relayed
    assert b.cache.get(ip_network(SPOKE_A)) is None
    assert hub.counters.events["resolution_answered_from_cache"] == 1
    assert hub._server is not None and SPOKE_A in hub._server.interested[SITE_B]


def test_a_hub_answering_lower_requesters_only_forwards_a_higher_ones_request(net: SimNet) -> None:
    """NhsAnswers.LOWER_REQUESTER (IPsec): the lower NBMA address of a shortcut always learns the other's first,
    from the hub's answer or from the forwarded request, and initiates the SA."""
    from dmvpn.nhrp.engine import NhsAnswers

    hub = net.add(hub_config(nhs_answers=NhsAnswers.LOWER_REQUESTER))
    a = net.add(spoke_config(SPOKE_A, SPOKE_A_NBMA, site_prefixes=(SITE_A,), authoritative_requests=False))
    b = net.add(spoke_config(SPOKE_B, SPOKE_B_NBMA, site_prefixes=(SITE_B,), authoritative_requests=False))
    net.start()
    net.call(a, a.resolve, A("10.20.0.5"))  # A (.10) is lower than B (.20): the hub answers
    assert [(w.src, w.dst) for w in net.sent(PacketType.RESOLUTION_REPLY)] == [(HUB_NBMA, SPOKE_A_NBMA)]
    assert hub.counters.events["resolution_answered_from_cache"] == 1
    net.call(b, b.resolve, A("10.10.0.5"))  # B is higher: on to A, which answers with authority
    assert net.sent(PacketType.RESOLUTION_REQUEST, src=HUB_NBMA, dst=SPOKE_A_NBMA)
    assert hub.counters.events["resolution_forwarded"] == 1
    reply = net.sent(PacketType.RESOLUTION_REPLY, src=SPOKE_A_NBMA, dst=SPOKE_B_NBMA)[0].packet
    assert isinstance(reply, Message) and reply.flags & ResolutionFlag.A
    (done,) = net.of(SPOKE_B_NBMA, ResolutionDone)
    assert isinstance(done, ResolutionDone) and not done.nhs_answer and not done.relayed
    assert a.cache.get(ip_network(SPOKE_B)) is not None, "A learned B's binding from the request"


def test_an_authoritative_reply_relayed_by_the_hub_is_no_nhs_answer(net: SimNet) -> None:
    """A responder's reply that came back through the hub is relayed, but the responder saw the request."""
    hub, a, _ = hub_and_two_spokes(net)
    net.take(a, a.resolve(A("10.20.0.5"), net.now))
    for _ in range(2):  # a -> hub -> b; b's reply stays queued
        sender, send = net.queue.pop(0)
        receiver = net.nodes[send.nbma]  # type: ignore[index]
        net.take(receiver, receiver.receive(send.data, sender, net.now))
    (reply,) = [send for _, send in net.queue if send.packet_type == PacketType.RESOLUTION_REPLY]
    assert reply.relay == HUB_NBMA
    actions = a.receive(reply.data, HUB_NBMA, net.now)  # as if the hub passed it on
    (done,) = [action for action in actions if isinstance(action, ResolutionDone)]
    assert done.relayed and not done.nhs_answer
    assert hub.counters.events["resolution_answered_from_cache"] == 0


def test_undecodable_packets_are_counted_and_reported_but_never_errors_about_errors(net: SimNet) -> None:
    hub, _, _ = hub_and_two_spokes(net)
    good = encode(resolution_request(A("10.20.0.5")))
    bad_version = bytearray(good)
    bad_version[16] = 2
    actions = hub.receive(bytes(bad_version), SPOKE_A_NBMA, net.now)
    assert hub.counters.decode_errors[ErrorCode.PROTOCOL_ERROR] == 1
    (send,) = [a for a in actions if isinstance(a, Send)]
    assert decode(send.data).packet_type == PacketType.ERROR_INDICATION
    fake_error = bytearray(bad_version)
    fake_error[17] = PacketType.ERROR_INDICATION
    assert hub.receive(bytes(fake_error), SPOKE_A_NBMA, net.now) == []
    bad_checksum = bytearray(good)
    bad_checksum[12] ^= 0xFF
    assert hub.receive(bytes(bad_checksum), SPOKE_A_NBMA, net.now) == []
    assert hub.receive(b"\x00" * 7, SPOKE_A_NBMA, net.now) == []
    assert hub.counters.drops[DropReason.DECODE_ERROR] == 4


def test_error_indications_are_rate_limited_per_peer(net: SimNet) -> None:
    hub = net.add(hub_config(auth_secret=b"x"))
    sent = 0
    for _ in range(20):
        actions = hub.receive(encode(resolution_request(A("10.20.0.5"))), SPOKE_A_NBMA, 0.0)
        sent += sum(isinstance(a, Send) for a in actions)
    assert sent == 5
    assert hub.counters.drops[DropReason.ERROR_RATE_LIMITED] == 15


def test_registration_to_a_client_is_dropped(net: SimNet) -> None:
    spoke = net.add(spoke_config(SPOKE_A, SPOKE_A_NBMA))
    registration = Message(type=PacketType.REGISTRATION_REQUEST, src_nbma=SPOKE_B_NBMA, src_protocol=SPOKE_B)
    assert spoke.receive(encode(registration), SPOKE_B_NBMA, 0.0) == []
    assert spoke.counters.drops[DropReason.NOT_A_SERVER] == 1
    reply = Message(type=PacketType.REGISTRATION_REPLY, request_id=12345)
    spoke.receive(encode(reply), SPOKE_B_NBMA, 0.0)
    assert spoke.counters.drops[DropReason.UNKNOWN_NHS] == 1


# --- purge ----------------------------------------------------------------------------------------


def test_expired_registration_is_purged_from_spokes_that_resolved_it(net: SimNet) -> None:
    hub = net.add(hub_config())
    a = net.add(spoke_config(SPOKE_A, SPOKE_A_NBMA, holding_time=600))
    net.add(spoke_config(SPOKE_B, SPOKE_B_NBMA, site_prefixes=(SITE_B,), holding_time=600))
    net.start()
    net.call(a, a.resolve, A("10.20.0.5"))
    assert a.cache.get(SITE_B) is not None
    net.cut.add(SPOKE_B_NBMA)
    net.advance(601)
    purges = net.sent(PacketType.PURGE_REQUEST, src=HUB_NBMA, dst=SPOKE_A_NBMA)
    assert purges, "the hub purges the spoke that resolved through it"
    assert a.cache.get(SITE_B) is None
    assert a.cache.get(ip_network(SPOKE_B)) is None
    assert net.sent(PacketType.PURGE_REPLY, src=SPOKE_A_NBMA)
    assert hub._server is not None and hub._server.pending_purges == {}


def test_shutdown_withdraws_registrations(net: SimNet) -> None:
    hub, a, _ = hub_and_two_spokes(net)
    net.call(a, a.shutdown)
    purge = net.sent(PacketType.PURGE_REQUEST, src=SPOKE_A_NBMA)
    assert purge and purge[0].packet.flags & PurgeFlag.NO_REPLY  # type: ignore[union-attr]
    assert hub.cache.get(ip_network(SPOKE_A)) is None and hub.cache.get(SITE_A) is None
    assert not net.sent(PacketType.PURGE_REPLY)


def test_purge_request_with_reply_wanted(net: SimNet) -> None:
    _, a, _ = hub_and_two_spokes(net)
    net.call(a, a.resolve, A("10.20.0.5"))
    purge = Message(
        type=PacketType.PURGE_REQUEST,
        request_id=4242,
        src_nbma=HUB_NBMA,
        src_protocol=HUB,
        dst_protocol=SPOKE_A,
        cies=(CIE(prefix_length=16, client_protocol=A("10.20.0.0")),),
    )
    actions = a.receive(encode(purge), HUB_NBMA, net.now)
    (send,) = [x for x in actions if isinstance(x, Send)]
    reply = decode(send.data)
    assert isinstance(reply, Message) and (reply.type, reply.request_id) == (PacketType.PURGE_REPLY, 4242)
    assert a.cache.get(SITE_B) is None
    assert a.cache.get(ip_network(SPOKE_B)) is not None  # only the named prefix


# --- NAT ------------------------------------------------------------------------------------------


def test_spoke_behind_nat_is_registered_at_its_public_address_and_told_so(net: SimNet) -> None:
    hub = net.add(hub_config())
    private = A("198.51.100.99")
    a = net.add(spoke_config(SPOKE_A, private, site_prefixes=(SITE_A,)), seen_as=NAT_PUBLIC)
    net.start()
    registered = hub.cache.get(ip_network(SPOKE_A))
    assert registered is not None
    assert (registered.nbma, registered.claimed_nbma) == (NAT_PUBLIC, private)
    reply = net.sent(PacketType.REGISTRATION_REPLY)[0].packet
    nat = find_extension(reply, NATAddress)
    assert nat is not None and nat.cies[0].client_nbma == NAT_PUBLIC
    assert a.nat_nbma == NAT_PUBLIC
    assert [e.nbma for e in net.of(NAT_PUBLIC, NATAddressChanged)] == [NAT_PUBLIC]  # type: ignore[attr-defined]


def test_resolution_across_nat_uses_public_addresses_both_ways(net: SimNet) -> None:
    net.add(hub_config())
    private = A("198.51.100.99")
    natted = net.add(spoke_config(SPOKE_A, private, site_prefixes=(SITE_A,)), seen_as=NAT_PUBLIC)
    b = net.add(spoke_config(SPOKE_B, SPOKE_B_NBMA, site_prefixes=(SITE_B,)))
    net.start()
    # The natted spoke asks: the hub fills in its public address, the responder answers there.
    net.call(natted, natted.resolve, A("10.20.0.5"))
    forwarded = net.sent(PacketType.RESOLUTION_REQUEST, src=HUB_NBMA)[-1].packet
    nat = find_extension(forwarded, NATAddress)
    assert nat is not None and nat.cies[0].client_nbma == NAT_PUBLIC
    assert net.sent(PacketType.RESOLUTION_REPLY, src=SPOKE_B_NBMA)[-1].dst == NAT_PUBLIC
    assert b.cache.get(ip_network(SPOKE_A)).nbma == NAT_PUBLIC  # type: ignore[union-attr]
    assert natted.cache.get(SITE_B).nbma == SPOKE_B_NBMA  # type: ignore[union-attr]
    # The other way round: the natted responder says where it really is.
    net.call(b, b.resolve, A("10.10.0.5"))
    reply = net.sent(PacketType.RESOLUTION_REPLY, src=NAT_PUBLIC)[-1]
    assert reply.dst == SPOKE_B_NBMA
    nat = find_extension(reply.packet, NATAddress)
    assert nat is not None and nat.cies[0].client_nbma == NAT_PUBLIC
    shortcut = b.cache.get(SITE_A)
    assert shortcut is not None and (shortcut.nbma, shortcut.claimed_nbma) == (NAT_PUBLIC, private)


# --- configuration --------------------------------------------------------------------------------


def test_config_rejects_long_secrets_and_mixed_families() -> None:
    with pytest.raises(ValueError, match="secret"):
        EngineConfig(protocol_address=SPOKE_A, nbma_address=SPOKE_A_NBMA, auth_secret=b"123456789")
    with pytest.raises(ValueError, match="family"):
        EngineConfig(protocol_address=SPOKE_A, nbma_address=SPOKE_A_NBMA, site_prefixes=(ip_network("fd00::/64"),))
    assert isinstance(SITE_A, IPv4Network)


def test_counters_snapshot_uses_stable_labels(net: SimNet) -> None:
    hub, _, _ = hub_and_two_spokes(net)
    snapshot = hub.counters.snapshot()
    assert snapshot["packets_in"]["registration_request"] == 2
    assert snapshot["packets_out"]["registration_reply"] == 2


def test_a_purge_from_another_nbma_cannot_withdraw_someone_elses_registration(net: SimNet) -> None:
    hub, _, _ = hub_and_two_spokes(net)
    forged = Message(
        type=PacketType.PURGE_REQUEST,
        flags=PurgeFlag.NO_REPLY,
        src_nbma=SPOKE_C_NBMA,
        src_protocol=SPOKE_B,  # claims to be B
        dst_protocol=HUB,
        cies=(CIE(prefix_length=16, client_protocol=A("10.20.0.0")),),
    )
    hub.receive(encode(forged), SPOKE_C_NBMA, net.now)
    assert hub.cache.get(SITE_B) is not None


def test_a_registration_reply_from_elsewhere_is_ignored(net: SimNet) -> None:
    net.add(hub_config())
    spoke = net.add(spoke_config(SPOKE_A, SPOKE_A_NBMA))
    net.cut.add(HUB_NBMA)
    net.start()
    outstanding = net.sent(PacketType.REGISTRATION_REQUEST, src=SPOKE_A_NBMA)[-1].packet
    assert isinstance(outstanding, Message)
    forged = Message(
        type=PacketType.REGISTRATION_REPLY,
        request_id=outstanding.request_id,
        src_protocol=SPOKE_A,
        dst_protocol=HUB,
        cies=(CIE(prefix_length=32, holding_time=7200),),
    )
    spoke.receive(encode(forged), SPOKE_C_NBMA, net.now)
    assert not spoke.nhs[0].up
    assert spoke.counters.drops[DropReason.UNKNOWN_NHS] == 1
    spoke.receive(encode(forged), HUB_NBMA, net.now)
    assert spoke.nhs[0].up
