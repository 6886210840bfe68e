"""The one error the decoder raises."""

from __future__ import annotations

from dmvpn.nhrp.codec.constants import ErrorCode


class NHRPDecodeError(ValueError):
    """Untrusted bytes are not a valid NHRP packet.

    ``code`` is the RFC 2332 Error Indication code a receiver would report, ``offset`` the byte
    offset in the packet where the problem was found and ``reason`` a short stable slug for
    counters and logs.
    """

    def __init__(self, code: ErrorCode, offset: int, reason: str) -> None:
        super().__init__(f"{reason} at offset {offset} (NHRP error {code.value} {code.name})")
        self.code = code
        self.offset = offset
        self.reason = reason
