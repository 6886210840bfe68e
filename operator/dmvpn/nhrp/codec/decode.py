"""Untrusted bytes -> packet model.

Every failure is an :class:`NHRPDecodeError`. Every length is checked against the bytes actually
present before anything is sliced, and CIE and extension counts are capped, so a hostile packet costs
at most a linear pass over its own bytes.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from dmvpn.nhrp.codec.checksum import internet_checksum
from dmvpn.nhrp.codec.constants import (
    ADDRESS_LENGTH_MASK,
    CIE_HEADER_LEN,
    EXTENSION_COMPULSORY,
    EXTENSION_HEADER_LEN,
    EXTENSION_TYPE_MASK,
    FIXED_HEADER_LEN,
    MAX_CIES,
    MAX_EXTENSIONS,
    NHRP_VERSION,
    ErrorCode,
    ExtensionType,
    PacketType,
)
from dmvpn.nhrp.codec.errors import NHRPDecodeError
from dmvpn.nhrp.codec.model import (
    CIE,
    Address,
    Authentication,
    CIEListExtension,
    ErrorIndication,
    Extension,
    ForwardTransitNHS,
    IndicationAnswer,
    Message,
    NATAddress,
    Packet,
    ResponderAddress,
    ReverseTransitNHS,
    TrafficIndication,
    UnknownExtension,
    VendorPrivate,
)

_FIXED_HEADER = struct.Struct("!HH5sBHHHBBBB")
# code, prefix length, (reserved), MTU, holding time, NBMA/subaddress/protocol lengths, preference
_CIE_HEADER = struct.Struct("!BBxxHHBBBB")
_PACKET_TYPES = frozenset(int(member) for member in PacketType)
_CIE_LIST_EXTENSIONS: dict[int, type[CIEListExtension]] = {
    ExtensionType.RESPONDER_ADDRESS: ResponderAddress,
    ExtensionType.FORWARD_TRANSIT_NHS: ForwardTransitNHS,
    ExtensionType.REVERSE_TRANSIT_NHS: ReverseTransitNHS,
    ExtensionType.NAT_ADDRESS: NATAddress,
    ExtensionType.INDICATION_ANSWER: IndicationAnswer,
}
_OFFSET_PACKET_SIZE = 10
_OFFSET_CHECKSUM = 12
_OFFSET_EXTENSION_OFFSET = 14
_OFFSET_VERSION = 16
_OFFSET_TYPE = 17


class _Reader:
    """A cursor over ``data[pos:end]`` whose every read is bounds-checked."""

    __slots__ = ("code", "data", "end", "pos")

    def __init__(self, data: bytes, pos: int, end: int, code: ErrorCode = ErrorCode.PROTOCOL_ERROR) -> None:
        self.data = data
        self.pos = pos
        self.end = end
        self.code = code

    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, length: int, what: str) -> bytes:
        if length > self.remaining():
            raise NHRPDecodeError(self.code, self.pos, f"truncated {what}")
        value = self.data[self.pos : self.pos + length]
        self.pos += length
        return value

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big")

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "big")

    def address(self, length: int, what: str) -> Address | None:
        start = self.pos
        raw = self.take(length, what)
        return address_from_bytes(raw, start, self.code, what)

    def rest(self) -> bytes:
        return self.take(self.remaining(), "payload")


def address_from_bytes(raw: bytes, offset: int, code: ErrorCode, what: str) -> Address | None:
    if not raw:
        return None
    if len(raw) == 4:
        return IPv4Address(raw)
    if len(raw) == 16:
        return IPv6Address(raw)
    raise NHRPDecodeError(code, offset, f"unsupported {what} length {len(raw)}")


def decode(data: bytes, *, verify_checksum: bool = True) -> Packet:
    """Parse one NHRP packet (the bytes after the GRE header); trailing link-layer padding is ignored."""
    data = bytes(data)
    if len(data) < FIXED_HEADER_LEN:
        raise NHRPDecodeError(ErrorCode.PROTOCOL_ERROR, 0, "truncated fixed header")
    (afn, protocol_type, snap, hop_count, size, _checksum, extension_offset, version, type_, shtl, sstl) = (
        _FIXED_HEADER.unpack_from(data)
    )
    _check_fixed_header(data, size, extension_offset, version, type_, verify_checksum=verify_checksum)
    data = data[:size]
    reader = _Reader(data, FIXED_HEADER_LEN, extension_offset or size)
    src_protocol_len = reader.u8("source protocol length")
    dst_protocol_len = reader.u8("destination protocol length")
    flags = reader.u16("flags")
    word = reader.take(4, "request ID")
    src_nbma = reader.address(shtl & ADDRESS_LENGTH_MASK, "source NBMA address")
    src_nbma_subaddress = reader.take(sstl & ADDRESS_LENGTH_MASK, "source NBMA subaddress")
    src_protocol = reader.address(src_protocol_len, "source protocol address")
    dst_protocol = reader.address(dst_protocol_len, "destination protocol address")
    extensions = decode_extensions(data, extension_offset, size) if extension_offset else ()
    # The header fields every packet type shares, passed to the one constructor call (a second
    # dataclass build per packet shows in a busy agent's profile).
    common: dict[str, Any] = {
        "afn": afn,
        "protocol_type": protocol_type,
        "snap": snap,
        "hop_count": hop_count,
        "src_nbma": src_nbma,
        "src_nbma_subaddress": src_nbma_subaddress,
        "src_protocol": src_protocol,
        "dst_protocol": dst_protocol,
        "extensions": extensions,
    }
    if type_ == PacketType.ERROR_INDICATION:
        code, offset = struct.unpack("!HH", word)
        return ErrorIndication(error_code=code, error_offset=offset, offending_packet=reader.rest(), **common)
    if type_ == PacketType.TRAFFIC_INDICATION:
        traffic_code = int.from_bytes(word[:2], "big")
        return TrafficIndication(traffic_code=traffic_code, original_packet=reader.rest(), **common)
    return Message(
        type=PacketType(type_),
        flags=flags,
        request_id=int.from_bytes(word, "big"),
        cies=decode_cie_list(reader),
        **common,
    )


def _check_fixed_header(
    data: bytes, size: int, extension_offset: int, version: int, type_: int, *, verify_checksum: bool
) -> None:
    if version != NHRP_VERSION:
        raise NHRPDecodeError(ErrorCode.PROTOCOL_ERROR, _OFFSET_VERSION, f"unsupported version {version}")
    if size < FIXED_HEADER_LEN or size > len(data):
        raise NHRPDecodeError(ErrorCode.PROTOCOL_ERROR, _OFFSET_PACKET_SIZE, "bad packet size")
    if verify_checksum and internet_checksum(data[:size]) != 0:
        raise NHRPDecodeError(ErrorCode.PROTOCOL_ERROR, _OFFSET_CHECKSUM, "bad checksum")
    if type_ not in _PACKET_TYPES:
        raise NHRPDecodeError(ErrorCode.PROTOCOL_ERROR, _OFFSET_TYPE, f"unknown packet type {type_}")
    if extension_offset and not FIXED_HEADER_LEN < extension_offset <= size:
        raise NHRPDecodeError(ErrorCode.PROTOCOL_ERROR, _OFFSET_EXTENSION_OFFSET, "bad extension offset")


def decode_cie_list(reader: _Reader) -> tuple[CIE, ...]:
    """CIEs until the reader's end; a partial CIE is an error."""
    cies: list[CIE] = []
    while reader.remaining() > 0:
        if len(cies) == MAX_CIES:
            raise NHRPDecodeError(reader.code, reader.pos, "too many CIEs")
        cies.append(decode_cie(reader))
    return tuple(cies)


def decode_cie(reader: _Reader) -> CIE:
    if reader.remaining() < CIE_HEADER_LEN:
        raise NHRPDecodeError(reader.code, reader.pos, "truncated CIE")
    # One unpack for the fixed 12 bytes (checked above): the codec's hot path, ~3x fewer calls.
    (code, prefix_length, mtu, holding_time, nbma_len, subaddress_len, protocol_len, preference) = (
        _CIE_HEADER.unpack_from(reader.data, reader.pos)
    )
    reader.pos += CIE_HEADER_LEN
    return CIE(
        code=code,
        prefix_length=prefix_length,
        mtu=mtu,
        holding_time=holding_time,
        preference=preference,
        client_nbma=reader.address(nbma_len & ADDRESS_LENGTH_MASK, "CIE NBMA address"),
        client_nbma_subaddress=reader.take(subaddress_len & ADDRESS_LENGTH_MASK, "CIE NBMA subaddress"),
        client_protocol=reader.address(protocol_len, "CIE protocol address"),
    )


def decode_extensions(data: bytes, start: int, end: int) -> tuple[Extension, ...]:
    """Extensions from the extension offset up to the End extension (or the packet end)."""
    reader = _Reader(data, start, end, ErrorCode.INVALID_EXTENSION)
    extensions: list[Extension] = []
    while reader.remaining() > 0:
        header_at = reader.pos
        if reader.remaining() < EXTENSION_HEADER_LEN:
            raise NHRPDecodeError(ErrorCode.INVALID_EXTENSION, header_at, "truncated extension header")
        raw_type = reader.u16("extension type")
        length = reader.u16("extension length")
        ext_type = raw_type & EXTENSION_TYPE_MASK
        if ext_type == ExtensionType.END:
            break
        if len(extensions) == MAX_EXTENSIONS:
            raise NHRPDecodeError(ErrorCode.INVALID_EXTENSION, header_at, "too many extensions")
        body_at = reader.pos
        body = reader.take(length, "extension")
        compulsory = bool(raw_type & EXTENSION_COMPULSORY)
        extensions.append(_decode_extension(ext_type, compulsory, body, header_at, body_at))
    return tuple(extensions)


def _decode_extension(ext_type: int, compulsory: bool, body: bytes, header_at: int, body_at: int) -> Extension:
    cie_list_class = _CIE_LIST_EXTENSIONS.get(ext_type)
    if cie_list_class is not None:
        reader = _Reader(body, 0, len(body), ErrorCode.INVALID_EXTENSION)
        try:
            cies = decode_cie_list(reader)
        except NHRPDecodeError as error:  # report the offset within the whole packet
            raise NHRPDecodeError(error.code, body_at + error.offset, error.reason) from None
        extension: Extension = cie_list_class(cies=cies, compulsory=compulsory)
        return extension
    if ext_type == ExtensionType.AUTHENTICATION:
        if len(body) < 4:
            raise NHRPDecodeError(ErrorCode.INVALID_EXTENSION, header_at, "truncated authentication")
        return Authentication(spi=int.from_bytes(body[:4], "big"), data=body[4:], compulsory=compulsory)
    if ext_type == ExtensionType.VENDOR_PRIVATE:
        if len(body) < 3:
            raise NHRPDecodeError(ErrorCode.INVALID_EXTENSION, header_at, "truncated vendor-private")
        return VendorPrivate(vendor_id=int.from_bytes(body[:3], "big"), data=body[3:], compulsory=compulsory)
    if compulsory:
        # RFC 2332 5.3: an unrecognized compulsory extension makes the whole packet unusable.
        raise NHRPDecodeError(ErrorCode.UNRECOGNIZED_EXTENSION, header_at, f"unknown extension {ext_type}")
    return UnknownExtension(type=ext_type, data=body, compulsory=False)
