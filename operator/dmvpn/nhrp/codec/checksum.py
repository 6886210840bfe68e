"""The NHRP checksum: the IP one's complement sum over the whole packet, extensions included."""

from __future__ import annotations

import sys


def internet_checksum(data: bytes) -> int:
    """RFC 1071 checksum; over a packet that carries a correct checksum the result is 0.

    The one's complement sum is byte-order independent (RFC 1071 2.B), so we sum native 16-bit words
    (fast: no per-word unpacking in Python) and swap the folded result on little-endian hosts.
    """
    if len(data) % 2:
        data += b"\x00"
    total = sum(memoryview(data).cast("H"))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    folded = ~total & 0xFFFF
    if sys.byteorder == "little":
        return ((folded & 0xFF) << 8) | (folded >> 8)
    return folded
