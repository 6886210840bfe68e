"""nftables guard for ``ipsec.mode: required``: GRE that did not arrive in ESP is dropped (counted), and GRE
that would leave without an xfrm bundle is dropped too (never in clear on the underlay).

Our own table ``inet dmvpn_ipsec``, replaced atomically in one ``nft -f -`` transaction; nothing else in
the ruleset is read, flushed or deleted.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from dmvpn.ipsec.types import GuardCounters

GUARD_TABLE = "dmvpn_ipsec"


def render_guard(local_nbma: IPv4Address | None = None, gre_key: int | None = None) -> str:
    """The nft script that (re)creates our table: input and output chains with one counted drop rule each.

    ``local_nbma`` limits the rules to GRE to/from that address; ``gre_key`` to GRE packets with that key
    (so other GRE users on the node are left alone)."""
    raise NotImplementedError


async def install_guard(
    local_nbma: IPv4Address | None = None, gre_key: int | None = None, *, netns: str | None = None
) -> bool:
    """Install or update the guard; returns False if it was already exactly in place (nothing written)."""
    raise NotImplementedError


async def remove_guard(*, netns: str | None = None) -> bool:
    """Delete our table (mode changed to disabled); returns False if it was not there."""
    raise NotImplementedError


async def guard_counters(*, netns: str | None = None) -> GuardCounters | None:
    """Packets/bytes dropped so far, or None if the guard is not installed."""
    raise NotImplementedError


async def set_larval_drop(enabled: bool, *, netns: str | None = None) -> None:
    """``net.core.xfrm_larval_drop``: 0 queues packets hitting a trap policy while IKE runs instead of
    dropping them. Our on-demand SAs do not use trap policies, but a node that does benefits."""
    raise NotImplementedError
