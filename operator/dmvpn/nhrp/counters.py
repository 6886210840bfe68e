"""Packet and drop counters: plain ``collections.Counter`` maps the agent exports to Prometheus."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

from dmvpn.nhrp.codec import ErrorCode, PacketType


class DropReason(StrEnum):
    DECODE_ERROR = "decode_error"  # detail in Counters.decode_errors
    AUTH_FAILURE = "auth_failure"
    UNSUPPORTED_PROTOCOL = "unsupported_protocol"  # protocol type is not our address family
    UNKNOWN_NHS = "unknown_nhs"  # a Registration Reply from an NBMA that is not one of our NHSes
    UNKNOWN_REQUEST = "unknown_request"  # a reply whose request ID we are not waiting for
    NOT_A_SERVER = "not_a_server"  # a Registration Request sent to a client
    NOT_FOR_US = "not_for_us"  # a request or reply we neither answer nor forward
    NO_ROUTE = "no_route"  # nowhere to forward (or to send a Traffic Indication)
    HOP_COUNT_EXCEEDED = "hop_count_exceeded"
    LOOP_DETECTED = "loop_detected"
    RATE_LIMITED = "rate_limited"  # a Traffic Indication we did not send or act upon
    ERROR_RATE_LIMITED = "error_rate_limited"  # an Error Indication we did not send
    BAD_TRAFFIC_INDICATION = "bad_traffic_indication"  # no IP header in it, or an unusable answer in it
    SHORTCUTS_DISABLED = "shortcuts_disabled"
    CACHE_FULL = "cache_full"


@dataclass
class Counters:
    packets_in: Counter[PacketType] = field(default_factory=Counter)
    packets_out: Counter[PacketType] = field(default_factory=Counter)
    drops: Counter[DropReason] = field(default_factory=Counter)
    decode_errors: Counter[ErrorCode] = field(default_factory=Counter)
    error_indications_in: Counter[int] = field(default_factory=Counter)  # by error code
    error_indications_out: Counter[ErrorCode] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)  # registrations accepted, purges sent...

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Label -> value maps with stable string labels (packet types and codes by name)."""
        return {
            "packets_in": {kind.name.lower(): n for kind, n in self.packets_in.items()},
            "packets_out": {kind.name.lower(): n for kind, n in self.packets_out.items()},
            "drops": {reason.value: n for reason, n in self.drops.items()},
            "decode_errors": {code.name.lower(): n for code, n in self.decode_errors.items()},
            "error_indications_in": {str(code): n for code, n in self.error_indications_in.items()},
            "error_indications_out": {code.name.lower(): n for code, n in self.error_indications_out.items()},
            "events": dict(self.events),
        }
