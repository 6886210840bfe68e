"""The hand-encoded rtnetlink writes, decoded by pyroute2's own message classes (the kernel's answers to
them are checked in the guest: test_kernel_tunnel.py)."""

from __future__ import annotations

import errno
import socket
import struct
from ipaddress import IPv4Address, IPv4Network

import pytest
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from dmvpn.dataplane import DataplaneError, rtwrite
from dmvpn.dataplane.rtnl import Rtnl

A = IPv4Address
OURS = 0xD5


def decoded(cls: type, data: bytes) -> dict[str, object]:
    msg = cls(data)
    msg.decode()
    assert msg["header"]["length"] == len(data)
    fields = {name: msg[name] for name, _ in cls.fields}
    fields.update({name: value for name, value in msg["attrs"]})
    fields["flags_header"] = msg["header"]["flags"]
    fields["type_header"] = msg["header"]["type"]
    fields["seq"] = msg["header"]["sequence_number"]
    return fields


def test_set_neighbour_is_a_permanent_replace_with_our_protocol() -> None:
    got = decoded(ndmsg, rtwrite.set_neighbour(7, A("10.255.0.2"), A("192.0.2.12"), OURS)(41))
    assert got["type_header"] == rtwrite.RTM_NEWNEIGH and got["seq"] == 41
    assert (
        got["flags_header"] == rtwrite.NLM_F_REQUEST | rtwrite.NLM_F_ACK | rtwrite.NLM_F_CREATE | rtwrite.NLM_F_REPLACE
    )
    assert got["family"] == socket.AF_INET and got["ifindex"] == 7 and got["state"] == rtwrite.NUD_PERMANENT
    assert got["NDA_DST"] == "10.255.0.2"
    assert got["NDA_PROTOCOL"] == OURS
    assert got["NDA_LLADDR"] == "192.0.2.12"  # a GRE device's link-layer address is the NBMA address


def test_delete_neighbour_names_the_device_and_address() -> None:
    got = decoded(ndmsg, rtwrite.delete_neighbour(7, A("10.255.0.2"))(3))
    assert got["type_header"] == rtwrite.RTM_DELNEIGH and got["ifindex"] == 7 and got["NDA_DST"] == "10.255.0.2"


def test_add_route_via_a_tunnel_address_is_onlink_and_never_replaces() -> None:
    message = rtwrite.set_route(IPv4Network("10.1.2.0/24"), A("10.255.0.2"), 7, 10, OURS, 254, replace=False)
    got = decoded(rtmsg, message(5))
    assert got["type_header"] == rtwrite.RTM_NEWROUTE
    assert got["flags_header"] & rtwrite.NLM_F_EXCL and not got["flags_header"] & rtwrite.NLM_F_REPLACE
    assert (got["dst_len"], got["table"], got["proto"], got["type"]) == (24, 254, OURS, rtwrite.RTN_UNICAST)
    assert got["scope"] == rtwrite.RT_SCOPE_UNIVERSE and got["flags"] == rtwrite.RTNH_F_ONLINK
    assert (got["RTA_DST"], got["RTA_GATEWAY"], got["RTA_OIF"], got["RTA_PRIORITY"]) == (
        "10.1.2.0",
        "10.255.0.2",
        7,
        10,
    )


def test_replace_route_on_the_link_has_link_scope_and_no_gateway() -> None:
    got = decoded(rtmsg, rtwrite.set_route(IPv4Network("10.255.0.2/32"), None, 7, 0, OURS, 254, replace=True)(6))
    assert got["flags_header"] & rtwrite.NLM_F_REPLACE and not got["flags_header"] & rtwrite.NLM_F_EXCL
    assert got["scope"] == rtwrite.RT_SCOPE_LINK and "RTA_GATEWAY" not in got and got["dst_len"] == 32


def test_delete_route_matches_any_scope_but_only_our_protocol() -> None:
    got = decoded(rtmsg, rtwrite.delete_route(IPv4Network("10.1.2.0/24"), 7, 10, OURS, 254)(8))
    assert got["type_header"] == rtwrite.RTM_DELROUTE
    assert (got["scope"], got["proto"], got["RTA_OIF"], got["RTA_PRIORITY"]) == (rtwrite.RT_SCOPE_NOWHERE, OURS, 7, 10)
    assert "RTA_OIF" not in decoded(rtmsg, rtwrite.delete_route(IPv4Network("10.1.2.0/24"), None, 0, OURS, 254)(9))


def error_message(seq: int, code: int) -> bytes:
    body = struct.pack("=i", -code) + struct.pack("=IHHII", 16, 24, 0, seq, 0)
    return struct.pack("=IHHII", 16 + len(body), rtwrite.NLMSG_ERROR, 0, seq, 0) + body


def test_answer_code_finds_the_answer_to_our_request_only() -> None:
    assert rtwrite.answer_code(error_message(5, 0), 5) == 0
    assert rtwrite.answer_code(error_message(5, 17), 5) == 17
    assert rtwrite.answer_code(error_message(4, 0), 5) is None  # an earlier request's answer
    assert rtwrite.answer_code(error_message(4, 2) + error_message(5, 0), 5) == 0
    assert rtwrite.answer_code(b"\x00" * 7, 5) is None  # truncated: no answer, no crash


class FakeWriter:
    """Answers every request with the next errno of ``codes``."""

    def __init__(self, *codes: int) -> None:
        self.codes = list(codes)

    async def write(self, message: rtwrite.Message) -> int:
        message(1)
        return self.codes.pop(0)


async def test_kernel_answers_become_outcomes_or_errors_and_every_write_counts() -> None:
    rtnl = Rtnl()
    rtnl._ipr = object()  # opened, as far as the write path is concerned
    rtnl._writer = FakeWriter(0, errno.EEXIST, errno.ENOENT, errno.EPERM)  # type: ignore[assignment]
    prefix = IPv4Network("10.1.2.0/24")
    assert await rtnl.add_route(prefix, A("10.255.0.2"), 7, 0, OURS) is True
    assert await rtnl.add_route(prefix, A("10.255.0.2"), 7, 0, OURS) is False  # the key is taken
    assert await rtnl.delete_neighbour(7, A("10.255.0.2")) is False  # not there
    with pytest.raises(DataplaneError, match=r"set neighbour 10.255.0.2 .*EPERM"):
        await rtnl.replace_neighbour(7, A("10.255.0.2"), A("192.0.2.12"), OURS)
    assert rtnl.writes == 4
    rtnl._ipr = None
    with pytest.raises(DataplaneError, match="not open"):
        await rtnl.replace_route(prefix, None, 7, 0, OURS)
