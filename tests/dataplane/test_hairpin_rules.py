"""The nftables hairpin chain: rendering (pure) and install/idempotence/coexistence with real ``nft`` in a
namespace (nftables works on this host's kernel, so these are plain tests)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest

from dmvpn.dataplane import HairpinConfig, install_hairpin_rule, remove_hairpin_rule
from dmvpn.dataplane.hairpin import marker, render_ruleset, rule_body


def test_rule_matches_in_and_out_of_the_mgre_rate_limited_to_nflog() -> None:
    body = rule_body(HairpinConfig("gre1", group=3))
    assert body.startswith('iifname "gre1" oifname "gre1"')
    assert "ip saddr & 255.255.255.0 . ip daddr & 255.255.255.0 limit rate 4/minute burst 1 packets" in body
    assert body.endswith("log group 3 snaplen 128 queue-threshold 1")
    assert "ip saddr . ip daddr limit" in rule_body(HairpinConfig("gre1", prefixlen=32))


def test_script_rewrites_only_our_chain_and_set() -> None:
    config = HairpinConfig("gre1")
    fresh = render_ruleset(config)
    assert "flush ruleset" not in fresh and "delete table" not in fresh and "flush table" not in fresh
    assert "delete chain" not in fresh and fresh.startswith("add table inet dmvpn\n")
    update = render_ruleset(config, chain_exists=True, set_exists=True)
    assert "delete chain inet dmvpn hairpin" in update and "delete set inet dmvpn hairpin_pairs" in update
    assert marker(config) in update and marker(config) != marker(HairpinConfig("gre1", group=2))


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"dphp-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def nft(netns: str, *args: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", netns, "nft", *args], check=True, capture_output=True, text=True
    ).stdout


async def test_install_is_idempotent_updates_and_leaves_other_chains(netns: str) -> None:
    # Someone else's chain in the same table, and another table: both must survive everything we do.
    nft(netns, "add table inet dmvpn")
    nft(netns, "add chain inet dmvpn guard { type filter hook input priority 0; policy accept; }")
    nft(netns, "add rule inet dmvpn guard meta l4proto gre counter")
    nft(netns, "add table inet other")
    config = HairpinConfig("gre1", group=1)
    assert await install_hairpin_rule(config, netns=netns) is True
    first = nft(netns, "list", "ruleset")
    assert await install_hairpin_rule(config, netns=netns) is False
    assert nft(netns, "list", "ruleset") == first
    assert 'iifname "gre1" oifname "gre1"' in first and "log group 1 snaplen 128 queue-threshold 1" in first

    assert await install_hairpin_rule(HairpinConfig("gre1", group=2), netns=netns) is True
    updated = nft(netns, "list", "ruleset")
    assert "log group 2" in updated and "log group 1" not in updated
    assert updated.count("chain hairpin") == 1 and "chain guard" in updated and "table inet other" in updated

    assert await remove_hairpin_rule(config, netns=netns) is True
    assert await remove_hairpin_rule(config, netns=netns) is False
    left = nft(netns, "list", "ruleset")
    assert "hairpin" not in left and "chain guard" in left and "table inet other" in left


async def test_remove_deletes_our_table_when_nothing_else_is_in_it(netns: str) -> None:
    config = HairpinConfig("gre1")
    await install_hairpin_rule(config, netns=netns)
    assert await remove_hairpin_rule(config, netns=netns) is True
    assert "dmvpn" not in nft(netns, "list", "ruleset")
