"""Phase 3 redirect trigger on a hub: an nftables chain that logs hairpinned packets to NFLOG.

A packet forwarded in and out of the mGRE device went spoke -> hub -> spoke: the hub should send the
source a Traffic Indication. The chain logs such packets, rate-limited per (source, destination) pair
(masked to ``prefixlen``, FRR: /24) to ``rate_per_minute`` with ``burst``, to an NFLOG group that
:class:`dmvpn.dataplane.nflog.NflogReader` reads. ``queue-threshold 1``: the kernel sends each packet
at once instead of batching for ~1 s.

Ownership: we own chain ``config.chain`` and set ``<chain>_pairs`` in ``table inet <config.table>``.
The table may hold other chains (it is created if missing, never flushed); the IPsec guard uses its own
table (``inet dmvpn_ipsec``). The installed rule carries a comment with a fingerprint of its
configuration, so re-installing the same configuration reads and writes nothing else.
"""

from __future__ import annotations

from ipaddress import IPv4Network

from dmvpn.dataplane.nft import OwnedChain, rule_marker
from dmvpn.dataplane.types import HairpinConfig

FAMILY = "inet"
SET_TIMEOUT = "1m"
SET_SIZE = 65535


def set_name(config: HairpinConfig) -> str:
    return f"{config.chain}_pairs"


def _masked(selector: str, prefixlen: int) -> str:
    if prefixlen == 32:
        return selector
    return f"{selector} & {IPv4Network(f'0.0.0.0/{prefixlen}').netmask}"


def rule_body(config: HairpinConfig) -> str:
    """The rule without its comment."""
    key = f"{_masked('ip saddr', config.prefixlen)} . {_masked('ip daddr', config.prefixlen)}"
    name = config.ifname
    return (
        f'iifname "{name}" oifname "{name}" meta nfproto ipv4 '
        f"update @{set_name(config)} {{ {key} limit rate {config.rate_per_minute}/minute "
        f"burst {config.burst} packets }} "
        f"log group {config.group} snaplen {config.snaplen} queue-threshold 1"
    )


def marker(config: HairpinConfig) -> str:
    """The comment that identifies our rule and the configuration it was made from."""
    return rule_marker("dmvpn-hairpin", rule_body(config))


def owned(config: HairpinConfig) -> OwnedChain:
    return OwnedChain(FAMILY, config.table, config.chain, set_name(config))


def render_ruleset(config: HairpinConfig, *, chain_exists: bool = False, set_exists: bool = False) -> str:
    """The nft script that (re)writes our chain and set and nothing else (pure; unit-tested)."""
    set_spec = f"type ipv4_addr . ipv4_addr; size {SET_SIZE}; flags dynamic,timeout; timeout {SET_TIMEOUT};"
    return owned(config).script(
        set_spec, "forward", rule_body(config), marker(config), chain_exists=chain_exists, set_exists=set_exists
    )


async def install_hairpin_rule(config: HairpinConfig, *, netns: str | None = None) -> bool:
    """Install or update our chain atomically (``nft -f -``); True if it changed anything.

    Only our chain and our set in table ``inet <config.table>`` are (re)written; other chains in the
    same table and the rest of the ruleset are never flushed.
    """
    return await owned(config).install(
        netns, marker(config), lambda chain, named_set: render_ruleset(config, chain_exists=chain, set_exists=named_set)
    )


async def remove_hairpin_rule(config: HairpinConfig, *, netns: str | None = None) -> bool:
    """Remove our chain and set (and the table if nothing else is left in it). False if nothing was there."""
    return await owned(config).remove(netns)
