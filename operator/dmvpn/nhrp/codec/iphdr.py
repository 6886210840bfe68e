"""Just enough IP header parsing for Traffic Indications (which carry the data packet's header)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from dmvpn.nhrp.codec.model import Address

_IPV4_MIN_HEADER = 20
_IPV6_HEADER = 40
# RFC 792 style: the IP header plus the first 8 payload bytes (ports) identify the flow.
_EXCERPT_PAYLOAD = 8


def ip_addresses(packet: bytes) -> tuple[Address, Address] | None:
    """(source, destination) of an IPv4 or IPv6 packet, or None if it is not one."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4 and len(packet) >= _IPV4_MIN_HEADER:
        return IPv4Address(packet[12:16]), IPv4Address(packet[16:20])
    if version == 6 and len(packet) >= _IPV6_HEADER:
        return IPv6Address(packet[8:24]), IPv6Address(packet[24:40])
    return None


def indication_excerpt(packet: bytes) -> bytes:
    """The part of a data packet a Traffic Indication carries: its IP header and 8 payload bytes."""
    ipv4 = bool(packet) and packet[0] >> 4 == 4
    header_len = max((packet[0] & 0x0F) * 4, _IPV4_MIN_HEADER) if ipv4 else _IPV6_HEADER
    return bytes(packet[: header_len + _EXCERPT_PAYLOAD])
