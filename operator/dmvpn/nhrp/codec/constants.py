"""Numbers from RFC 2332, draft-detienne-dmvpn and the Cisco extensions, as enums."""

from __future__ import annotations

from enum import IntEnum, IntFlag

FIXED_HEADER_LEN = 20
CIE_HEADER_LEN = 12
EXTENSION_HEADER_LEN = 4
NHRP_VERSION = 1
ETHERTYPE_NHRP = 0x2001
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
AFN_IPV4 = 1
AFN_IPV6 = 2
DEFAULT_HOP_COUNT = 16
MAX_PACKET_SIZE = 0xFFFF

# Decoding limits: a CIE is at least 12 bytes, so a 64 KiB packet could hold ~5000 of them; nothing
# legitimate carries more than a handful, and these caps bound the work an attacker can cause.
MAX_CIES = 128
MAX_EXTENSIONS = 32
# Header type/length octets keep the length in the low six bits (RFC 2332 5.2.0.1).
ADDRESS_LENGTH_MASK = 0x3F
EXTENSION_COMPULSORY = 0x8000
EXTENSION_TYPE_MASK = 0x3FFF

# Cisco-style authentication: a 32-bit type (1 = cleartext password) then at most 8 bytes of secret.
AUTH_TYPE_CLEARTEXT = 1
AUTH_MAX_SECRET_LEN = 8


class PacketType(IntEnum):
    RESOLUTION_REQUEST = 1
    RESOLUTION_REPLY = 2
    REGISTRATION_REQUEST = 3
    REGISTRATION_REPLY = 4
    PURGE_REQUEST = 5
    PURGE_REPLY = 6
    ERROR_INDICATION = 7
    TRAFFIC_INDICATION = 8


REQUEST_TYPES = frozenset({PacketType.RESOLUTION_REQUEST, PacketType.REGISTRATION_REQUEST, PacketType.PURGE_REQUEST})
REPLY_TYPES = frozenset({PacketType.RESOLUTION_REPLY, PacketType.REGISTRATION_REPLY, PacketType.PURGE_REPLY})


class ExtensionType(IntEnum):
    END = 0
    RESPONDER_ADDRESS = 3
    FORWARD_TRANSIT_NHS = 4
    REVERSE_TRANSIT_NHS = 5
    AUTHENTICATION = 7
    VENDOR_PRIVATE = 8
    NAT_ADDRESS = 9  # Cisco; the payload is a CIE list (as FRR nhrpd uses it)
    # Ours, from RFC 2332's experimental range (0x3800-0x3FFF, local significance): a Traffic Indication
    # from our hub that carries the hub's answer for the indicated destination (docs/nhrp.md).
    INDICATION_ANSWER = 0x3800


class ErrorCode(IntEnum):
    """Error Indication codes (RFC 2332 5.2.7)."""

    UNRECOGNIZED_EXTENSION = 1
    LOOP_DETECTED = 3
    PROTOCOL_ADDRESS_UNREACHABLE = 6
    PROTOCOL_ERROR = 7
    SDU_SIZE_EXCEEDED = 8
    INVALID_EXTENSION = 9
    INVALID_RESOLUTION_REPLY = 10
    AUTHENTICATION_FAILURE = 11
    HOP_COUNT_EXCEEDED = 15


class CIECode(IntEnum):
    """CIE codes used in replies (RFC 2332 5.2.2 and 5.2.4)."""

    SUCCESS = 0
    ADMINISTRATIVELY_PROHIBITED = 4
    INSUFFICIENT_RESOURCES = 5
    NO_BINDING_EXISTS = 12
    BINDING_NOT_UNIQUE = 13
    UNIQUE_ADDRESS_REGISTERED = 14


class ResolutionFlag(IntFlag):
    """Resolution Request/Reply flags (RFC 2332 5.2.1; NAT is Cisco's)."""

    Q = 0x8000  # requester is a router
    A = 0x4000  # authoritative
    D = 0x2000  # destination is stable
    U = 0x1000  # unique
    S = 0x0800  # source binding is stable
    NAT = 0x0002


class RegistrationFlag(IntFlag):
    UNIQUE = 0x8000
    NAT = 0x0002


class PurgeFlag(IntFlag):
    NO_REPLY = 0x8000
