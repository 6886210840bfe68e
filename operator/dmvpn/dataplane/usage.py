"""Traffic this node sends to each NBMA peer, for the idle expiry of shortcuts that no SA counts (IPsec off).

With IPsec, a shortcut's SA counts its bytes and the agent reads them from charon. Without it nothing in the
kernel does: a permanent neighbour's ``used`` time is not refreshed on the fast path, and routes have no
counters. So a chain on the output hook counts the GRE packets we send from our NBMA address, per
destination, in a dynamic set whose elements carry counters (``update @set { ip daddr }``): one set lookup
per packet, no NFLOG, no copy to user space. The agent reads the set's elements at each sample and treats a changed
byte count as activity, exactly as it does with SA counters.

Ownership: chain ``config.chain`` and set ``<chain>_peers`` in ``table inet <config.table>`` (shared with the
hub's hairpin chain, never flushed). The rule's comment carries a fingerprint of its configuration, so
installing the same configuration again reads and writes nothing else. Elements not refreshed for
:data:`SET_TIMEOUT` leave the set (its size stays bounded by the peers actually in use).
"""

from __future__ import annotations

from ipaddress import IPv4Address

from dmvpn.dataplane.nft import OwnedChain, rule_marker
from dmvpn.dataplane.nftcount import element_counters
from dmvpn.dataplane.types import UsageConfig

FAMILY = "inet"
SET_TIMEOUT = "1h"
SET_SIZE = 65535


def set_name(config: UsageConfig) -> str:
    return f"{config.chain}_peers"


def rule_body(config: UsageConfig) -> str:
    """The rule without its comment: GRE we send from our NBMA address, counted per destination."""
    return f"meta nfproto ipv4 ip saddr {config.local} ip protocol gre update @{set_name(config)} {{ ip daddr }}"


def marker(config: UsageConfig) -> str:
    """The comment that identifies our rule and the configuration it was made from."""
    return rule_marker("dmvpn-usage", rule_body(config))


def owned(config: UsageConfig) -> OwnedChain:
    return OwnedChain(FAMILY, config.table, config.chain, set_name(config))


def render_ruleset(config: UsageConfig, *, chain_exists: bool = False, set_exists: bool = False) -> str:
    """The nft script that (re)writes our chain and set and nothing else (pure; unit-tested)."""
    set_spec = f"type ipv4_addr; size {SET_SIZE}; flags dynamic,timeout; timeout {SET_TIMEOUT}; counter;"
    return owned(config).script(
        set_spec, "output", rule_body(config), marker(config), chain_exists=chain_exists, set_exists=set_exists
    )


async def install_usage_counter(config: UsageConfig, *, netns: str | None = None) -> bool:
    """Install or update our chain and set atomically; True if it changed anything. An unchanged
    configuration keeps the set, so a restarted agent keeps counting where the previous one was."""
    return await owned(config).install(
        netns, marker(config), lambda chain, named_set: render_ruleset(config, chain_exists=chain, set_exists=named_set)
    )


async def remove_usage_counter(config: UsageConfig, *, netns: str | None = None) -> bool:
    """Remove our chain and set (and the table if nothing else is left in it). False if nothing was there."""
    return await owned(config).remove(netns)


async def usage_by_peer(config: UsageConfig, *, netns: str | None = None) -> dict[IPv4Address, int] | None:
    """Bytes sent so far to each NBMA peer, or None if our set is not there (not installed yet). Read over
    netlink (:mod:`dmvpn.dataplane.nftcount`): sampled every few seconds, an ``nft`` run would cost more CPU
    than everything else the agent does meanwhile."""
    found = await element_counters(FAMILY, config.table, set_name(config), netns=netns)
    return None if found is None else {address: counter.bytes for address, counter in found.items()}
