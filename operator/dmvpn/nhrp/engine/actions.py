"""What the engine asks its driver to do or tells it happened."""

from __future__ import annotations

from dataclasses import dataclass

from dmvpn.nhrp.cache import CacheEntry, ChangeKind
from dmvpn.nhrp.codec import Address, PacketType


@dataclass(frozen=True, slots=True)
class Send:
    """Transmit ``data`` (an encoded NHRP packet) to the peer at NBMA address ``nbma``."""

    nbma: Address
    data: bytes
    packet_type: PacketType


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
