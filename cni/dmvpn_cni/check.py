"""CHECK's own look into the pod: the interface, its addresses, MTU and routes match prevResult.

We read the sandbox with ``nsenter --net=<netns> ip -j ...`` rather than speaking netlink: the
plugin must stay standard-library only, and iproute2 and util-linux are present on every
Kubernetes node (kubelet and the runtimes rely on them). Entering a netns from Python itself would
need ``setns`` through ctypes and a thread of its own. If either tool is missing we say so on
stderr and rely on the bridge plugin's CHECK, which verifies addresses and routes too.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess

from dmvpn_cni import jsonio
from dmvpn_cni.protocol import CHECK_MISMATCH, CNIError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    JSONObject = dict[str, Any]
    Network = ipaddress.IPv4Network | ipaddress.IPv6Network
    Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_TOOL_DIRS = "/usr/sbin:/usr/bin:/sbin:/bin"
_TIMEOUT_SECONDS = 10


def _tool(name: str) -> str | None:
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:{_TOOL_DIRS}")


def verify_sandbox(netns: str, ifname: str, prev_result: JSONObject, mtu: int | None) -> None:
    nsenter, ip = _tool("nsenter"), _tool("ip")
    if nsenter is None or ip is None:
        import sys

        sys.stderr.write("dmvpn: CHECK: nsenter or ip not found, relying on the bridge plugin's CHECK\n")
        return
    links = _ip_json(nsenter, ip, netns, ["addr", "show", "dev", ifname], what=f"interface {ifname}")
    if not isinstance(links, list) or not links or not isinstance(links[0], dict):
        raise CNIError(CHECK_MISMATCH, f"interface {ifname} is missing in {netns}")
    link = links[0]
    if mtu is not None and link.get("mtu") != mtu:
        raise CNIError(
            CHECK_MISMATCH,
            f"interface {ifname} in {netns} has MTU {link.get('mtu')}, expected {mtu}",
            "the pod MTU is the DMVPN tunnel MTU the agent published when the pod was added",
        )
    _verify_addresses(netns, ifname, link, expected_addresses(prev_result, ifname))
    expected_routes = _expected_routes(prev_result)
    if expected_routes:
        families = {network.version for network, _ in expected_routes}
        actual = []
        for family in sorted(families):
            table = _ip_json(nsenter, ip, netns, [f"-{family}", "route", "show", "table", "main"], what="routes")
            actual.extend(_parse_routes(table, family))
        _verify_routes(netns, expected_routes, actual)


def _ip_json(nsenter: str, ip: str, netns: str, args: list[str], what: str) -> object:
    command = [nsenter, f"--net={netns}", ip, "-j", *args]
    try:
        done = subprocess.run(command, capture_output=True, timeout=_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise CNIError(CHECK_MISMATCH, f"cannot inspect {what} in {netns}", str(err)) from None
    if done.returncode != 0:
        reason = done.stderr.decode("utf-8", "replace").strip()
        raise CNIError(CHECK_MISMATCH, f"cannot inspect {what} in {netns}", reason)
    text = done.stdout.decode("utf-8", "replace").strip()
    try:
        return jsonio.loads(text) if text else []
    except jsonio.JSONError as err:
        raise CNIError(CHECK_MISMATCH, f"unexpected output of {' '.join(command)}", str(err)) from None


def expected_addresses(prev_result: JSONObject, ifname: str) -> list[str]:
    """Addresses prevResult puts on our interface (entries naming another interface are skipped)."""
    interfaces = prev_result.get("interfaces")
    interfaces = interfaces if isinstance(interfaces, list) else []
    addresses = []
    for ip_config in prev_result.get("ips") or []:
        if not isinstance(ip_config, dict) or not isinstance(ip_config.get("address"), str):
            continue
        index = ip_config.get("interface")
        if isinstance(index, int) and 0 <= index < len(interfaces):
            target = interfaces[index]
            if not isinstance(target, dict) or target.get("name") != ifname or not target.get("sandbox"):
                continue
        addresses.append(ip_config["address"])
    return addresses


def _verify_addresses(netns: str, ifname: str, link: JSONObject, expected: list[str]) -> None:
    present = set()
    for info in link.get("addr_info") or []:
        if isinstance(info, dict) and isinstance(info.get("local"), str) and isinstance(info.get("prefixlen"), int):
            present.add(ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}"))
    for address in expected:
        try:
            wanted = ipaddress.ip_interface(address)
        except ValueError:
            raise CNIError(CHECK_MISMATCH, f"prevResult address {address!r} is not an address/prefix") from None
        if wanted not in present:
            raise CNIError(
                CHECK_MISMATCH,
                f"interface {ifname} in {netns} lacks address {address}",
                f"it has {', '.join(sorted(str(item) for item in present)) or 'no address'}",
            )


def _expected_routes(prev_result: JSONObject) -> list[tuple[Network, Address | None]]:
    routes = []
    for route in prev_result.get("routes") or []:
        if not isinstance(route, dict) or not isinstance(route.get("dst"), str):
            continue
        try:
            network = ipaddress.ip_network(route["dst"], strict=False)
            gateway = ipaddress.ip_address(route["gw"]) if isinstance(route.get("gw"), str) else None
        except ValueError:
            raise CNIError(CHECK_MISMATCH, f"prevResult route {route!r} is malformed") from None
        routes.append((network, gateway))
    return routes


def _parse_routes(table: object, family: int) -> list[tuple[Network, Address | None]]:
    default = ipaddress.ip_network("0.0.0.0/0" if family == 4 else "::/0")
    routes: list[tuple[Network, Address | None]] = []
    for route in table if isinstance(table, list) else []:
        if not isinstance(route, dict) or not isinstance(route.get("dst"), str):
            continue
        try:
            network = default if route["dst"] == "default" else ipaddress.ip_network(route["dst"], strict=False)
            gateway = route.get("gateway")
            routes.append((network, ipaddress.ip_address(gateway) if isinstance(gateway, str) else None))
        except ValueError:
            continue  # kinds of routes we never add (e.g. "unreachable"), not ours to judge
    return routes


def _verify_routes(
    netns: str, expected: list[tuple[Network, Address | None]], actual: list[tuple[Network, Address | None]]
) -> None:
    for network, gateway in expected:
        candidates = [via for dst, via in actual if dst == network]
        if not candidates or (gateway is not None and gateway not in candidates):
            via = f" via {gateway}" if gateway is not None else ""
            raise CNIError(CHECK_MISMATCH, f"route to {network}{via} is missing in {netns}")
