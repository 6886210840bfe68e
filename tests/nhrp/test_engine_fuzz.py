"""The engine never raises on hostile input: real packets (captured from a simulated hub-and-spoke
exchange) with fields replaced by arbitrary values, or bytes mutated, fed to hubs and spokes."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, ip_network

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmvpn.nhrp.codec import (
    CIE,
    Authentication,
    ForwardTransitNHS,
    IndicationAnswer,
    Message,
    NATAddress,
    Packet,
    PacketType,
    ResponderAddress,
    ReverseTransitNHS,
    TrafficIndication,
    decode,
    encode,
)
from dmvpn.nhrp.engine import Action, Engine, EngineConfig, NHSConfig, Send

HUB_NBMA, A_NBMA, B_NBMA = IPv4Address("192.0.2.1"), IPv4Address("198.51.100.10"), IPv4Address("198.51.100.20")
HUB, SPOKE_A, SPOKE_B = IPv4Address("172.16.0.1"), IPv4Address("172.16.0.10"), IPv4Address("172.16.0.20")
PEERS = [HUB_NBMA, A_NBMA, B_NBMA, IPv4Address("203.0.113.9")]


def build(secret: bytes | None) -> dict[IPv4Address, Engine]:
    nhs = (NHSConfig(nbma=HUB_NBMA, protocol=HUB),)
    return {
        HUB_NBMA: Engine(EngineConfig(protocol_address=HUB, nbma_address=HUB_NBMA, server=True, auth_secret=secret)),
        A_NBMA: Engine(
            EngineConfig(
                protocol_address=SPOKE_A,
                nbma_address=A_NBMA,
                nhs=nhs,
                site_prefixes=(ip_network("10.10.0.0/16"),),
                auth_secret=secret,
            )
        ),
        B_NBMA: Engine(
            EngineConfig(
                protocol_address=SPOKE_B,
                nbma_address=B_NBMA,
                nhs=nhs,
                site_prefixes=(ip_network("10.20.0.0/16"),),
                auth_secret=secret,
            )
        ),
    }


def exchange(nodes: dict[IPv4Address, Engine], actions: list[tuple[IPv4Address, Action]], now: float) -> list[bytes]:
    """Deliver Sends until quiet (bounded); return every packet that crossed the wire."""
    seen: list[bytes] = []
    queue = list(actions)
    for _ in range(400):
        if not queue:
            break
        sender, action = queue.pop(0)
        assert isinstance(action, Action.__args__)  # type: ignore[attr-defined]
        if not isinstance(action, Send):
            continue
        decode(action.data)  # everything we send decodes
        seen.append(action.data)
        receiver = nodes.get(action.nbma)  # type: ignore[call-overload]
        if receiver is not None:
            queue += [(action.nbma, a) for a in receiver.receive(action.data, sender, now)]  # type: ignore[misc]
    return seen


def capture() -> list[Packet]:
    nodes = build(None)
    packets: list[bytes] = []
    for address, engine in nodes.items():
        packets += exchange(nodes, [(address, a) for a in engine.start(0.0)], 0.0)
    a = nodes[A_NBMA]
    packets += exchange(nodes, [(A_NBMA, x) for x in a.resolve(IPv4Address("10.20.0.5"), 1.0)], 1.0)
    packets += exchange(nodes, [(A_NBMA, x) for x in a.resolve(IPv4Address("10.99.0.5"), 1.0)], 1.0)
    hub = nodes[HUB_NBMA]
    data = bytes.fromhex("450000240001400040010000") + bytes([10, 10, 0, 5, 10, 20, 0, 5]) + bytes(8)
    packets += exchange(nodes, [(HUB_NBMA, x) for x in hub.hairpin(data, 2.0)], 2.0)
    packets += exchange(nodes, [(A_NBMA, x) for x in a.shutdown(3.0)], 3.0)
    return [decode(p) for p in packets]


CAPTURED = capture()
address = st.none() | st.ip_addresses(v=4) | st.ip_addresses(v=6) | st.sampled_from([HUB, SPOKE_A, SPOKE_B])
cie = st.builds(
    CIE,
    code=st.integers(0, 255),
    prefix_length=st.integers(0, 255),
    holding_time=st.integers(0, 0xFFFF),
    client_nbma=address,
    client_protocol=address | st.sampled_from([IPv4Address("10.20.0.0"), IPv4Address("10.10.0.0")]),
)
cies = st.lists(cie, max_size=3).map(tuple)
extension = st.one_of(
    st.builds(ResponderAddress, cies=cies),
    st.builds(ForwardTransitNHS, cies=cies),
    st.builds(ReverseTransitNHS, cies=cies),
    st.builds(NATAddress, cies=cies),
    st.builds(IndicationAnswer, cies=cies),
    st.builds(Authentication, data=st.binary(max_size=9)),
)


@st.composite
def hostile(draw: st.DrawFn) -> bytes:
    packet = draw(st.sampled_from(CAPTURED))
    changes: dict[str, object] = {}
    for name, strategy in [
        ("src_nbma", address),
        ("src_protocol", address),
        ("dst_protocol", address),
        ("hop_count", st.integers(0, 255)),
        ("extensions", st.lists(extension, max_size=4).map(tuple)),
        ("protocol_type", st.sampled_from([0x0800, 0x86DD, 0x1234])),
    ]:
        if draw(st.booleans()):
            changes[name] = draw(strategy)
    if isinstance(packet, Message):
        if draw(st.booleans()):
            changes["cies"] = draw(cies)
        if draw(st.booleans()):
            changes["flags"] = draw(st.integers(0, 0xFFFF))
        if draw(st.booleans()):
            changes["request_id"] = draw(st.integers(0, 20) | st.integers(0, 0xFFFFFFFF))
        if draw(st.booleans()):
            changes["type"] = draw(st.sampled_from(list(PacketType)[:6]))
    if isinstance(packet, TrafficIndication) and draw(st.booleans()):
        changes["original_packet"] = draw(st.binary(max_size=60))
    data = bytearray(encode(replace(packet, **changes)))  # type: ignore[arg-type]
    if draw(st.booleans()) and data:
        data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


@given(
    st.lists(
        st.tuples(st.sampled_from(PEERS), st.sampled_from([HUB_NBMA, A_NBMA, B_NBMA]), hostile(), st.floats(0, 9000)),
        min_size=1,
        max_size=8,
    ),
    st.sampled_from([None, b"pw"]),
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_engines_never_raise(
    traffic: list[tuple[IPv4Address, IPv4Address, bytes, float]], secret: bytes | None
) -> None:
    nodes = build(secret)
    for address, engine in nodes.items():
        exchange(nodes, [(address, a) for a in engine.start(0.0)], 0.0)
    now = 0.0
    for sender, receiver, data, later in traffic:
        now = max(now, later)
        exchange(nodes, [(receiver, a) for a in nodes[receiver].receive(data, sender, now)], now)
        for address, engine in nodes.items():
            deadline = engine.next_deadline()
            if deadline is not None and deadline <= now:
                exchange(nodes, [(address, a) for a in engine.tick(now)], now)
