"""What the engine asks its driver to do or tells it happened."""

from __future__ import annotations

from dataclasses import dataclass

from dmvpn.nhrp.cache import CacheEntry, ChangeKind
from dmvpn.nhrp.codec import Address, PacketType


@dataclass(frozen=True, slots=True)
class Send:
    """Transmit ``data`` (an encoded NHRP packet) to the peer at NBMA address ``nbma``.

    ``relay``: for a Resolution Reply to a request that came through an NHS, that NHS. RFC 2332 lets a reply
    travel back along the request's path, through NHSs that pass it on, so a driver that cannot reach
    ``nbma`` yet (no SA to it) can hand the reply to the NHS instead of only holding it."""

    nbma: Address
    data: bytes
    packet_type: PacketType
    relay: Address | None = None


@dataclass(frozen=True, slots=True)
class CacheChanged:
    """A binding appeared, changed or went away; the data plane mirrors these."""

    kind: ChangeKind
    entry: CacheEntry


@dataclass(frozen=True, slots=True)
class NHSStateChanged:
    nbma: Address
    protocol: Address | None
    up: bool
    reason: str


@dataclass(frozen=True, slots=True)
class ResolutionDone:
    destination: Address
    entry: CacheEntry  # the binding covering the destination
    # The reply came from an NHS, not from the responder itself: an NHS answered, or the responder
    # handed its reply to the NHS because it cannot reach us directly yet.
    relayed: bool = False
    # An NHS answered itself (a non-authoritative reply from a registration it holds): the destination
    # never saw our request, so it knows nothing of us.
    nhs_answer: bool = False
    # The NHS whose Traffic Indication carried the answer (IndicationAnswer): no request was sent.
    indication_from: Address | None = None


@dataclass(frozen=True, slots=True)
class ResolutionFailed:
    destination: Address
    reason: str  # "timeout", "nak", "error-indication", "negative-cache", "no-nhs"
    code: int | None = None  # CIE code of a NAK, or Error Indication code


@dataclass(frozen=True, slots=True)
class NATAddressChanged:
    """Our NBMA address as an NHS sees it; None when it equals the configured one (no NAT)."""

    nbma: Address | None


Action = Send | CacheChanged | NHSStateChanged | ResolutionDone | ResolutionFailed | NATAddressChanged
