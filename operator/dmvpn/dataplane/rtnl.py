"""Small typed wrappers over pyroute2's ``AsyncIPRoute``: the only module that calls it.

The per-shortcut writes (neighbour set/delete, route add/replace/delete) go out on a second rtnetlink
socket, encoded by :mod:`dmvpn.dataplane.rtwrite` (why: its docstring); reads and links stay on pyroute2.

pyroute2 has no type hints and returns dict-like messages; everything leaving this module is a plain
typed value. Every write goes through :meth:`Rtnl._write`, which counts it (idempotence is asserted
by counting) and turns ``NetlinkError`` into :class:`DataplaneError` with the errno spelled out.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from dmvpn.dataplane import rtwrite
from dmvpn.dataplane.errors import EEXIST, NOT_THERE, netlink_failure
from dmvpn.dataplane.netns import netns_path
from dmvpn.dataplane.rtwrite import RTNH_F_ONLINK
from dmvpn.dataplane.types import GRE_KEY_FLAG, DataplaneError, InterfaceStats, NamespaceGone

IFF_UP = 0x1
IFF_NOARP = 0x80
NUD_INCOMPLETE = 0x01
NUD_REACHABLE = 0x02
NUD_FAILED = 0x20
NUD_NOARP = 0x40
RT_TABLE_MAIN = 254
_NOT_OPEN = "netlink socket is not open (use 'async with')"


@dataclass(frozen=True)
class GreParams:
    """The GRE part of a link (IFLA_GRE_*), as we set and compare it."""

    local: IPv4Address | None
    remote: IPv4Address | None
    link: int
    ikey: int | None
    okey: int | None
    ttl: int
    pmtudisc: bool = True


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None
    flags: int
    mtu: int
    gre: GreParams | None
    stats: InterfaceStats | None


@dataclass(frozen=True)
class NeighEntry:
    dst: IPv4Address
    lladdr: IPv4Address | None
    state: int
    proto: int


@dataclass(frozen=True)
class RouteEntry:
    prefix: IPv4Network
    gateway: IPv4Address | None
    oif: int | None
    metric: int
    proto: int
    scope: int
    onlink: bool
    table: int


def _attr(msg: Any, name: str, default: Any = None) -> Any:
    value = msg.get_attr(name)
    return default if value is None else value


def _ipv4_or_none(value: Any) -> IPv4Address | None:
    if not value:
        return None
    try:
        address = IPv4Address(str(value))
    except ValueError:
        return None
    return None if address == IPv4Address(0) else address


def _gre_params(info: Any) -> GreParams:
    iflags = int(_attr(info, "IFLA_GRE_IFLAGS", 0))
    oflags = int(_attr(info, "IFLA_GRE_OFLAGS", 0))
    return GreParams(
        local=_ipv4_or_none(_attr(info, "IFLA_GRE_LOCAL")),
        remote=_ipv4_or_none(_attr(info, "IFLA_GRE_REMOTE")),
        link=int(_attr(info, "IFLA_GRE_LINK", 0)),
        ikey=int(_attr(info, "IFLA_GRE_IKEY", 0)) if iflags & GRE_KEY_FLAG else None,
        okey=int(_attr(info, "IFLA_GRE_OKEY", 0)) if oflags & GRE_KEY_FLAG else None,
        ttl=int(_attr(info, "IFLA_GRE_TTL", 0)),
        pmtudisc=bool(_attr(info, "IFLA_GRE_PMTUDISC", 1)),
    )


def _stats(msg: Any) -> InterfaceStats | None:
    raw = msg.get_attr("IFLA_STATS64") or msg.get_attr("IFLA_STATS")
    if not raw:
        return None
    return InterfaceStats(
        rx_packets=int(raw["rx_packets"]),
        tx_packets=int(raw["tx_packets"]),
        rx_bytes=int(raw["rx_bytes"]),
        tx_bytes=int(raw["tx_bytes"]),
        rx_errors=int(raw["rx_errors"]),
        tx_errors=int(raw["tx_errors"]),
        rx_dropped=int(raw["rx_dropped"]),
        tx_dropped=int(raw["tx_dropped"]),
    )


def parse_link(msg: Any) -> Link:
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo else None
    data = linkinfo.get_attr("IFLA_INFO_DATA") if linkinfo else None
    return Link(
        index=int(msg["index"]),
        name=str(msg.get_attr("IFLA_IFNAME")),
        kind=str(kind) if kind else None,
        flags=int(msg["flags"]),
        mtu=int(_attr(msg, "IFLA_MTU", 0)),
        gre=_gre_params(data) if kind == "gre" and data is not None else None,
        stats=_stats(msg),
    )


def parse_neigh(msg: Any) -> NeighEntry | None:
    if msg["family"] != socket.AF_INET:
        return None
    dst = _ipv4_or_none(msg.get_attr("NDA_DST"))
    if dst is None:
        return None
    return NeighEntry(
        dst=dst,
        lladdr=_ipv4_or_none(msg.get_attr("NDA_LLADDR")),
        state=int(msg["state"]),
        proto=int(_attr(msg, "NDA_PROTOCOL", 0)),
    )


def parse_route(msg: Any) -> RouteEntry | None:
    if msg["family"] != socket.AF_INET:
        return None
    dst = _attr(msg, "RTA_DST", "0.0.0.0")
    table = int(_attr(msg, "RTA_TABLE", msg["table"]))
    return RouteEntry(
        prefix=IPv4Network(f"{dst}/{int(msg['dst_len'])}"),
        gateway=_ipv4_or_none(msg.get_attr("RTA_GATEWAY")),
        oif=int(msg.get_attr("RTA_OIF")) if msg.get_attr("RTA_OIF") is not None else None,
        metric=int(_attr(msg, "RTA_PRIORITY", 0)),
        proto=int(msg["proto"]),
        scope=int(msg["scope"]),
        onlink=bool(int(msg["flags"]) & RTNH_F_ONLINK),
        table=table,
    )


def gre_kwargs(gre: GreParams) -> dict[str, Any]:
    """pyroute2 keyword arguments for the GRE attributes (no remote: multipoint)."""
    kwargs: dict[str, Any] = {
        "gre_local": str(gre.local) if gre.local else "0.0.0.0",
        "gre_link": gre.link,
        "gre_ttl": gre.ttl,
        "gre_pmtudisc": int(gre.pmtudisc),
        "gre_iflags": GRE_KEY_FLAG if gre.ikey is not None else 0,
        "gre_oflags": GRE_KEY_FLAG if gre.okey is not None else 0,
    }
    if gre.ikey is not None:
        kwargs["gre_ikey"] = gre.ikey
    if gre.okey is not None:
        kwargs["gre_okey"] = gre.okey
    return kwargs


class Rtnl:
    """One rtnetlink socket in one namespace. ``writes`` counts every change we asked for."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self.writes = 0
        self._ipr: Any = None
        self._writer = rtwrite.RouteWriter(netns)

    async def open(self) -> None:
        if self._ipr is not None:
            return
        kwargs: dict[str, Any] = {}
        if self.netns is not None:
            # flags=0: never create a namespace that is gone (pyroute2's default would).
            kwargs = {"netns": netns_path(self.netns), "flags": 0}
        ipr = AsyncIPRoute(**kwargs)
        try:
            await ipr.setup_endpoint()
        except (OSError, NetlinkError) as err:
            ipr.close()
            raise NamespaceGone(f"cannot open netlink in namespace {self.netns}: {err}") from err
        try:
            self._writer.open()
        except OSError as err:
            ipr.close()
            raise NamespaceGone(f"cannot open netlink in namespace {self.netns}: {err}") from err
        self._ipr = ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        self._writer.close()

    @property
    def ipr(self) -> Any:
        if self._ipr is None:
            raise DataplaneError(_NOT_OPEN)
        return self._ipr

    async def _write(self, action: str, call: Callable[[], Awaitable[Any]], ok_codes: frozenset[int]) -> bool:
        """Issue one write; False if the kernel answered with an errno in ``ok_codes``."""
        self.writes += 1
        try:
            await call()
        except NetlinkError as err:
            if err.code in ok_codes:
                return False
            raise netlink_failure(action, err.code) from err
        return True

    async def _fast_write(self, action: str, message: rtwrite.Message, ok_codes: frozenset[int]) -> bool:
        """:meth:`_write` for a request encoded by :mod:`dmvpn.dataplane.rtwrite` (sent on its socket)."""

        async def send() -> None:
            if self._ipr is None:  # the write socket opens and closes with pyroute2's
                raise DataplaneError(_NOT_OPEN)
            code = await self._writer.write(message)
            if code:
                raise NetlinkError(code)

        return await self._write(action, send, ok_codes)

    # --- links -----------------------------------------------------------------------------------

    async def link_by_name(self, name: str) -> Link | None:
        try:
            msgs = await self.ipr.link("get", ifname=name)
        except NetlinkError as err:
            if err.code in NOT_THERE:
                return None
            raise netlink_failure(f"get link {name}", err.code) from err
        return parse_link(msgs[0]) if msgs else None

    async def link_by_index(self, index: int) -> Link | None:
        try:
            msgs = await self.ipr.link("get", index=index)
        except NetlinkError as err:
            if err.code in NOT_THERE:
                return None
            raise netlink_failure(f"get link #{index}", err.code) from err
        return parse_link(msgs[0]) if msgs else None

    async def create_gre(self, name: str, gre: GreParams, mtu: int) -> None:
        created = await self._write(
            f"create GRE device {name}",
            lambda: self.ipr.link("add", ifname=name, kind="gre", mtu=mtu, **gre_kwargs(gre)),
            frozenset({EEXIST}),
        )
        if not created:
            # The name is free (the caller looked it up), so the kernel refused a second multipoint GRE device
            # with the same local address and key: it could not tell their packets apart.
            raise DataplaneError(
                f"create GRE device {name}: another GRE device in this namespace already uses local address "
                f"{gre.local or 'any'} and key {gre.ikey if gre.ikey is not None else 'none'} with no remote; "
                "remove it or give this tunnel another greKey"
            )

    async def change_gre(self, index: int, gre: GreParams, mtu: int) -> None:
        # The kernel rebuilds all GRE parameters from one changelink (absent ones become 0) and
        # recomputes the MTU unless IFLA_MTU comes with it: so we always send the full set.
        await self._write(
            f"change GRE device #{index}",
            lambda: self.ipr.link("set", index=index, kind="gre", mtu=mtu, **gre_kwargs(gre)),
            frozenset(),
        )

    async def set_mtu(self, index: int, mtu: int) -> None:
        await self._write(f"set mtu {mtu} on #{index}", lambda: self.ipr.link("set", index=index, mtu=mtu), frozenset())

    async def set_flag(self, index: int, flag: int, on: bool) -> None:
        await self._write(
            f"set flag {flag:#x}={on} on #{index}",
            lambda: self.ipr.link("set", index=index, flags=flag if on else 0, change=flag),
            frozenset(),
        )

    async def delete_link(self, index: int) -> bool:
        return await self._write(f"delete link #{index}", lambda: self.ipr.link("del", index=index), NOT_THERE)

    # --- addresses -------------------------------------------------------------------------------

    async def addresses(self, index: int) -> list[IPv4Interface]:
        found: list[IPv4Interface] = []
        async for msg in await self.ipr.addr("dump", family=socket.AF_INET, index=index):
            if int(msg["index"]) != index:
                continue
            local = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            found.append(IPv4Interface(f"{local}/{int(msg['prefixlen'])}"))
        return found

    async def add_address(self, index: int, address: IPv4Interface) -> None:
        await self._write(
            f"add address {address} on #{index}",
            lambda: self.ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen),
            frozenset({EEXIST}),
        )

    async def delete_address(self, index: int, address: IPv4Interface) -> None:
        await self._write(
            f"delete address {address} on #{index}",
            lambda: self.ipr.addr("del", index=index, address=str(address.ip), prefixlen=address.network.prefixlen),
            NOT_THERE | {99},  # EADDRNOTAVAIL: already gone
        )

    # --- neighbours ------------------------------------------------------------------------------

    async def neighbours(self, index: int) -> list[NeighEntry]:
        found: list[NeighEntry] = []
        async for msg in await self.ipr.neigh("dump", family=socket.AF_INET, ifindex=index):
            if int(msg["ifindex"]) != index:
                continue
            entry = parse_neigh(msg)
            if entry is not None:
                found.append(entry)
        return found

    async def neighbour(self, index: int, dst: IPv4Address) -> NeighEntry | None:
        """One entry by address (RTM_GETNEIGH get, no dump): the fast path for answering solicitations."""
        try:
            msgs = await self.ipr.neigh("get", ifindex=index, dst=str(dst), family=socket.AF_INET)
        except NetlinkError as err:
            if err.code in NOT_THERE:
                return None
            raise netlink_failure(f"get neighbour {dst}", err.code) from err
        for msg in msgs:
            entry = parse_neigh(msg)
            if entry is not None and entry.dst == dst:
                return entry
        return None

    async def replace_neighbour(self, index: int, dst: IPv4Address, lladdr: IPv4Address, proto: int) -> None:
        await self._fast_write(
            f"set neighbour {dst} lladdr {lladdr} on #{index}",
            rtwrite.set_neighbour(index, dst, lladdr, proto),
            frozenset(),
        )

    async def delete_neighbour(self, index: int, dst: IPv4Address) -> bool:
        message = rtwrite.delete_neighbour(index, dst)
        return await self._fast_write(f"delete neighbour {dst} on #{index}", message, NOT_THERE)

    # --- routes ----------------------------------------------------------------------------------

    async def routes(self, table: int = RT_TABLE_MAIN) -> list[RouteEntry]:
        """Every IPv4 route of the table (callers pick ours by protocol and device)."""
        found: list[RouteEntry] = []
        async for msg in await self.ipr.route("dump", family=socket.AF_INET, table=table):
            entry = parse_route(msg)
            if entry is not None and entry.table == table:
                found.append(entry)
        return found

    async def add_route(self, prefix: IPv4Network, via: IPv4Address | None, oif: int, metric: int, proto: int) -> bool:
        """Create (never replace); False if a route with the same key already exists (maybe not ours)."""
        message = rtwrite.set_route(prefix, via, oif, metric, proto, RT_TABLE_MAIN, replace=False)
        return await self._fast_write(f"add route {prefix}", message, frozenset({EEXIST}))

    async def replace_route(
        self, prefix: IPv4Network, via: IPv4Address | None, oif: int, metric: int, proto: int
    ) -> None:
        message = rtwrite.set_route(prefix, via, oif, metric, proto, RT_TABLE_MAIN, replace=True)
        await self._fast_write(f"replace route {prefix}", message, frozenset())

    async def delete_route(self, route: RouteEntry) -> bool:
        message = rtwrite.delete_route(route.prefix, route.oif, route.metric, route.proto, route.table)
        return await self._fast_write(f"delete route {route.prefix}", message, NOT_THERE)
