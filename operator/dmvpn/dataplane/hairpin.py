"""Phase 3 redirect trigger on a hub: an nftables chain that logs hairpinned packets to NFLOG.

A packet forwarded in and out of the mGRE device went spoke -> hub -> spoke: the hub should send the
source a Traffic Indication. The chain logs such packets, rate-limited per (source, destination) pair,
to an NFLOG group that :class:`dmvpn.dataplane.nflog.NflogReader` reads.
"""

from __future__ import annotations

from dmvpn.dataplane.types import HairpinConfig


def render_ruleset(config: HairpinConfig) -> str:
    """The nft script for our chain and set (pure; unit-tested)."""
    raise NotImplementedError


async def install_hairpin_rule(config: HairpinConfig, *, netns: str | None = None) -> bool:
    """Install or update our chain atomically (``nft -f -``); True if it changed anything.

    Only our chain and our set in table ``inet <config.table>`` are (re)written; other chains in the
    same table (e.g. the IPsec-required drop) and the rest of the ruleset are never flushed.
    """
    raise NotImplementedError


async def remove_hairpin_rule(config: HairpinConfig, *, netns: str | None = None) -> bool:
    """Remove our chain and set (and the table if it is then empty). False if nothing was there."""
    raise NotImplementedError
