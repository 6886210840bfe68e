"""A small NFLOG (NETLINK_NETFILTER) reader: pyroute2 has none.

Wire format (linux/netfilter/nfnetlink_log.h): each message is an nlmsghdr, an nfgenmsg (family,
version, res_id = group, big-endian) and netlink attributes. Packets arrive as NFULNL_MSG_PACKET with
NFULA_PAYLOAD holding the packet from its IP header on, cut to the copy range. The builders and the
parser are pure functions over bytes (unit-tested with hand-made messages); only
:class:`NflogReader` touches a socket.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from types import TracebackType

from dmvpn.dataplane.netns import run_in_netns
from dmvpn.dataplane.types import DataplaneError, HairpinEvent

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULA_PACKET_HDR = 1
NFULA_IFINDEX_INDEV = 4
NFULA_IFINDEX_OUTDEV = 5
NFULA_PAYLOAD = 9
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_QTHRESH = 5
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED / NLA_F_NET_BYTEORDER
NLMSG_HDR = struct.Struct("=IHHII")  # length, type, flags, seq, pid (host byte order)
NLA_HDR = struct.Struct("=HH")  # length, type
NFGENMSG = struct.Struct("!BBH")  # family, version, res_id (big-endian)
NFULNL_MSG_PACKET_TYPE = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
NFULNL_MSG_CONFIG_TYPE = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
RECV_BUFFER = 1 << 20


def _align4(length: int) -> int:
    return (length + 3) & ~3


# --- building ------------------------------------------------------------------------------------


def nlattr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    length = NLA_HDR.size + len(payload)
    return NLA_HDR.pack(length, kind) + payload + b"\0" * (_align4(length) - length)


def nfnl_message(msg_type: int, group: int, attrs: bytes, seq: int, family: int = socket.AF_UNSPEC) -> bytes:
    body = NFGENMSG.pack(family, 0, group) + attrs
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def config_messages(group: int, copy_range: int) -> list[bytes]:
    """Bind ``group``, copy packets (up to ``copy_range`` bytes), and hand each packet over at once."""
    return [
        nfnl_message(NFULNL_MSG_CONFIG_TYPE, group, nlattr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND])), 1),
        nfnl_message(
            NFULNL_MSG_CONFIG_TYPE,
            group,
            nlattr(NFULA_CFG_MODE, struct.pack("!IBB", copy_range, NFULNL_COPY_PACKET, 0)),
            2,
        ),
        nfnl_message(NFULNL_MSG_CONFIG_TYPE, group, nlattr(NFULA_CFG_QTHRESH, struct.pack("!I", 1)), 3),
    ]


# --- parsing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetlinkMessage:
    type: int
    flags: int
    seq: int
    payload: bytes


def split_messages(datagram: bytes) -> Iterator[NetlinkMessage]:
    """The netlink messages in one datagram; stops at a truncated or malformed header."""
    offset = 0
    while offset + NLMSG_HDR.size <= len(datagram):
        length, msg_type, flags, seq, _pid = NLMSG_HDR.unpack_from(datagram, offset)
        if length < NLMSG_HDR.size or offset + length > len(datagram):
            return
        yield NetlinkMessage(msg_type, flags, seq, datagram[offset + NLMSG_HDR.size : offset + length])
        offset += _align4(length)


def split_attributes(data: bytes) -> dict[int, bytes]:
    """Attribute type -> payload (the last one wins); stops at a malformed attribute."""
    attrs: dict[int, bytes] = {}
    offset = 0
    while offset + NLA_HDR.size <= len(data):
        length, kind = NLA_HDR.unpack_from(data, offset)
        if length < NLA_HDR.size or offset + length > len(data):
            break
        attrs[kind & NLA_TYPE_MASK] = data[offset + NLA_HDR.size : offset + length]
        offset += _align4(length)
    return attrs


def ack_error(message: NetlinkMessage) -> int:
    """The errno of an NLMSG_ERROR (0 is an ACK)."""
    (code,) = struct.unpack_from("=i", message.payload)
    return -int(code)


def _ifindex(attrs: dict[int, bytes], kind: int) -> int | None:
    raw = attrs.get(kind)
    return struct.unpack("!I", raw[:4])[0] if raw is not None and len(raw) >= 4 else None


def event_from_payload(payload: bytes) -> HairpinEvent | None:
    """An NFULNL_MSG_PACKET body (nfgenmsg + attributes) as an event; None unless it carries IPv4."""
    if len(payload) < NFGENMSG.size:
        return None
    attrs = split_attributes(payload[NFGENMSG.size :])
    packet = attrs.get(NFULA_PAYLOAD, b"")
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    return HairpinEvent(
        src=IPv4Address(packet[12:16]),
        dst=IPv4Address(packet[16:20]),
        header=packet,
        indev=_ifindex(attrs, NFULA_IFINDEX_INDEV),
        outdev=_ifindex(attrs, NFULA_IFINDEX_OUTDEV),
    )


def parse_nflog_packet(message: bytes) -> HairpinEvent | None:
    """Decode one NFULNL_MSG_PACKET netlink message into an event; None for non-IPv4 or other messages."""
    for parsed in split_messages(message):
        if parsed.type == NFULNL_MSG_PACKET_TYPE:
            return event_from_payload(parsed.payload)
    return None


def events_in(datagram: bytes) -> list[HairpinEvent]:
    return [
        event
        for message in split_messages(datagram)
        if message.type == NFULNL_MSG_PACKET_TYPE and (event := event_from_payload(message.payload)) is not None
    ]


# --- the socket ----------------------------------------------------------------------------------


def _open_and_bind(group: int, copy_range: int, timeout_s: float) -> socket.socket:
    """Blocking (runs in the namespace): make the socket, bind the group, check every ACK."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
        sock.bind((0, 0))
        sock.settimeout(timeout_s)
        for request in config_messages(group, copy_range):
            sock.send(request)
            _expect_ack(sock, request, group)
    except BaseException:
        sock.close()
        raise
    return sock


def _expect_ack(sock: socket.socket, request: bytes, group: int) -> None:
    (_, _, _, seq, _) = NLMSG_HDR.unpack_from(request)
    for _attempt in range(16):  # bounded: packets of an already-bound group may come first
        for message in split_messages(sock.recv(65536)):
            if message.type == NLMSG_ERROR and message.seq == seq:
                code = ack_error(message)
                # The kernel answers EPERM (another port id owns the instance) or EBUSY.
                if code in (errno.EPERM, errno.EBUSY):
                    raise DataplaneError(f"NFLOG group {group} is already bound by another listener")
                if code:
                    raise DataplaneError(f"NFLOG config for group {group}: {errno.errorcode.get(code, code)}")
                return
    raise DataplaneError(f"NFLOG config for group {group}: no ACK")


class NflogReader:
    """``async with NflogReader(group=1, netns=...) as reader: async for event in reader: ...``.

    Binds the NFLOG group (copy mode packet, ``copy_range`` bytes, queue threshold 1 so nothing is
    batched) when ``__aenter__`` returns. If the socket buffer overflows (ENOBUFS), the lost events are
    counted in :attr:`overruns` and reading goes on: the rate limit makes the next packet come again.
    """

    def __init__(self, group: int, *, netns: str | None = None, copy_range: int = 128) -> None:
        self.group = group
        self.netns = netns
        self.copy_range = copy_range
        self.overruns = 0
        self._sock: socket.socket | None = None

    async def __aenter__(self) -> NflogReader:
        group, copy_range = self.group, self.copy_range
        sock = await run_in_netns(self.netns, lambda: _open_and_bind(group, copy_range, 5.0))
        sock.setblocking(False)
        self._sock = sock
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Closing the socket releases the group (the kernel drops the instance of our port id).
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __aiter__(self) -> AsyncIterator[HairpinEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[HairpinEvent]:
        loop = asyncio.get_running_loop()
        while self._sock is not None:
            try:
                datagram = await loop.sock_recv(self._sock, 65536)
            except OSError as err:
                if err.errno == errno.ENOBUFS:
                    self.overruns += 1
                    continue
                raise
            for event in events_in(datagram):
                yield event
