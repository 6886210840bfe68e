"""The writes a shortcut waits for (set/delete a neighbour, add/replace/delete a route), encoded here.

Everything else the data plane asks the kernel (dumps, links, addresses) goes through pyroute2
(:mod:`dmvpn.dataplane.rtnl`). These four message layouts of the stable rtnetlink ABI do not: measured in
the emulated guest, one pyroute2 write took 7-21 ms (5 ms of it to encode the message), one of these well
under 1 ms (``bench/netlink_bench.py``), and a new shortcut costs a neighbour and a route write on each
spoke, on the path that every first packet of a flow waits for.

rtnetlink handles a request inside ``send()``, so its answer is normally already queued when we read;
one lock per socket keeps concurrent writers from taking each other's answers.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network

from dmvpn.dataplane.netns import call_in_netns

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLMSG_ERROR = 2
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_NEWNEIGH = 28
RTM_DELNEIGH = 29
NDA_DST = 1
NDA_LLADDR = 2
NDA_PROTOCOL = 12
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_TABLE = 15
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255  # in a delete: any scope
RTN_UNICAST = 1
RTNH_F_ONLINK = 0x4
NUD_PERMANENT = 0x80

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port
_NDMSG = struct.Struct("=BBHiHBB")  # family, pad, pad, ifindex, state, flags, type
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_ERROR = struct.Struct("=i")
_ANSWER_TIMEOUT_S = 5.0
_CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE
_DELETE = NLM_F_REQUEST | NLM_F_ACK

Message = Callable[[int], bytes]  # sequence number -> one netlink request


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def _request(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def set_neighbour(index: int, dst: IPv4Address, lladdr: IPv4Address, proto: int) -> Message:
    """Create or replace a permanent binding ``dst`` -> NBMA ``lladdr`` (``ip neigh replace ... nud
    permanent proto P``)."""
    body = (
        _NDMSG.pack(socket.AF_INET, 0, 0, index, NUD_PERMANENT, 0, 0)
        + _attr(NDA_DST, dst.packed)
        + _attr(NDA_LLADDR, lladdr.packed)
        + _attr(NDA_PROTOCOL, bytes([proto]))
    )
    return lambda seq: _request(RTM_NEWNEIGH, _CREATE | NLM_F_REPLACE, seq, body)


def delete_neighbour(index: int, dst: IPv4Address) -> Message:
    body = _NDMSG.pack(socket.AF_INET, 0, 0, index, 0, 0, 0) + _attr(NDA_DST, dst.packed)
    return lambda seq: _request(RTM_DELNEIGH, _DELETE, seq, body)


def set_route(
    prefix: IPv4Network, via: IPv4Address | None, oif: int, metric: int, proto: int, table: int, *, replace: bool
) -> Message:
    """A unicast route in ``table`` out of ``oif``: via ``via`` (on-link: the tunnel address needs no
    connected route) or, without ``via``, on the link. ``replace=False`` fails with EEXIST if the key
    (prefix, metric) is taken, so a route that is not ours is never overwritten."""
    scope, flags = (RT_SCOPE_LINK, 0) if via is None else (RT_SCOPE_UNIVERSE, RTNH_F_ONLINK)
    attrs = _attr(RTA_DST, prefix.network_address.packed) + _u32(RTA_OIF, oif) + _u32(RTA_PRIORITY, metric)
    if via is not None:
        attrs += _attr(RTA_GATEWAY, via.packed)
    body = _RTMSG.pack(socket.AF_INET, prefix.prefixlen, 0, 0, table, proto, scope, RTN_UNICAST, flags)
    body += attrs + _u32(RTA_TABLE, table)
    mode = NLM_F_REPLACE if replace else NLM_F_EXCL
    return lambda seq: _request(RTM_NEWROUTE, _CREATE | mode, seq, body)


def delete_route(prefix: IPv4Network, oif: int | None, metric: int, proto: int, table: int) -> Message:
    """Delete the route with this key, only if its protocol is ``proto`` (and its device ``oif``)."""
    attrs = _attr(RTA_DST, prefix.network_address.packed) + _u32(RTA_PRIORITY, metric) + _u32(RTA_TABLE, table)
    if oif is not None:
        attrs += _u32(RTA_OIF, oif)
    body = _RTMSG.pack(socket.AF_INET, prefix.prefixlen, 0, 0, table, proto, RT_SCOPE_NOWHERE, 0, 0) + attrs
    return lambda seq: _request(RTM_DELROUTE, _DELETE, seq, body)


def answer_code(data: bytes, seq: int) -> int | None:
    """The errno (0: done) in the kernel's answer to request ``seq`` among the messages in ``data``;
    None if none of them answers it (an answer to an earlier, abandoned request)."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _, got_seq, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            break
        if kind == NLMSG_ERROR and got_seq == seq and offset + _NLMSGHDR.size + _ERROR.size <= len(data):
            code: int = _ERROR.unpack_from(data, offset + _NLMSGHDR.size)[0]
            return -code
        offset += (length + 3) & ~3
    return None


class RouteWriter:
    """One rtnetlink socket in one namespace (None: ours) for the writes above."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._sock: socket.socket | None = None
        self._seq = 0
        self._lock = asyncio.Lock()

    def open(self) -> None:
        if self._sock is not None:
            return
        sock = call_in_netns(self.netns, _rtnetlink_socket)
        sock.setblocking(False)
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def write(self, message: Message) -> int:
        """Send one request and return the kernel's errno for it (0: done)."""
        if self._sock is None:
            raise OSError(errno.EBADF, "the rtnetlink write socket is not open")
        sock = self._sock
        async with self._lock:
            self._seq = self._seq % 0x7FFFFFFF + 1
            seq = self._seq
            sock.send(message(seq))
            async with asyncio.timeout(_ANSWER_TIMEOUT_S):
                while True:
                    code = answer_code(await asyncio.get_running_loop().sock_recv(sock, 65536), seq)
                    if code is not None:
                        return code


def _rtnetlink_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
    except OSError:
        sock.close()
        raise
    return sock
