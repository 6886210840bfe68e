"""Scalar types shared by the spec and status models.

Every type here validates the way the Kubernetes API server does (a YAML ``"42"`` is not the integer 42),
explains a failure in words a network engineer can act on, and carries the OpenAPI keywords the CRD
generator needs, so the pydantic model is the single source of truth for both.
"""

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PlainSerializer,
    PlainValidator,
    Strict,
    WithJsonSchema,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from dmvpn.api.constants import IFNAME_MAX, UINT16_MAX, UINT32_MAX


def invalid(kind: str, message: str) -> PydanticCustomError:
    """A validation error with a message for humans (no ``{}``: pydantic treats braces as a template)."""
    return PydanticCustomError(kind, message.replace("{", "(").replace("}", ")"))


class Checked:
    """Annotation that runs ``check`` after the base type validated and adds OpenAPI keywords to it."""

    def __init__(self, check: Callable[[Any], Any], openapi: Mapping[str, Any] | None = None) -> None:
        self.check = check
        self.openapi = dict(openapi or {})

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.update(self.openapi)
        return json_schema


# --- integers ------------------------------------------------------------------------------------


def in_range(low: int, high: int, unit: str = "") -> Checked:
    """Bounds an integer, with the message ``must be low..high`` (the formatter appends ``got``)."""
    suffix = f" {unit}" if unit else ""

    def check(value: int) -> int:
        if not low <= value <= high:
            raise invalid("out_of_range", f"must be {low}..{high}{suffix}")
        return value

    return Checked(check, {"minimum": low, "maximum": high})


Uint32 = Annotated[int, Strict(), in_range(0, UINT32_MAX)]
GreKey = Annotated[int, Strict(), in_range(0, UINT32_MAX)]
NetworkId = Annotated[int, Strict(), in_range(1, UINT32_MAX)]
Mtu = Annotated[int, Strict(), in_range(576, 9000, "bytes")]
Ttl = Annotated[int, Strict(), in_range(1, 255)]
#: NHRP carries holding times in a 16-bit field (RFC 2332 5.2.0.1).
HoldTime = Annotated[int, Strict(), in_range(1, UINT16_MAX, "seconds")]
ShortcutIdleTimeout = Annotated[int, Strict(), in_range(1, UINT16_MAX, "seconds")]
#: 0 turns dead peer detection off, as in strongSwan.
DpdDelay = Annotated[int, Strict(), in_range(0, 86400, "seconds")]
RekeyTime = Annotated[int, Strict(), in_range(60, 7 * 86400, "seconds")]
Count = Annotated[int, Strict(), in_range(0, UINT32_MAX)]
Generation = Annotated[int, Strict(), in_range(0, 2**63 - 1)]


# --- names ---------------------------------------------------------------------------------------

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = rf"{_DNS_LABEL}(\.{_DNS_LABEL})*"
_LABEL_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"


def pattern_check(kind: str, pattern: str, max_length: int, explanation: str) -> Checked:
    """A string that must fully match ``pattern`` and be at most ``max_length`` long."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if len(value) > max_length:
            raise invalid(kind, f"must be at most {max_length} characters (has {len(value)})")
        if not compiled.fullmatch(value):
            raise invalid(kind, f"must be {explanation}")
        return value

    return Checked(check, {"pattern": f"^{pattern}$", "maxLength": max_length, "minLength": 1})


DnsSubdomain = Annotated[
    str,
    Strict(),
    pattern_check(
        "dns_subdomain",
        _DNS_SUBDOMAIN,
        253,
        "a Kubernetes object name: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit",
    ),
]
DnsLabel = Annotated[
    str,
    Strict(),
    pattern_check(
        "dns_label",
        _DNS_LABEL,
        63,
        "a namespace name: lower-case letters, digits and '-', starting and ending with a letter or digit",
    ),
]
SecretKey = Annotated[
    str,
    Strict(),
    pattern_check("secret_key", r"[-._a-zA-Z0-9]+", 253, "a Secret data key: letters, digits, '-', '_', '.'"),
]
#: Linux accepts almost any byte in an interface name; we accept what ``ip`` users can type unquoted.
InterfaceName = Annotated[
    str,
    Strict(),
    pattern_check(
        "interface_name",
        r"[A-Za-z0-9_][A-Za-z0-9_.-]*",
        IFNAME_MAX,
        "a Linux interface name: letters, digits, '_', '.', '-', not starting with '.' or '-'",
    ),
]
ConditionType = Annotated[
    str,
    Strict(),
    pattern_check(
        "condition_type",
        rf"({_DNS_SUBDOMAIN}/)?{_LABEL_NAME}",
        316,
        "a CamelCase condition type such as Ready, optionally prefixed by a domain and '/'",
    ),
]
Reason = Annotated[
    str,
    Strict(),
    pattern_check("reason", r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?", 1024, "a CamelCase reason such as HubsUp"),
]

_LABEL_NAME_RE = re.compile(_LABEL_NAME)
_DNS_SUBDOMAIN_RE = re.compile(_DNS_SUBDOMAIN)


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid Kubernetes label key, or None if it is."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN_RE.fullmatch(prefix)):
        return f"label key {key!r}: prefix {prefix!r} must be a DNS subdomain such as kubernetes.io"
    if len(name) > 63 or not _LABEL_NAME_RE.fullmatch(name):
        return (
            f"label key {key!r}: name must be 1..63 letters, digits, '-', '_', '.', "
            "starting and ending with a letter or digit"
        )
    return None


def label_value_problem(key: str, value: str) -> str | None:
    """Why ``value`` is not a valid value for label ``key``, or None if it is."""
    if value and (len(value) > 63 or not _LABEL_NAME_RE.fullmatch(value)):
        return (
            f"label {key!r}: value {value!r} must be empty or 1..63 letters, digits, '-', '_', '.', "
            "starting and ending with a letter or digit"
        )
    return None


def _check_selector(selector: dict[str, str]) -> dict[str, str]:
    problems = [
        problem
        for key, value in selector.items()
        for problem in (label_key_problem(key), label_value_problem(key, value))
        if problem
    ]
    if problems:
        raise invalid("label_selector", "; ".join(problems))
    return selector


NodeSelector = Annotated[
    dict[Annotated[str, Strict()], Annotated[str, Strict()]],
    Checked(_check_selector, {"additionalProperties": {"type": "string", "maxLength": 63}}),
]


# --- IPv4 ----------------------------------------------------------------------------------------

_DOTTED_QUAD = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}"
_PREFIX_LEN = r"(3[0-2]|[12]?[0-9])"
_WITH_PREFIX_RE = re.compile(rf"{_DOTTED_QUAD}/{_PREFIX_LEN}")


def _parse_ipv4(value: object) -> IPv4Address:
    if isinstance(value, IPv4Address):
        return value
    if isinstance(value, str):
        try:
            return IPv4Address(value)
        except ValueError:
            pass
    raise invalid("ipv4_address", "must be an IPv4 address such as 192.0.2.1")


def _parse_ipv4_interface(value: object) -> IPv4Interface:
    if isinstance(value, IPv4Interface):
        return value
    if isinstance(value, str) and _WITH_PREFIX_RE.fullmatch(value):
        return IPv4Interface(value)
    raise invalid("ipv4_interface", "must be an IPv4 address with its prefix length such as 10.255.0.1/24")


def _parse_ipv4_network(value: object) -> IPv4Network:
    if isinstance(value, IPv4Network):
        return value
    if isinstance(value, str) and _WITH_PREFIX_RE.fullmatch(value):
        try:
            return IPv4Network(value)
        except ValueError:
            network = IPv4Network(value, strict=False)
            raise invalid("ipv4_network", f"{value} has host bits set; did you mean {network}?") from None
    raise invalid("ipv4_network", "must be an IPv4 prefix such as 10.1.0.0/24")


def _unusable_reason(address: IPv4Address) -> str | None:
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_reserved:
        return "a reserved (class E or broadcast) address"
    return None


def _check_unicast(address: IPv4Address) -> IPv4Address:
    reason = _unusable_reason(address)
    if reason:
        raise invalid("ipv4_unicast", f"must be a unicast address of a host, not {reason}")
    return address


def _check_tunnel_interface(interface: IPv4Interface) -> IPv4Interface:
    reason = _unusable_reason(interface.ip)
    if reason:
        raise invalid("tunnel_address", f"must be a unicast address of a host, not {reason}")
    network = interface.network
    if network.prefixlen > 30:
        raise invalid(
            "tunnel_address",
            "must have a prefix length of at most /30: the tunnel subnet holds the hub and its spokes",
        )
    if interface.ip in (network.network_address, network.broadcast_address):
        which = "network" if interface.ip == network.network_address else "broadcast"
        example = f"{next(network.hosts())}/{network.prefixlen}"
        raise invalid(
            "tunnel_address",
            f"{interface} is the {which} address of {network}; give a host address such as {example}",
        )
    return interface


_to_str = PlainSerializer(str, return_type=str, when_used="json")

IPv4 = Annotated[
    IPv4Address,
    PlainValidator(_parse_ipv4),
    _to_str,
    WithJsonSchema({"type": "string", "format": "ipv4", "pattern": f"^{_DOTTED_QUAD}$"}),
]
#: A host address that can be an NBMA or tunnel endpoint (not 0.0.0.0, loopback, multicast, class E).
UnicastIPv4 = Annotated[IPv4, AfterValidator(_check_unicast)]
#: An IPv4 prefix without host bits (``10.1.0.0/24``).
IPv4Prefix = Annotated[
    IPv4Network,
    PlainValidator(_parse_ipv4_network),
    _to_str,
    WithJsonSchema({"type": "string", "format": "cidr", "pattern": f"^{_DOTTED_QUAD}/{_PREFIX_LEN}$"}),
]
#: A tunnel interface address with its subnet (``10.255.0.1/24``): a host, not the network/broadcast.
TunnelAddress = Annotated[
    IPv4Interface,
    PlainValidator(_parse_ipv4_interface),
    AfterValidator(_check_tunnel_interface),
    _to_str,
    WithJsonSchema({"type": "string", "pattern": f"^{_DOTTED_QUAD}/{_PREFIX_LEN}$"}),
]


# --- time ----------------------------------------------------------------------------------------


def _utc_seconds(value: datetime) -> datetime:
    # metav1.Time has second precision: keep what the API server would store.
    return value.astimezone(UTC).replace(microsecond=0)


def rfc3339(value: datetime) -> str:
    """``2024-05-01T12:00:00Z``: the form Kubernetes writes timestamps in."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


Timestamp = Annotated[
    AwareDatetime,
    AfterValidator(_utc_seconds),
    PlainSerializer(rfc3339, return_type=str, when_used="json"),
]

ConditionStatus = Literal["True", "False", "Unknown"]
