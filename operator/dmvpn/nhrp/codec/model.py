"""The NHRP packet model: frozen dataclasses, one per wire shape.

Addresses are :mod:`ipaddress` objects whose family follows the length found in the packet (4 bytes
IPv4, 16 bytes IPv6); ``None`` is the zero-length address RFC 2332 uses for "not present".
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import ClassVar, TypeVar

from dmvpn.nhrp.codec.constants import (
    AFN_IPV4,
    AUTH_TYPE_CLEARTEXT,
    DEFAULT_HOP_COUNT,
    ETHERTYPE_IPV4,
    ExtensionType,
    PacketType,
)

Address = IPv4Address | IPv6Address


@dataclass(frozen=True, slots=True, kw_only=True)
class CIE:
    """Client Information Entry (RFC 2332 5.2.0.1)."""

    code: int = 0
    prefix_length: int = 0
    mtu: int = 0
    holding_time: int = 0
    preference: int = 0
    client_nbma: Address | None = None
    client_nbma_subaddress: bytes = b""
    client_protocol: Address | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class _CIEListExtension:
    TYPE: ClassVar[ExtensionType]
    cies: tuple[CIE, ...] = ()
    compulsory: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponderAddress(_CIEListExtension):
    TYPE: ClassVar[ExtensionType] = ExtensionType.RESPONDER_ADDRESS


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardTransitNHS(_CIEListExtension):
    TYPE: ClassVar[ExtensionType] = ExtensionType.FORWARD_TRANSIT_NHS


@dataclass(frozen=True, slots=True, kw_only=True)
class ReverseTransitNHS(_CIEListExtension):
    TYPE: ClassVar[ExtensionType] = ExtensionType.REVERSE_TRANSIT_NHS


@dataclass(frozen=True, slots=True, kw_only=True)
class NATAddress(_CIEListExtension):
    """Cisco NAT extension: CIEs mapping a protocol address to the NBMA address seen after NAT."""

    TYPE: ClassVar[ExtensionType] = ExtensionType.NAT_ADDRESS
    compulsory: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class IndicationAnswer(_CIEListExtension):
    """Ours (experimental type): in a Traffic Indication, the NHS's answer for the indicated destination,
    one CIE as in a Resolution Reply answered from a registration. Non-compulsory, so an NHC that does not
    know it ignores it and resolves as usual."""

    TYPE: ClassVar[ExtensionType] = ExtensionType.INDICATION_ANSWER
    compulsory: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Authentication:
    """Authentication extension, Cisco form: 32-bit type (1 = cleartext) then the secret."""

    TYPE: ClassVar[ExtensionType] = ExtensionType.AUTHENTICATION
    spi: int = AUTH_TYPE_CLEARTEXT
    data: bytes = b""
    compulsory: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class VendorPrivate:
    """Vendor-Private extension: a 24-bit IEEE OUI then opaque data."""

    TYPE: ClassVar[ExtensionType] = ExtensionType.VENDOR_PRIVATE
    vendor_id: int = 0
    data: bytes = b""
    compulsory: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class UnknownExtension:
    """A non-compulsory extension we do not interpret; kept so it can be forwarded unchanged."""

    type: int
    data: bytes = b""
    compulsory: bool = False


CIEListExtension = ResponderAddress | ForwardTransitNHS | ReverseTransitNHS | NATAddress | IndicationAnswer
Extension = CIEListExtension | Authentication | VendorPrivate | UnknownExtension


@dataclass(frozen=True, slots=True, kw_only=True)
class _PacketBase:
    """Fields every NHRP packet has: the fixed header and the common addresses."""

    src_nbma: Address | None = None
    src_protocol: Address | None = None
    dst_protocol: Address | None = None
    extensions: tuple[Extension, ...] = ()
    hop_count: int = DEFAULT_HOP_COUNT
    afn: int = AFN_IPV4
    protocol_type: int = ETHERTYPE_IPV4
    snap: bytes = bytes(5)
    src_nbma_subaddress: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class Message(_PacketBase):
    """Resolution, Registration and Purge requests and replies (types 1-6): flags, request ID, CIEs."""

    type: PacketType
    flags: int = 0
    request_id: int = 0
    cies: tuple[CIE, ...] = ()

    @property
    def packet_type(self) -> PacketType:
        return self.type


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorIndication(_PacketBase):
    """Error Indication (type 7): error code and offset, then the packet in error."""

    error_code: int
    error_offset: int = 0
    offending_packet: bytes = b""

    @property
    def packet_type(self) -> PacketType:
        return PacketType.ERROR_INDICATION


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficIndication(_PacketBase):
    """Traffic Indication (type 8, draft-detienne-dmvpn): traffic code, then the data packet's header."""

    traffic_code: int = 0
    original_packet: bytes = b""

    @property
    def packet_type(self) -> PacketType:
        return PacketType.TRAFFIC_INDICATION


Packet = Message | ErrorIndication | TrafficIndication

_E = TypeVar(
    "_E",
    ResponderAddress,
    ForwardTransitNHS,
    ReverseTransitNHS,
    NATAddress,
    IndicationAnswer,
    Authentication,
    VendorPrivate,
)


def find_extension(packet: Packet, kind: type[_E]) -> _E | None:
    """The first extension of the given class, or None."""
    for extension in packet.extensions:
        if isinstance(extension, kind):
            return extension
    return None


def without_extension(extensions: tuple[Extension, ...], kind: type[Extension]) -> tuple[Extension, ...]:
    return tuple(extension for extension in extensions if not isinstance(extension, kind))
