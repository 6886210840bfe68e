"""Packet model -> bytes. Raises ValueError for values that do not fit their wire fields."""

from __future__ import annotations

import struct

from dmvpn.nhrp.codec.checksum import internet_checksum
from dmvpn.nhrp.codec.constants import (
    ADDRESS_LENGTH_MASK,
    EXTENSION_COMPULSORY,
    EXTENSION_TYPE_MASK,
    FIXED_HEADER_LEN,
    MAX_PACKET_SIZE,
    NHRP_VERSION,
    ExtensionType,
)
from dmvpn.nhrp.codec.model import (
    CIE,
    Address,
    Authentication,
    ErrorIndication,
    Extension,
    ForwardTransitNHS,
    IndicationAnswer,
    Message,
    NATAddress,
    Packet,
    ResponderAddress,
    ReverseTransitNHS,
    UnknownExtension,
    VendorPrivate,
)

_FIXED_HEADER = struct.Struct("!HH5sBHHHBBBB")
_CIE_HEADER = struct.Struct("!BBHHHBBBB")
_EXTENSION_HEADER = struct.Struct("!HH")


def encode(packet: Packet) -> bytes:
    """Serialize a packet, computing packet size, extension offset and checksum."""
    try:
        return _encode(packet)
    except struct.error as error:  # a field value out of range for its width
        raise ValueError(str(error)) from error


def _encode(packet: Packet) -> bytes:
    mandatory = encode_mandatory_part(packet)
    extensions = encode_extensions(packet.extensions)
    size = FIXED_HEADER_LEN + len(mandatory) + len(extensions)
    if size > MAX_PACKET_SIZE:
        raise ValueError(f"NHRP packet of {size} bytes does not fit the 16-bit packet size")
    extension_offset = FIXED_HEADER_LEN + len(mandatory) if extensions else 0
    unsummed = _encode_fixed_header(packet, size, extension_offset, 0) + mandatory + extensions
    checksum = internet_checksum(unsummed)
    return unsummed[:12] + checksum.to_bytes(2, "big") + unsummed[14:]


def _encode_fixed_header(packet: Packet, size: int, extension_offset: int, checksum: int) -> bytes:
    nbma = address_bytes(packet.src_nbma)
    if len(packet.snap) != 5:
        raise ValueError("the SNAP protocol type is 5 bytes")
    return _FIXED_HEADER.pack(
        packet.afn,
        packet.protocol_type,
        packet.snap,
        packet.hop_count,
        size,
        checksum,
        extension_offset,
        NHRP_VERSION,
        packet.packet_type,
        _type_length(nbma),
        _type_length(packet.src_nbma_subaddress),
    )


def encode_mandatory_part(packet: Packet) -> bytes:
    """Common mandatory part: lengths, flags, request ID (or code/offset), addresses, then the body."""
    src_protocol = address_bytes(packet.src_protocol)
    dst_protocol = address_bytes(packet.dst_protocol)
    if isinstance(packet, Message):
        word = struct.pack("!HI", packet.flags, packet.request_id)
        body = b"".join(encode_cie(cie) for cie in packet.cies)
    elif isinstance(packet, ErrorIndication):
        word = struct.pack("!HHH", 0, packet.error_code, packet.error_offset)
        body = packet.offending_packet
    else:
        word = struct.pack("!HHH", 0, packet.traffic_code, 0)
        body = packet.original_packet
    return b"".join(
        (
            struct.pack("!BB", len(src_protocol), len(dst_protocol)),
            word,
            address_bytes(packet.src_nbma),
            packet.src_nbma_subaddress,
            src_protocol,
            dst_protocol,
            body,
        )
    )


def encode_cie(cie: CIE) -> bytes:
    nbma = address_bytes(cie.client_nbma)
    protocol = address_bytes(cie.client_protocol)
    header = _CIE_HEADER.pack(
        cie.code,
        cie.prefix_length,
        0,
        cie.mtu,
        cie.holding_time,
        _type_length(nbma),
        _type_length(cie.client_nbma_subaddress),
        len(protocol),
        cie.preference,
    )
    return header + nbma + cie.client_nbma_subaddress + protocol


def encode_extensions(extensions: tuple[Extension, ...]) -> bytes:
    """All extensions followed by the End extension; empty when there are none (extension offset 0)."""
    if not extensions:
        return b""
    encoded = [encode_extension(extension) for extension in extensions]
    encoded.append(_extension_header(ExtensionType.END, compulsory=True, length=0))
    return b"".join(encoded)


def encode_extension(extension: Extension) -> bytes:
    ext_type = _extension_type(extension)
    body = _extension_body(extension)
    return _extension_header(ext_type, compulsory=extension.compulsory, length=len(body)) + body


def _extension_type(extension: Extension) -> int:
    if isinstance(extension, UnknownExtension):
        if extension.type in set(ExtensionType):
            raise ValueError(f"extension type {extension.type} has its own class")
        return extension.type
    return extension.TYPE


def _extension_body(extension: Extension) -> bytes:
    if isinstance(extension, ResponderAddress | ForwardTransitNHS | ReverseTransitNHS | NATAddress | IndicationAnswer):
        return b"".join(encode_cie(cie) for cie in extension.cies)
    if isinstance(extension, Authentication):
        return struct.pack("!I", extension.spi) + extension.data
    if isinstance(extension, VendorPrivate):
        if not 0 <= extension.vendor_id <= 0xFFFFFF:
            raise ValueError("the vendor ID is a 24-bit OUI")
        return extension.vendor_id.to_bytes(3, "big") + extension.data
    return extension.data


def _extension_header(ext_type: int, *, compulsory: bool, length: int) -> bytes:
    if not 0 <= ext_type <= EXTENSION_TYPE_MASK:
        raise ValueError(f"extension type {ext_type} does not fit 14 bits")
    return _EXTENSION_HEADER.pack(ext_type | (EXTENSION_COMPULSORY if compulsory else 0), length)


def address_bytes(address: Address | None) -> bytes:
    return b"" if address is None else address.packed


def _type_length(value: bytes) -> int:
    """An address type/length octet: NSAP-format type (0) and the length in the low six bits."""
    if len(value) > ADDRESS_LENGTH_MASK:
        raise ValueError(f"an NBMA address or subaddress of {len(value)} bytes does not fit 6 bits")
    return len(value)
