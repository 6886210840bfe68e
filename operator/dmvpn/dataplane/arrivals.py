"""The first GRE packet that arrives under each new inbound SA, logged to NFLOG.

Why: a spoke that only answered a peer's IKE exchange has its CHILD_SA before the initiator does (charon
installs the responder's SAs before it sends the last IKE_AUTH message). What the responder routes into the
SA at once can reach the initiator before the initiator can decrypt it. The first packet the initiator sends
over the SA proves it can: the agent routes over the SA when it sees that packet. Reading the SA's counters
from charon every few ms does the same, slowly (each ``list-sas`` waits for charon while it is busiest).

The chain, on the input hook, sees GRE after xfrm decrypted it (``meta ipsec exists``) and logs a packet only
when its (source, inbound SPI) pair is not in our set yet, adding it: one log per SA, whatever the traffic,
and a new SA to the same peer (a new SPI) logs again. The set's elements time out after an hour (longer
than an SA lives without a rekey, which brings a new SPI anyway); a full set adds and logs nothing, and the
agent's bounded wait covers that.

Ownership: chain ``config.chain`` and set ``<chain>_sas`` in ``table inet <config.table>`` (shared with the
hairpin and usage chains, never flushed). The rule's comment carries a fingerprint of its configuration.
"""

from __future__ import annotations

from dmvpn.dataplane.nft import OwnedChain, rule_marker
from dmvpn.dataplane.types import ArrivalsConfig

FAMILY = "inet"
SET_TIMEOUT = "1h"
SET_SIZE = 65535
SNAPLEN = 20  # the IP header: the agent reads only the source address


def set_name(config: ArrivalsConfig) -> str:
    return f"{config.chain}_sas"


def rule_body(config: ArrivalsConfig) -> str:
    """The rule without its comment."""
    key = "ip saddr . ipsec in spi"
    return (
        f"meta nfproto ipv4 ip daddr {config.local} ip protocol gre meta secpath exists "
        f"{key} != @{set_name(config)} add @{set_name(config)} {{ {key} }} "
        f"log group {config.group} snaplen {SNAPLEN} queue-threshold 1"
    )


def marker(config: ArrivalsConfig) -> str:
    """The comment that identifies our rule and the configuration it was made from."""
    return rule_marker("dmvpn-arrivals", rule_body(config))


def owned(config: ArrivalsConfig) -> OwnedChain:
    return OwnedChain(FAMILY, config.table, config.chain, set_name(config))


def render_ruleset(config: ArrivalsConfig, *, chain_exists: bool = False, set_exists: bool = False) -> str:
    """The nft script that (re)writes our chain and set and nothing else (pure; unit-tested)."""
    set_spec = f"typeof ip saddr . ipsec in spi; size {SET_SIZE}; flags dynamic,timeout; timeout {SET_TIMEOUT};"
    return owned(config).script(
        set_spec, "input", rule_body(config), marker(config), chain_exists=chain_exists, set_exists=set_exists
    )


async def install_arrivals_rule(config: ArrivalsConfig, *, netns: str | None = None) -> bool:
    """Install or update our chain and set atomically; True if it changed anything. An unchanged
    configuration keeps the set, so a restarted agent is not told again about SAs it already knew."""
    return await owned(config).install(
        netns, marker(config), lambda chain, named_set: render_ruleset(config, chain_exists=chain, set_exists=named_set)
    )


async def remove_arrivals_rule(config: ArrivalsConfig, *, netns: str | None = None) -> bool:
    """Remove our chain and set (and the table if nothing else is left in it). False if nothing was there."""
    return await owned(config).remove(netns)
