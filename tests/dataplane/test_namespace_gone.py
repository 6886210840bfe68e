"""Every entry point says clearly that a namespace is gone, and none of them creates it."""

from __future__ import annotations

import os
from ipaddress import IPv4Address, IPv4Interface

import pytest

from dmvpn.dataplane import (
    Dataplane,
    HairpinConfig,
    NamespaceGone,
    NflogReader,
    SolicitationListener,
    TunnelConfig,
    install_hairpin_rule,
    remove_hairpin_rule,
)

GONE = "dmvpn-test-no-such-netns"
CONFIG = TunnelConfig("gre1", IPv4Address("192.0.2.1"), "eth0", IPv4Interface("10.255.0.1/24"))


async def test_dataplane() -> None:
    with pytest.raises(NamespaceGone):
        async with Dataplane(CONFIG, netns=GONE):
            pass


async def test_listeners() -> None:
    with pytest.raises(NamespaceGone):
        async with NflogReader(1, netns=GONE):
            pass
    with pytest.raises(NamespaceGone):
        async with SolicitationListener("gre1", netns=GONE):
            pass


async def test_nftables_and_nothing_created() -> None:
    with pytest.raises(NamespaceGone):
        await install_hairpin_rule(HairpinConfig("gre1"), netns=GONE)
    with pytest.raises(NamespaceGone):
        await remove_hairpin_rule(HairpinConfig("gre1"), netns=GONE)
    assert not exists(f"/run/netns/{GONE}")


def exists(path: str) -> bool:
    return os.path.exists(path)
