"""Counters of our nftables objects, read over netlink (one dump) instead of running ``nft -j list``.

The agent samples counters every few seconds (the IPsec guard's drops; without IPsec, the bytes sent to
each peer for idle expiry). Measured in the emulated guest, one ``nft`` run cost about 160 ms of CPU and
the fork of the agent blocked its event loop for 16-37 ms; with three sites sampling every 2 s, nft took
a quarter of a CPU that charon needed for IKE while a shortcut formed. A dump of one table's rules (or one
set's elements) over NETLINK_NETFILTER is one request, answered within the ``send()``.

pyroute2 encodes the requests and decodes the answers (its nftables message classes); the socket is
ours, non-blocking on the event loop, opened in the target namespace like the rtnetlink write socket.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from pyroute2.netlink.nfnetlink.nftsocket import (
    NFT_MSG_GETRULE,
    NFT_MSG_GETSETELEM,
    nft_rule_msg,
    nft_set_elem_list_msg,
)

from dmvpn.dataplane.netns import call_in_netns
from dmvpn.dataplane.nflog import NETLINK_NETFILTER, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR
from dmvpn.dataplane.nflog import NLMSG_HDR as _NLMSGHDR
from dmvpn.dataplane.types import DataplaneError

NFNL_SUBSYS_NFTABLES = 10
NLM_F_DUMP = 0x300
FAMILIES = {"inet": 1, "ip": 2}  # NFPROTO_INET, NFPROTO_IPV4
_ERRNO = struct.Struct("=i")
_SEQ = 1  # one request per fresh socket
_ANSWER_TIMEOUT_S = 5.0
_RECV_BYTES = 1 << 16


@dataclass(frozen=True)
class Counter:
    packets: int
    bytes: int


def _dump_request(message: Any, kind: int, family: str, attrs: list[tuple[str, Any]]) -> bytes:
    if family not in FAMILIES:
        raise DataplaneError(f"nftables family {family!r} is not one we read ({', '.join(FAMILIES)})")
    message["header"]["type"] = (NFNL_SUBSYS_NFTABLES << 8) | kind
    message["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
    message["header"]["sequence_number"] = _SEQ
    message["nfgen_family"] = FAMILIES[family]
    message["attrs"] = attrs
    message.encode()
    return bytes(message.data)


def split_answer(data: bytes, seq: int) -> Iterator[tuple[int, bytes]]:
    """(type, whole message) of each netlink message in ``data`` that answers ``seq`` (pure). Unlike
    :func:`dmvpn.dataplane.nflog.split_messages`, which drops a malformed tail of a packet stream, a
    truncated dump answer is an error: counters read from part of a dump would be wrong, silently."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _, got_seq, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            raise DataplaneError(f"nftables dump: truncated netlink message at byte {offset}")
        if got_seq == seq:
            yield kind, data[offset : offset + length]
        offset += (length + 3) & ~3


def error_code(message: bytes) -> int:
    """The errno of an NLMSG_ERROR message (0: an acknowledgement)."""
    if len(message) < _NLMSGHDR.size + _ERRNO.size:
        raise DataplaneError("nftables dump: truncated error message")
    code: int = _ERRNO.unpack_from(message, _NLMSGHDR.size)[0]
    return -code


def _netfilter_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    try:
        sock.bind((0, 0))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def _dump(netns: str | None, request: bytes) -> list[bytes] | None:
    """The messages of one dump; None if the kernel answers ENOENT (no such table or set)."""
    sock = call_in_netns(netns, _netfilter_socket)
    found: list[bytes] = []
    loop = asyncio.get_running_loop()
    try:
        sock.send(request)
        async with asyncio.timeout(_ANSWER_TIMEOUT_S):
            while True:
                for kind, message in split_answer(await loop.sock_recv(sock, _RECV_BYTES), _SEQ):
                    if kind == NLMSG_DONE:
                        return found
                    if kind == NLMSG_ERROR:
                        code = error_code(message)
                        if code == errno.ENOENT:
                            return None
                        raise DataplaneError(f"nftables dump refused: {errno.errorcode.get(code, code)}")
                    found.append(message)
    except TimeoutError as error:
        raise DataplaneError(f"nftables dump: no answer within {_ANSWER_TIMEOUT_S} s") from error
    finally:
        sock.close()


def _counter_of(expressions: Any) -> Counter | None:
    for expression in expressions or []:
        if expression.get_attr("NFTA_EXPR_NAME") == "counter":
            data = expression.get_attr("NFTA_EXPR_DATA")
            return Counter(
                int(data.get_attr("NFTA_COUNTER_PACKETS") or 0), int(data.get_attr("NFTA_COUNTER_BYTES") or 0)
            )
    return None


def parse_rule_counters(messages: list[bytes]) -> dict[str, Counter]:
    """Rule comment -> counter, for the rules in a GETRULE dump that have both (pure)."""
    found: dict[str, Counter] = {}
    for raw in messages:
        rule = nft_rule_msg(raw)
        rule.decode()
        comment = rule.get_attr("NFTA_RULE_USERDATA")
        counter = _counter_of(rule.get_attr("NFTA_RULE_EXPRESSIONS"))
        if comment and counter is not None:
            found[str(comment)] = counter
    return found


async def rule_counters(family: str, table: str, *, netns: str | None = None) -> dict[str, Counter] | None:
    """Comment -> counter of each counted, commented rule in ``family table``; None if the table has no rule
    (the kernel answers a dump filtered by a missing table with nothing, not with ENOENT)."""
    request = _dump_request(nft_rule_msg(), NFT_MSG_GETRULE, family, [("NFTA_RULE_TABLE", table)])
    messages = await _dump(netns, request)
    return parse_rule_counters(messages) if messages else None


def parse_element_counters(messages: list[bytes]) -> dict[IPv4Address, Counter]:
    """IPv4 key -> counter of each element in a GETSETELEM dump of an ``ipv4_addr`` set (pure)."""
    found: dict[IPv4Address, Counter] = {}
    for raw in messages:
        listing = nft_set_elem_list_msg(raw)
        listing.decode()
        for element in listing.get_attr("NFTA_SET_ELEM_LIST_ELEMENTS") or []:
            key = element.get_attr("NFTA_SET_ELEM_KEY")
            value = key.get_attr("NFTA_DATA_VALUE") if key is not None else None
            expression = element.get_attr("NFTA_SET_ELEM_EXPR")
            counter = _counter_of(
                [expression] if expression is not None else element.get_attr("NFTA_SET_ELEM_EXPRESSIONS")
            )
            if isinstance(value, bytes) and len(value) == 4 and counter is not None:
                found[IPv4Address(value)] = counter
    return found


async def element_counters(
    family: str, table: str, name: str, *, netns: str | None = None
) -> dict[IPv4Address, Counter] | None:
    """Key -> counter of each element of set ``name`` in ``family table``; None if the set is absent."""
    attrs: list[tuple[str, Any]] = [("NFTA_SET_ELEM_LIST_TABLE", table), ("NFTA_SET_ELEM_LIST_SET", name)]
    request = _dump_request(nft_set_elem_list_msg(), NFT_MSG_GETSETELEM, family, attrs)
    messages = await _dump(netns, request)
    return None if messages is None else parse_element_counters(messages)
