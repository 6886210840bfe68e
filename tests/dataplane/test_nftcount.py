"""Reading nftables counters over netlink: the answer framing (pure), and rule and set-element counters
from real ``nft`` objects in a namespace (nftables works on this host's kernel)."""

from __future__ import annotations

import errno
import struct
import subprocess
import uuid
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from dmvpn.dataplane import Counter, DataplaneError, element_counters, rule_counters
from dmvpn.dataplane.nftcount import NLMSG_DONE, NLMSG_ERROR, error_code, split_answer

HEADER = struct.Struct("=IHHII")
NEAR, FAR, OTHER = IPv4Address("192.0.2.1"), IPv4Address("192.0.2.5"), IPv4Address("192.0.2.6")


def message(kind: int, seq: int, payload: bytes = b"") -> bytes:
    body = HEADER.pack(HEADER.size + len(payload), kind, 0, seq, 0) + payload
    return body + bytes(-len(body) % 4)


def test_only_the_answers_to_our_request_are_taken() -> None:
    data = message(16, 7, b"\x01\x00\x00\x00") + message(16, 8, b"xy") + message(NLMSG_DONE, 8)
    assert [kind for kind, _ in split_answer(data, 8)] == [16, NLMSG_DONE]
    assert list(split_answer(data, 9)) == []


def test_a_truncated_answer_is_an_error_not_a_short_read() -> None:
    whole = message(16, 1, bytes(8))
    with pytest.raises(DataplaneError, match="truncated"):
        list(split_answer(whole[:-4], 1))
    with pytest.raises(DataplaneError, match="truncated"):
        error_code(message(NLMSG_ERROR, 1))


def test_the_errno_of_an_error_answer() -> None:
    assert error_code(message(NLMSG_ERROR, 1, struct.pack("=i", -errno.ENOENT))) == errno.ENOENT
    assert error_code(message(NLMSG_ERROR, 1, struct.pack("=i", 0))) == 0


RULESET = """
table inet count_test {
  set seen { type ipv4_addr; size 16; flags dynamic,timeout; timeout 1h; counter; }
  chain output {
    type filter hook output priority 0; policy accept;
    ip daddr 192.0.2.0/24 update @seen { ip daddr }
    ip daddr 192.0.2.5 counter comment "to far"
    ip daddr 192.0.2.6 counter
    ip daddr 192.0.2.7 comment "no counter"
  }
}
"""


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"nftcount-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for command in (["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", f"{NEAR}/24", "dev", "lo"]):
            subprocess.run(["ip", "netns", "exec", name, *command], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def apply(netns: str, script: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=script, text=True, check=True, timeout=30)


def ping(netns: str, to: IPv4Address, count: int) -> None:
    argv = ["ip", "netns", "exec", netns, "ping", "-q", "-c", str(count), "-i", "0.2", "-W", "1", str(to)]
    subprocess.run(argv, check=False, capture_output=True, timeout=30)


async def test_counters_of_rules_and_set_elements_follow_the_traffic(netns: str) -> None:
    assert await rule_counters("inet", "count_test", netns=netns) is None, "no table yet: nothing to read"
    assert await element_counters("inet", "count_test", "seen", netns=netns) is None
    apply(netns, RULESET)
    assert await rule_counters("inet", "count_test", netns=netns) == {"to far": Counter(0, 0)}
    assert await element_counters("inet", "count_test", "seen", netns=netns) == {}

    ping(netns, FAR, 3)  # lo answers: 3 requests and 3 replies leave through output
    ping(netns, OTHER, 1)
    rules = await rule_counters("inet", "count_test", netns=netns)
    assert rules == {"to far": Counter(3, 3 * 84)}, "only the commented, counted rule; IPv4 + ICMP + 56 bytes"
    seen = await element_counters("inet", "count_test", "seen", netns=netns)
    assert seen == {FAR: Counter(3, 3 * 84), OTHER: Counter(1, 84), NEAR: Counter(4, 4 * 84)}
    assert await element_counters("inet", "count_test", "missing", netns=netns) is None
    with pytest.raises(DataplaneError, match="family"):
        await rule_counters("bridge", "count_test", netns=netns)
