"""Who initiates the SA between two endpoints, so two spokes resolving each other build one IKE_SA.

Both spokes of a Phase 3 shortcut usually ask for the SA within milliseconds of each other (one sends a
Resolution Request, the other answers it directly). If both initiated, each charon would hold two IKE_SAs
to the same peer and, with ``unique=replace``, might delete the one the other side kept. The rule here
needs no negotiation: both ends compute the same answer from the two NBMA addresses.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from dmvpn.ipsec.types import InitiatePolicy

#: How long the endpoint that waits gives its peer before initiating itself (peer slow, or its agent
#: never asked for the SA). A real IKE_SA_INIT + IKE_AUTH takes well under a second on the Internet.
DEFAULT_FALLBACK_S = 5.0


def we_initiate(local_nbma: IPv4Address, peer_nbma: IPv4Address, policy: InitiatePolicy) -> bool:
    """True if this endpoint initiates the SA to ``peer_nbma`` now (AUTO: the lower NBMA address does)."""
    if policy in (InitiatePolicy.ALWAYS, InitiatePolicy.ONCE, InitiatePolicy.TRAP):
        return True
    if policy is InitiatePolicy.NEVER:
        return False
    if local_nbma == peer_nbma:
        raise ValueError(f"peer {peer_nbma} is our own NBMA address")
    return int(local_nbma) < int(peer_nbma)


def fallback_due(waited_s: float, sa_up: bool, fallback_s: float = DEFAULT_FALLBACK_S) -> bool:
    """True if the waiting endpoint should initiate after all: no SA arrived within ``fallback_s``."""
    return not sa_up and waited_s >= fallback_s


def keep_duplicate(local_nbma: IPv4Address, peer_nbma: IPv4Address, initiated_by_us: tuple[bool, ...]) -> int | None:
    """With several established IKE_SAs to one peer, the index of the one both ends keep when a fallback
    crossed the peer's initiation: the first one the lower NBMA address initiated. None unless both ends
    initiated one: duplicates all made by one end are a restart or a reauthentication, which charon's
    uniqueness policy and INITIAL_CONTACT resolve (keeping the old one would drop the live one)."""
    lower_is_us = int(local_nbma) < int(peer_nbma)
    if len(initiated_by_us) < 2 or len(set(initiated_by_us)) < 2:
        return None
    return initiated_by_us.index(lower_is_us)
