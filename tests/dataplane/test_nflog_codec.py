"""The NFLOG wire format, with hand-made messages (no socket, no kernel)."""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address

from hypothesis import given
from hypothesis import strategies as st

from dmvpn.dataplane.nflog import (
    NFULA_CFG_CMD,
    NFULA_CFG_MODE,
    NFULA_CFG_QTHRESH,
    NFULA_IFINDEX_INDEV,
    NFULA_IFINDEX_OUTDEV,
    NFULA_PACKET_HDR,
    NFULA_PAYLOAD,
    NFULNL_MSG_CONFIG_TYPE,
    NFULNL_MSG_PACKET_TYPE,
    NLMSG_ERROR,
    NetlinkMessage,
    ack_error,
    config_messages,
    events_in,
    nlattr,
    parse_nflog_packet,
    split_attributes,
    split_messages,
)

IP_HEADER = bytes.fromhex("4500005412344000 3f01 0000 0a01010a 0a01020a".replace(" ", ""))


def packet_message(payload: bytes, indev: int = 7, outdev: int = 7, nested_flag: int = 0) -> bytes:
    """An NFULNL_MSG_PACKET as the kernel sends it (nfgenmsg family AF_INET, group 1)."""
    attrs = (
        nlattr(NFULA_PACKET_HDR, struct.pack("!HBB", 0x0800, 2, 0))
        + nlattr(NFULA_IFINDEX_INDEV | nested_flag, struct.pack("!I", indev))
        + nlattr(NFULA_IFINDEX_OUTDEV, struct.pack("!I", outdev))
        + nlattr(NFULA_PAYLOAD, payload)
    )
    body = struct.pack("!BBH", socket.AF_INET, 0, 1) + attrs
    return struct.pack("=IHHII", 16 + len(body), NFULNL_MSG_PACKET_TYPE, 0, 0, 0) + body


def test_packet_message_decodes_to_event() -> None:
    payload = IP_HEADER + b"\x08\x00abcdefgh"
    event = parse_nflog_packet(packet_message(payload))
    assert event is not None
    assert event.src == IPv4Address("10.1.1.10") and event.dst == IPv4Address("10.1.2.10")
    assert event.header == payload and event.indev == 7 and event.outdev == 7


def test_attribute_flag_bits_are_ignored() -> None:
    event = parse_nflog_packet(packet_message(IP_HEADER, indev=3, nested_flag=0x8000))
    assert event is not None and event.indev == 3


def test_non_ipv4_short_or_other_messages_give_nothing() -> None:
    assert parse_nflog_packet(packet_message(b"\x60" + bytes(39))) is None  # IPv6
    assert parse_nflog_packet(packet_message(IP_HEADER[:19])) is None  # truncated header
    ack = struct.pack("=IHHII", 36, NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", 0) + bytes(16)
    assert parse_nflog_packet(ack) is None
    assert parse_nflog_packet(b"") is None


def test_several_messages_in_one_datagram_with_padding() -> None:
    odd = IP_HEADER + b"x"  # 21 bytes: the attribute and message need padding
    datagram = packet_message(odd) + packet_message(IP_HEADER, indev=9)
    events = events_in(datagram)
    assert [e.header for e in events] == [odd, IP_HEADER] and events[1].indev == 9


def test_truncated_datagram_stops_cleanly() -> None:
    whole = packet_message(IP_HEADER)
    assert list(split_messages(whole[:-3])) == []
    assert events_in(whole + whole[:10]) != []


def test_config_messages_bind_copy_packet_and_threshold_one() -> None:
    bind, mode, qthresh = config_messages(group=5, copy_range=128)
    for seq, raw in enumerate((bind, mode, qthresh), start=1):
        (message,) = split_messages(raw)
        assert message.type == NFULNL_MSG_CONFIG_TYPE and message.seq == seq
        assert message.flags == 0x1 | 0x4  # request + ack
        assert struct.unpack("!BBH", message.payload[:4]) == (socket.AF_UNSPEC, 0, 5)
    assert split_attributes(split_messages_one(bind).payload[4:]) == {NFULA_CFG_CMD: b"\x01"}
    assert split_attributes(split_messages_one(mode).payload[4:]) == {NFULA_CFG_MODE: struct.pack("!IBB", 128, 2, 0)}
    assert split_attributes(split_messages_one(qthresh).payload[4:]) == {NFULA_CFG_QTHRESH: struct.pack("!I", 1)}


def split_messages_one(raw: bytes) -> NetlinkMessage:
    (message,) = split_messages(raw)
    return message


def test_ack_error_reads_negative_errno() -> None:
    message = NetlinkMessage(NLMSG_ERROR, 0, 1, struct.pack("=i", -16) + bytes(16))
    assert ack_error(message) == 16


@given(st.binary(max_size=300))
def test_parser_never_raises_on_garbage(data: bytes) -> None:
    events_in(data)
    parse_nflog_packet(data)
    split_attributes(data)


@given(st.binary(min_size=20, max_size=128), st.integers(0, 2**32 - 1))
def test_any_ipv4_payload_round_trips(rest: bytes, indev: int) -> None:
    payload = b"\x45" + rest[1:]
    event = parse_nflog_packet(packet_message(payload, indev=indev))
    assert event is not None and event.header == payload and event.indev == indev
    assert event.src == IPv4Address(payload[12:16]) and event.dst == IPv4Address(payload[16:20])
