"""Byte-exact golden packets, assembled by hand from the RFC 2332 layout (not by the encoder)."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

import pytest

from dmvpn.nhrp.codec import (
    CIE,
    Authentication,
    CIECode,
    ErrorCode,
    ErrorIndication,
    ForwardTransitNHS,
    Message,
    NATAddress,
    NHRPDecodeError,
    PacketType,
    PurgeFlag,
    RegistrationFlag,
    ResolutionFlag,
    ResponderAddress,
    ReverseTransitNHS,
    TrafficIndication,
    UnknownExtension,
    VendorPrivate,
    decode,
    encode,
)

SPOKE_NBMA = IPv4Address("198.51.100.10")
HUB_NBMA = IPv4Address("192.0.2.1")
SPOKE = IPv4Address("172.16.0.10")
HUB = IPv4Address("172.16.0.1")


def ones_complement(data: bytes) -> int:
    """Reference checksum, written the slow obvious way (independent of the codec's)."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def assemble(
    op_type: int,
    mandatory: bytes,
    extensions: bytes = b"",
    *,
    hop_count: int = 16,
    nbma_len: int = 4,
) -> bytes:
    """Fixed header (RFC 2332 5.2.0.1) in front of a hand-built mandatory part and extensions."""
    size = 20 + len(mandatory) + len(extensions)
    extension_offset = 20 + len(mandatory) if extensions else 0
    header = (
        b"\x00\x01"  # ar$afn: IPv4
        + b"\x08\x00"  # ar$pro.type: IPv4
        + b"\x00" * 5  # ar$pro.snap
        + bytes([hop_count])
        + struct.pack("!H", size)
        + b"\x00\x00"  # ar$chksum, filled below
        + struct.pack("!H", extension_offset)
        + b"\x01"  # ar$op.version
        + bytes([op_type])
        + bytes([nbma_len])  # ar$shtl
        + b"\x00"  # ar$sstl
    )
    packet = header + mandatory + extensions
    return packet[:12] + struct.pack("!H", ones_complement(packet)) + packet[14:]


def ip(text: str) -> bytes:
    return IPv4Address(text).packed


def cie_bytes(
    code: int, prefix: int, mtu: int, hold: int, addresses: tuple[bytes, bytes] = (b"", b""), *, pref: int = 0
) -> bytes:
    nbma, proto = addresses
    return (
        bytes([code, prefix])
        + b"\x00\x00"
        + struct.pack("!HH", mtu, hold)
        + bytes([len(nbma), 0, len(proto), pref])
        + nbma
        + proto
    )


def ext(ext_type: int, body: bytes, *, compulsory: bool) -> bytes:
    return struct.pack("!HH", ext_type | (0x8000 if compulsory else 0), len(body)) + body


END = b"\x80\x00\x00\x00"


def common(flags: int, request_id: int, src: bytes, dst: bytes, nbma: bytes) -> bytes:
    return bytes([4, 4]) + struct.pack("!HI", flags, request_id) + nbma + src + dst


REGISTRATION_REQUEST_HEX = (
    # fixed header: afn 1, pro 0x0800, snap 0, hop 16, size 90, checksum, extoff 68, v1, type 3, shtl 4
    "0001 0800 0000000000 10 005a {csum} 0044 01 03 04 00"
    # mandatory: src/dst proto len 4/4, flags U|NAT, request id 0x01020304
    " 04 04 8002 01020304"
    " c6336409 ac10000a ac100001"  # NBMA 198.51.100.9, src 172.16.0.10, dst 172.16.0.1
    # CIE: code 0, prefix 32, mtu 1400, hold 7200, no client addresses (meaning "the source")
    " 00 20 0000 0578 1c20 00 00 00 00"
    # CIE: site prefix 10.10.0.0/16, client protocol only
    " 00 10 0000 0578 1c20 00 00 04 00 0a0a0000"
    # Authentication (compulsory): type 1, "secret"... then NAT (not compulsory, empty), End
    " 8007 000a 00000001 736563726574"
    " 0009 0000"
    " 8000 0000"
)


def registration_request_golden() -> bytes:
    raw = bytes.fromhex(REGISTRATION_REQUEST_HEX.format(csum="0000").replace(" ", ""))
    return raw[:12] + struct.pack("!H", ones_complement(raw)) + raw[14:]


REGISTRATION_REQUEST = Message(
    type=PacketType.REGISTRATION_REQUEST,
    flags=RegistrationFlag.UNIQUE | RegistrationFlag.NAT,
    request_id=0x01020304,
    src_nbma=IPv4Address("198.51.100.9"),
    src_protocol=SPOKE,
    dst_protocol=HUB,
    cies=(
        CIE(prefix_length=32, mtu=1400, holding_time=7200),
        CIE(prefix_length=16, mtu=1400, holding_time=7200, client_protocol=IPv4Address("10.10.0.0")),
    ),
    extensions=(Authentication(data=b"secret"), NATAddress()),
)


def test_registration_request_matches_the_hand_written_wire_bytes() -> None:
    golden = registration_request_golden()
    assert len(golden) == 90
    assert encode(REGISTRATION_REQUEST) == golden
    assert decode(golden) == REGISTRATION_REQUEST


def _message_golden(op_type: int, flags: int, cies: bytes, extensions: bytes = b"") -> bytes:
    mandatory = common(flags, 77, ip("172.16.0.10"), ip("172.16.0.20"), ip("198.51.100.10")) + cies
    return assemble(op_type, mandatory, extensions + END if extensions else b"")


REPLY_CIE = cie_bytes(0, 24, 1400, 600, (ip("198.51.100.20"), ip("10.20.0.0")), pref=1)
REPLY_CIE_MODEL = CIE(
    prefix_length=24,
    mtu=1400,
    holding_time=600,
    preference=1,
    client_nbma=IPv4Address("198.51.100.20"),
    client_protocol=IPv4Address("10.20.0.0"),
)
TRANSIT_CIE = cie_bytes(0, 32, 0, 600, (ip("192.0.2.1"), ip("172.16.0.1")))
TRANSIT_CIE_MODEL = CIE(
    prefix_length=32, holding_time=600, client_nbma=HUB_NBMA, client_protocol=IPv4Address("172.16.0.1")
)


@pytest.mark.parametrize(
    ("golden", "model"),
    [
        pytest.param(
            _message_golden(
                1,
                0x8000 | 0x4000 | 0x0800,
                cie_bytes(0, 32, 1400, 600),
                ext(3, b"", compulsory=True) + ext(4, TRANSIT_CIE, compulsory=True) + ext(5, b"", compulsory=True),
            ),
            Message(
                type=PacketType.RESOLUTION_REQUEST,
                flags=ResolutionFlag.Q | ResolutionFlag.A | ResolutionFlag.S,
                cies=(CIE(prefix_length=32, mtu=1400, holding_time=600),),
                extensions=(
                    ResponderAddress(),
                    ForwardTransitNHS(cies=(TRANSIT_CIE_MODEL,)),
                    ReverseTransitNHS(),
                ),
            ),
            id="resolution-request",
        ),
        pytest.param(
            _message_golden(
                2,
                0x8000 | 0x4000 | 0x2000 | 0x0800,
                REPLY_CIE,
                ext(3, cie_bytes(0, 32, 1400, 600, (ip("198.51.100.20"), ip("172.16.0.20"))), compulsory=True)
                + ext(9, cie_bytes(0, 32, 0, 0, (ip("203.0.113.7"), ip("172.16.0.20"))), compulsory=False),
            ),
            Message(
                type=PacketType.RESOLUTION_REPLY,
                flags=ResolutionFlag.Q | ResolutionFlag.A | ResolutionFlag.D | ResolutionFlag.S,
                cies=(REPLY_CIE_MODEL,),
                extensions=(
                    ResponderAddress(
                        cies=(
                            CIE(
                                prefix_length=32,
                                mtu=1400,
                                holding_time=600,
                                client_nbma=IPv4Address("198.51.100.20"),
                                client_protocol=IPv4Address("172.16.0.20"),
                            ),
                        )
                    ),
                    NATAddress(
                        cies=(
                            CIE(
                                prefix_length=32,
                                client_nbma=IPv4Address("203.0.113.7"),
                                client_protocol=IPv4Address("172.16.0.20"),
                            ),
                        )
                    ),
                ),
            ),
            id="resolution-reply",
        ),
        pytest.param(
            _message_golden(4, 0x8000, cie_bytes(14, 32, 1400, 7200)),
            Message(
                type=PacketType.REGISTRATION_REPLY,
                flags=RegistrationFlag.UNIQUE,
                cies=(CIE(code=CIECode.UNIQUE_ADDRESS_REGISTERED, prefix_length=32, mtu=1400, holding_time=7200),),
            ),
            id="registration-reply-unique-conflict",
        ),
        pytest.param(
            _message_golden(5, 0x8000, cie_bytes(0, 16, 0, 0, (b"", ip("10.20.0.0")))),
            Message(
                type=PacketType.PURGE_REQUEST,
                flags=PurgeFlag.NO_REPLY,
                cies=(CIE(prefix_length=16, client_protocol=IPv4Address("10.20.0.0")),),
            ),
            id="purge-request",
        ),
        pytest.param(
            _message_golden(
                6,
                0,
                cie_bytes(0, 16, 0, 0, (b"", ip("10.20.0.0"))),
                ext(8, b"\x00\x00\x0c" + b"cisco", compulsory=False) + ext(0x1234, b"\x01\x02", compulsory=False),
            ),
            Message(
                type=PacketType.PURGE_REPLY,
                cies=(CIE(prefix_length=16, client_protocol=IPv4Address("10.20.0.0")),),
                extensions=(
                    VendorPrivate(vendor_id=0x00000C, data=b"cisco"),
                    UnknownExtension(type=0x1234, data=b"\x01\x02"),
                ),
            ),
            id="purge-reply-vendor-and-unknown",
        ),
    ],
)
def test_message_goldens(golden: bytes, model: Message) -> None:
    full = Message(
        type=model.type,
        flags=model.flags,
        request_id=77,
        src_nbma=SPOKE_NBMA,
        src_protocol=SPOKE,
        dst_protocol=IPv4Address("172.16.0.20"),
        cies=model.cies,
        extensions=model.extensions,
    )
    assert encode(full) == golden
    assert decode(golden) == full


IPV4_DATA_HEADER = bytes.fromhex("45000054abcd40003f01") + b"\x00\x00" + ip("10.10.0.5") + ip("10.20.0.5")


def test_traffic_indication_golden() -> None:
    # Mandatory part: lengths, 2 unused bytes, traffic code (16), 2 unused bytes, addresses, data packet.
    mandatory = (
        bytes([4, 4])
        + b"\x00\x00"
        + b"\x00\x00"
        + b"\x00\x00"
        + ip("192.0.2.1")
        + ip("172.16.0.1")
        + ip("10.10.0.5")
        + IPV4_DATA_HEADER
    )
    golden = assemble(8, mandatory, ext(7, b"\x00\x00\x00\x01pw", compulsory=True) + END, hop_count=1)
    model = TrafficIndication(
        hop_count=1,
        src_nbma=HUB_NBMA,
        src_protocol=HUB,
        dst_protocol=IPv4Address("10.10.0.5"),
        original_packet=IPV4_DATA_HEADER,
        extensions=(Authentication(data=b"pw"),),
    )
    assert encode(model) == golden
    assert decode(golden) == model


def test_error_indication_golden_carries_the_packet_in_error() -> None:
    offending = registration_request_golden()
    mandatory = (
        bytes([4, 4])
        + b"\x00\x00"  # unused
        + struct.pack("!HH", 11, 60)  # error code: authentication failure, offset
        + ip("192.0.2.1")
        + ip("172.16.0.1")
        + ip("172.16.0.10")
        + offending
    )
    golden = assemble(7, mandatory)
    model = ErrorIndication(
        error_code=ErrorCode.AUTHENTICATION_FAILURE,
        error_offset=60,
        src_nbma=HUB_NBMA,
        src_protocol=HUB,
        dst_protocol=SPOKE,
        offending_packet=offending,
    )
    assert encode(model) == golden
    assert decode(golden) == model
    assert decode(model.offending_packet) == REGISTRATION_REQUEST


def test_ipv6_protocol_addresses_follow_the_length_in_the_packet() -> None:
    src6, dst6 = IPv6Address("fd00::10"), IPv6Address("fd00::1")
    mandatory = bytes([16, 16]) + struct.pack("!HI", 0, 5) + ip("198.51.100.10") + src6.packed + dst6.packed
    golden = assemble(3, mandatory)
    golden_v6 = golden[:2] + b"\x86\xdd" + golden[4:]
    golden_v6 = golden_v6[:12] + b"\0\0" + golden_v6[14:]
    golden_v6 = golden_v6[:12] + struct.pack("!H", ones_complement(golden_v6)) + golden_v6[14:]
    packet = decode(golden_v6)
    assert isinstance(packet, Message)
    assert (packet.src_protocol, packet.dst_protocol, packet.protocol_type) == (src6, dst6, 0x86DD)
    assert encode(packet) == golden_v6


@pytest.mark.parametrize(
    ("mutate", "code", "offset"),
    [
        (lambda b: b[:19], ErrorCode.PROTOCOL_ERROR, 0),
        (lambda b: b[:16] + b"\x02" + b[17:], ErrorCode.PROTOCOL_ERROR, 16),
        (lambda b: b[:12] + b"\x00\x00" + b[14:], ErrorCode.PROTOCOL_ERROR, 12),
        (lambda b: b[:-1], ErrorCode.PROTOCOL_ERROR, 10),
    ],
    ids=["short", "version", "checksum", "size-beyond-buffer"],
)
def test_header_errors_carry_rfc_codes_and_offsets(mutate, code: ErrorCode, offset: int) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NHRPDecodeError) as caught:
        decode(mutate(registration_request_golden()))
    assert (caught.value.code, caught.value.offset) == (code, offset)


def test_unrecognized_compulsory_extension_is_error_1() -> None:
    mandatory = common(0, 1, ip("172.16.0.10"), ip("172.16.0.1"), ip("198.51.100.10"))
    golden = assemble(3, mandatory, ext(0x1234, b"", compulsory=True) + END)
    with pytest.raises(NHRPDecodeError) as caught:
        decode(golden)
    assert caught.value.code == ErrorCode.UNRECOGNIZED_EXTENSION
    assert caught.value.offset == 20 + len(mandatory)


def test_extension_longer_than_the_packet_is_error_9() -> None:
    mandatory = common(0, 1, ip("172.16.0.10"), ip("172.16.0.1"), ip("198.51.100.10"))
    golden = assemble(3, mandatory, struct.pack("!HH", 0x8003, 200))
    with pytest.raises(NHRPDecodeError) as caught:
        decode(golden)
    assert caught.value.code == ErrorCode.INVALID_EXTENSION


def test_cie_count_is_capped() -> None:
    mandatory = common(0, 1, ip("172.16.0.10"), ip("172.16.0.1"), ip("198.51.100.10"))
    golden = assemble(3, mandatory + cie_bytes(0, 32, 0, 0) * 129)
    with pytest.raises(NHRPDecodeError, match="too many CIEs"):
        decode(golden)


def test_encode_rejects_values_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match=r"format|range|requires"):
        encode(Message(type=PacketType.RESOLUTION_REQUEST, request_id=1 << 32))
