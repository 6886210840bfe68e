"""What the plugin is told: the CNI_* environment, the network config, and the agent's node state."""

from __future__ import annotations

from dmvpn_cni import fastos, jsonio
from dmvpn_cni.protocol import (
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENVIRONMENT,
    SUPPORTED_VERSIONS,
    CNIError,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    JSONObject = dict[str, Any]

DEFAULT_BRIDGE = "dmvpn-br0"
DEFAULT_NODE_STATE_FILE = "/run/dmvpn/node-state.json"
DEFAULT_DATA_DIR = "/var/lib/cni/dmvpn"
# host-local's own default; we need it to find leaked allocations during GC.
DEFAULT_IPAM_DATA_DIR = "/var/lib/cni/networks"
DEFAULT_GC_GRACE_SECONDS = 60.0
NODE_STATE_SCHEMA_VERSION = 1

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_IFNAME_MAX = 15  # IFNAMSIZ minus the terminating NUL


def is_valid_name(value: str) -> bool:
    """Network names and container IDs: an alphanumeric, then alphanumerics, ``_``, ``.``, ``-``."""
    return bool(value) and value[0] in _NAME_CHARS and value[0] not in "_.-" and set(value) <= _NAME_CHARS


def ifname_problem(value: str) -> str:
    """Why ``value`` cannot be a Linux interface name ("" when it can)."""
    if not value:
        return "it is empty"
    if len(value.encode()) > _IFNAME_MAX:
        return f"it is longer than {_IFNAME_MAX} bytes"
    if value in (".", ".."):
        return "it is . or .."
    if any(char in "/:" or char.isspace() for char in value):
        return "it contains '/', ':' or whitespace"
    return ""


class CniEnv:
    """The CNI_* variables of one invocation, checked for what the command needs."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.command = environ.get("CNI_COMMAND", "")
        self.container_id = environ.get("CNI_CONTAINERID", "")
        self.netns = environ.get("CNI_NETNS", "")
        self.ifname = environ.get("CNI_IFNAME", "")
        self.args = environ.get("CNI_ARGS", "")
        self.path = [entry for entry in environ.get("CNI_PATH", "").split(fastos.PATHSEP) if entry]

    def require_attachment(self, need_netns: bool) -> None:
        """ADD/CHECK need the netns; DEL may come after the sandbox is gone (spec 1.1)."""
        if not self.container_id:
            raise CNIError(INVALID_ENVIRONMENT, "CNI_CONTAINERID is not set")
        if not is_valid_name(self.container_id):
            raise CNIError(
                INVALID_ENVIRONMENT,
                f"CNI_CONTAINERID {self.container_id!r} is invalid",
                "it must start with a letter or digit and contain only letters, digits, '_', '.' or '-'",
            )
        problem = ifname_problem(self.ifname)
        if problem:
            raise CNIError(INVALID_ENVIRONMENT, f"CNI_IFNAME {self.ifname!r} is invalid: {problem}")
        if need_netns and not self.netns:
            raise CNIError(INVALID_ENVIRONMENT, "CNI_NETNS is not set")
        self.require_path()

    def require_path(self) -> None:
        if not self.path:
            raise CNIError(
                INVALID_ENVIRONMENT,
                "CNI_PATH is not set",
                "dmvpn delegates to the bridge and host-local plugins and finds them through CNI_PATH",
            )


def parse_json_config(raw: bytes) -> JSONObject:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CNIError(DECODE_FAILURE, "network configuration on stdin is not UTF-8", str(err)) from None
    try:
        value = jsonio.loads(text)
    except jsonio.JSONError as err:
        raise CNIError(DECODE_FAILURE, "network configuration on stdin is not valid JSON", str(err)) from None
    if not isinstance(value, dict):
        raise CNIError(INVALID_CONFIG, "network configuration must be a JSON object")
    return value


def config_version(raw: JSONObject) -> str:
    version = raw.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CNIError(INVALID_CONFIG, "network configuration has no cniVersion string")
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(
            INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f"config is {version!r}, dmvpn supports {', '.join(SUPPORTED_VERSIONS)}",
        )
    return version


class NetConf:
    """The dmvpn plugin's network configuration (see docs/cni.md for every key)."""

    def __init__(self, raw: JSONObject) -> None:
        self.raw = raw
        self.cni_version = config_version(raw)
        self.name = _string(raw, "name", None)
        if not is_valid_name(self.name):
            raise CNIError(
                INVALID_CONFIG,
                f"network name {self.name!r} is invalid",
                "it must start with a letter or digit and contain only letters, digits, '_', '.' or '-'",
            )
        self.bridge = _string(raw, "bridge", DEFAULT_BRIDGE)
        problem = ifname_problem(self.bridge)
        if problem:
            raise CNIError(INVALID_CONFIG, f"bridge name {self.bridge!r} is invalid: {problem}")
        self.node_state_file = _absolute_path(raw, "nodeStateFile", DEFAULT_NODE_STATE_FILE)
        self.data_dir = _absolute_path(raw, "dataDir", DEFAULT_DATA_DIR)
        self.ipam_data_dir = _absolute_path(raw, "ipamDataDir", DEFAULT_IPAM_DATA_DIR)
        self.hairpin_mode = _boolean(raw, "hairpinMode", True)  # as flannel: a pod reaches itself via a Service
        self.gc_grace_seconds = _number(raw, "gcGraceSeconds", DEFAULT_GC_GRACE_SECONDS)
        self.routes = _routes(raw)
        self.prev_result = _optional_object(raw, "prevResult")
        self.runtime_config = _optional_object(raw, "runtimeConfig")
        self.args = _optional_object(raw, "args")

    def with_request_fields(self, delegate: JSONObject, delegate_version: str) -> JSONObject:
        """The stored delegate config plus this request's per-call fields (capabilities, args)."""
        conf = dict(delegate)
        conf["cniVersion"] = delegate_version
        if self.runtime_config is not None:
            conf["runtimeConfig"] = self.runtime_config
        if self.args is not None:
            conf["args"] = self.args
        return conf


def _string(raw: JSONObject, key: str, default: str | None) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        what = "is required" if value is None else "must be a string"
        raise CNIError(INVALID_CONFIG, f"network configuration field {key!r} {what}")
    return value


def _absolute_path(raw: JSONObject, key: str, default: str) -> str:
    value = _string(raw, key, default)
    if not value.startswith("/"):
        raise CNIError(INVALID_CONFIG, f"network configuration field {key!r} must be an absolute path")
    return value


def _boolean(raw: JSONObject, key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise CNIError(INVALID_CONFIG, f"network configuration field {key!r} must be true or false")
    return value


def _number(raw: JSONObject, key: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise CNIError(INVALID_CONFIG, f"network configuration field {key!r} must be a number >= 0")
    return float(value)


def _optional_object(raw: JSONObject, key: str) -> JSONObject | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, dict):
        raise CNIError(INVALID_CONFIG, f"network configuration field {key!r} must be an object")
    return value


def _routes(raw: JSONObject) -> list[JSONObject] | None:
    routes = raw.get("routes")
    if routes is None:
        return None
    if not isinstance(routes, list):
        raise CNIError(INVALID_CONFIG, "network configuration field 'routes' must be a list")
    for route in routes:
        if not isinstance(route, dict) or not isinstance(route.get("dst"), str):
            raise CNIError(INVALID_CONFIG, "each entry of 'routes' must be an object with a 'dst' string")
        if cidr_problem(route["dst"]):
            raise CNIError(INVALID_CONFIG, f"route destination {route['dst']!r} is not a CIDR")
        if "gw" in route and not isinstance(route["gw"], str):
            raise CNIError(INVALID_CONFIG, f"gateway of route {route['dst']!r} must be a string")
    return routes


def cidr_problem(value: str) -> str:
    """A cheap shape check of ``address/prefix`` ("" when fine).

    ``ipaddress`` would cost more start-up time than the whole plugin spends otherwise; host-local
    validates ranges thoroughly anyway, we only need to know the family and reject nonsense early.
    """
    address, slash, prefix = value.partition("/")
    if not slash or not prefix.isdigit():
        return "it has no /prefix length"
    if ":" in address:
        if int(prefix) > 128 or not set(address.lower()) <= set("0123456789abcdef:.") or ":::" in address:
            return "it is not an IPv6 prefix"
        return ""
    octets = address.split(".")
    if int(prefix) > 32 or len(octets) != 4:
        return "it is not an IPv4 prefix"
    if not all(octet.isdigit() and int(octet) <= 255 for octet in octets):
        return "it is not an IPv4 prefix"
    return ""


def is_ipv6(cidr: str) -> bool:
    return ":" in cidr


class NodeStateUnavailable(Exception):
    """The agent's node state cannot be used; ``missing`` tells "not yet" from "broken"."""

    def __init__(self, missing: bool, reason: str) -> None:
        super().__init__(reason)
        self.missing = missing
        self.reason = reason


class NodeState:
    """What the dmvpn agent publishes for the CNI plugin (schema in docs/cni.md)."""

    def __init__(self, raw: JSONObject) -> None:
        version = raw.get("version")
        if version != NODE_STATE_SCHEMA_VERSION:
            raise ValueError(f"schema version is {version!r}, this plugin reads {NODE_STATE_SCHEMA_VERSION}")
        self.node = _state_string(raw, "node", "")
        self.tunnel_interface = _state_string(raw, "tunnelInterface", "")
        self.pod_cidrs = _state_cidrs(raw, "podCIDRs", required=True)
        self.overlay_prefixes = _state_cidrs(raw, "overlayPrefixes", required=False)
        mtu = raw.get("mtu")
        minimum = 1280 if any(is_ipv6(cidr) for cidr in self.pod_cidrs) else 576
        if isinstance(mtu, bool) or not isinstance(mtu, int) or not minimum <= mtu <= 65535:
            raise ValueError(f"mtu {mtu!r} is not an integer between {minimum} and 65535")
        self.mtu = mtu


def _state_string(raw: JSONObject, key: str, default: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    return value


def _state_cidrs(raw: JSONObject, key: str, required: bool) -> list[str]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{key} must be a list of CIDR strings")
    if required and not value:
        raise ValueError(f"{key} is empty: the node has no pod CIDR yet")
    for cidr in value:
        problem = cidr_problem(cidr)
        if problem:
            raise ValueError(f"{key} entry {cidr!r} is invalid: {problem}")
    return value


def load_node_state(path: str) -> NodeState:
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise NodeStateUnavailable(True, f"the dmvpn agent has not published {path} yet") from None
    except OSError as err:
        raise NodeStateUnavailable(False, f"cannot read {path}: {err.strerror}") from None
    try:
        value = jsonio.loads(raw.decode("utf-8"))
        if not isinstance(value, dict):
            raise ValueError("it is not a JSON object")
        return NodeState(value)
    except (ValueError, UnicodeDecodeError) as err:
        raise NodeStateUnavailable(False, f"{path} is unusable: {err}") from None


def bridge_delegate_config(conf: NetConf, state: NodeState, version: str) -> JSONObject:
    """The ``bridge`` + ``host-local`` config for this node, as flannel builds one for its subnet."""
    ranges = [[{"subnet": cidr} for cidr in state.pod_cidrs if is_ipv6(cidr) == ipv6] for ipv6 in (False, True)]
    ranges = [family for family in ranges if family]
    routes = conf.routes
    if routes is None:
        routes = [{"dst": "::/0" if is_ipv6(family[0]["subnet"]) else "0.0.0.0/0"} for family in ranges]
    ipam: JSONObject = {"type": "host-local", "ranges": ranges, "routes": routes}
    if conf.ipam_data_dir != DEFAULT_IPAM_DATA_DIR:
        ipam["dataDir"] = conf.ipam_data_dir
    return {
        "cniVersion": version,
        "name": conf.name,
        "type": "bridge",
        "bridge": conf.bridge,
        "isGateway": True,
        "ipMasq": False,
        "mtu": state.mtu,
        "hairpinMode": conf.hairpin_mode,
        "ipam": ipam,
    }
