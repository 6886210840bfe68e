"""CNI protocol vocabulary: spec versions, error codes and the result formats of each version."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    JSONObject = dict[str, Any]

SUPPORTED_VERSIONS = ("0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = SUPPORTED_VERSIONS[-1]

# Well-known error codes (CNI spec, "Error codes").
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
NOT_AVAILABLE_LIMITED = 51
# Plugin specific codes (100+), documented in docs/cni.md.
NO_ATTACHMENT_RECORD = 100
CHECK_MISMATCH = 101
GC_INCOMPLETE = 102
INTERNAL_ERROR = 999

# Result fields that only exist from spec 1.1.0 on; older results must not carry them.
_INTERFACE_FIELDS_1_1 = ("mtu", "socketPath", "pciID")
_ROUTE_FIELDS_1_1 = ("mtu", "advmss", "priority", "table", "scope")


class CNIError(Exception):
    """An error reported to the runtime as the spec's error JSON on stdout."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json_object(self, cni_version: str) -> JSONObject:
        body: JSONObject = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            body["details"] = self.details
        return body


def version_key(version: str) -> tuple[int, ...]:
    """Order semantic versions numerically; anything unparsable sorts first."""
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (-1,)


def at_least(version: str, minimum: str) -> bool:
    return version_key(version) >= version_key(minimum)


def require_version(version: str, minimum: str, command: str) -> None:
    """The spec added CHECK in 0.4.0 and STATUS/GC in 1.1.0; older configs may not use them."""
    if not at_least(version, minimum):
        raise CNIError(
            INCOMPATIBLE_VERSION,
            f"config version {version} does not allow {command}",
            f"{command} needs cniVersion {minimum} or later in the network configuration",
        )


def pick_delegate_version(requested: str, delegate_versions: list[str], delegate: str) -> str:
    """The version to speak to a delegate: the requested one, else the newest it knows below it.

    Results of the same major family convert losslessly in the direction we need (an older
    delegate's result lifted to the requested format), so speaking e.g. 1.0.0 to a bridge that
    predates 1.1.0 is safe for a 1.1.0 request.
    """
    if requested in delegate_versions:
        return requested
    usable = [
        version
        for version in delegate_versions
        if version in SUPPORTED_VERSIONS and version_key(version) <= version_key(requested)
    ]
    if not usable:
        raise CNIError(
            INCOMPATIBLE_VERSION,
            f"delegate plugin {delegate} cannot speak CNI {requested}",
            f"{delegate} supports {', '.join(delegate_versions) or 'nothing'}; "
            f"dmvpn needs one of {', '.join(SUPPORTED_VERSIONS)} up to {requested}",
        )
    return max(usable, key=version_key)


def convert_result(result: JSONObject, to_version: str) -> JSONObject:
    """Rewrite a result (or prevResult) in the format of ``to_version``.

    0.3.x/0.4.0 results carry ``version`` ("4"/"6") in each IP entry, 1.0.0 removed it, and 1.1.0
    added MTU/socket/PCI fields to interfaces and MTU/metric/table/scope fields to routes.
    """
    converted: JSONObject = dict(result)
    converted["cniVersion"] = to_version
    legacy = not at_least(to_version, "1.0.0")
    has_1_1_fields = at_least(to_version, "1.1.0")
    ips = result.get("ips")
    if isinstance(ips, list):
        converted["ips"] = [_convert_ip(ip, legacy) if isinstance(ip, dict) else ip for ip in ips]
    if not has_1_1_fields:
        for key, fields in (("interfaces", _INTERFACE_FIELDS_1_1), ("routes", _ROUTE_FIELDS_1_1)):
            entries = result.get(key)
            if isinstance(entries, list):
                converted[key] = [_without(entry, fields) for entry in entries]
    return converted


def _convert_ip(ip: JSONObject, legacy: bool) -> JSONObject:
    converted = dict(ip)
    if legacy:
        address = ip.get("address")
        if "version" not in converted and isinstance(address, str):
            converted["version"] = "6" if ":" in address else "4"
    else:
        converted.pop("version", None)
    return converted


def _without(entry: object, fields: tuple[str, ...]) -> object:
    if not isinstance(entry, dict):
        return entry
    return {key: value for key, value in entry.items() if key not in fields}
