"""The per-peer traffic counter (idle expiry without IPsec): rendering (pure), and with real
``nft`` in a namespace: idempotent install beside the hairpin chain, GRE we send counted per destination
(raw GRE out of a veth: nftables works on this host's kernel, GRE devices do not)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from dmvpn.dataplane import (
    HairpinConfig,
    UsageConfig,
    install_hairpin_rule,
    install_usage_counter,
    remove_hairpin_rule,
    remove_usage_counter,
    usage_by_peer,
)
from dmvpn.dataplane.usage import marker, render_ruleset, rule_body

LOCAL, PEER, OTHER = IPv4Address("192.0.2.11"), IPv4Address("192.0.2.12"), IPv4Address("192.0.2.13")


def test_rule_counts_gre_from_our_nbma_per_destination() -> None:
    body = rule_body(UsageConfig(LOCAL))
    assert body == "meta nfproto ipv4 ip saddr 192.0.2.11 ip protocol gre update @usage_peers { ip daddr }"
    script = render_ruleset(UsageConfig(LOCAL), chain_exists=True, set_exists=True)
    assert "flush ruleset" not in script and "delete table" not in script
    assert "delete chain inet dmvpn usage" in script and "counter; }" in script and "hook output" in script
    assert marker(UsageConfig(LOCAL)) != marker(UsageConfig(PEER))


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"dpuse-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for command in (
            ["ip", "link", "add", "under0", "type", "veth", "peer", "name", "far0"],
            ["ip", "addr", "add", f"{LOCAL}/24", "dev", "under0"],
            ["ip", "link", "set", "under0", "up"],
            ["ip", "link", "set", "far0", "up"],
        ):
            subprocess.run(["ip", "netns", "exec", name, *command], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


SEND_GRE = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_GRE)
for _ in range(int(sys.argv[2])):
    sock.sendto(bytes.fromhex("00000800") + bytes(100), (sys.argv[1], 0))
"""


def send_gre(netns: str, to: IPv4Address, count: int) -> None:
    """Raw GRE from LOCAL inside the namespace (nobody answers on the veth's far end)."""
    command = ["ip", "netns", "exec", netns, sys.executable, "-I", "-S", "-c", SEND_GRE, str(to), str(count)]
    subprocess.run(command, check=True, timeout=30)


async def test_gre_we_send_is_counted_per_peer_and_install_is_idempotent(netns: str) -> None:
    config = UsageConfig(LOCAL)
    assert await usage_by_peer(config, netns=netns) is None, "not installed: no sample, not an error"
    await install_hairpin_rule(HairpinConfig("gre1"), netns=netns)  # shares the table: both must survive
    assert await install_usage_counter(config, netns=netns) is True
    assert await install_usage_counter(config, netns=netns) is False
    assert await usage_by_peer(config, netns=netns) == {}
    send_gre(netns, PEER, 3)
    send_gre(netns, OTHER, 1)
    first = await usage_by_peer(config, netns=netns)
    assert first is not None and set(first) == {PEER, OTHER}
    assert first[PEER] == 3 * first[OTHER] > 0
    send_gre(netns, PEER, 2)
    second = await usage_by_peer(config, netns=netns)
    assert second is not None and second[PEER] > first[PEER] and second[OTHER] == first[OTHER]
    assert await install_usage_counter(config, netns=netns) is False, "a restart keeps the counts"
    assert await usage_by_peer(config, netns=netns) == second
    listing = nft_list(netns)
    assert "chain hairpin" in listing and "chain usage" in listing


def nft_list(netns: str) -> str:
    command = ["ip", "netns", "exec", netns, "nft", "list", "table", "inet", "dmvpn"]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


async def test_remove_takes_our_chain_and_set_and_the_table_only_when_nothing_else_is_in_it(netns: str) -> None:
    config = UsageConfig(LOCAL)
    await install_hairpin_rule(HairpinConfig("gre1"), netns=netns)
    await install_usage_counter(config, netns=netns)
    assert await remove_usage_counter(config, netns=netns) is True
    assert await remove_usage_counter(config, netns=netns) is False
    left = nft_list(netns)
    assert "chain hairpin" in left and "usage" not in left
    await remove_hairpin_rule(HairpinConfig("gre1"), netns=netns)
    await install_usage_counter(config, netns=netns)
    assert await remove_usage_counter(config, netns=netns) is True
    assert "dmvpn" not in nft_ruleset(netns), "our table goes with our last chain"


def nft_ruleset(netns: str) -> str:
    command = ["ip", "netns", "exec", netns, "nft", "list", "ruleset"]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout
