"""Desired-set reconcile of our routes over the mGRE (marked with our protocol number, main table)."""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Network

from dmvpn.dataplane.rtnl import RT_TABLE_MAIN, RouteEntry, Rtnl
from dmvpn.dataplane.rtwrite import RT_SCOPE_LINK, RT_SCOPE_UNIVERSE
from dmvpn.dataplane.types import Changes, ReconcileReport, Route

RouteKey = tuple[IPv4Network, int]  # what the kernel keys a route by (table fixed): prefix and metric


def as_route(entry: RouteEntry) -> Route:
    return Route(entry.prefix, entry.gateway, entry.metric)


def matches(entry: RouteEntry, want: Route, oif: int) -> bool:
    """The kernel route is exactly what we would install."""
    if entry.oif != oif or entry.gateway != want.via:
        return False
    if want.via is None:
        return entry.scope == RT_SCOPE_LINK
    return entry.onlink


def is_ours(entry: RouteEntry, oif: int, proto: int) -> bool:
    """Ours: our protocol on our device (another mGRE of another cloud may use the same protocol)."""
    return entry.proto == proto and entry.oif == oif


async def table_state(rtnl: Rtnl, oif: int, proto: int) -> tuple[dict[RouteKey, RouteEntry], set[RouteKey]]:
    """Our routes by key, and the keys that foreign routes hold (we must not overwrite those)."""
    ours: dict[RouteKey, RouteEntry] = {}
    foreign: set[RouteKey] = set()
    for entry in await rtnl.routes():
        key = (entry.prefix, entry.metric)
        if is_ours(entry, oif, proto):
            ours[key] = entry
        else:
            foreign.add(key)
    return ours, foreign


async def ours(rtnl: Rtnl, oif: int, proto: int) -> list[RouteEntry]:
    return list((await table_state(rtnl, oif, proto))[0].values())


async def set_one(
    rtnl: Rtnl, oif: int, want: Route, proto: int, current: RouteEntry | None, foreign: bool = False
) -> bool:
    """Install or correct one route. False when it was in place, or when a foreign route holds the key
    (we never replace what is not ours; the kernel keys a route by prefix and metric, not device)."""
    if current is not None:
        if matches(current, want, oif):
            return False
        await rtnl.replace_route(want.prefix, want.via, oif, want.metric, proto)
        return True
    if foreign:
        return False
    return await rtnl.add_route(want.prefix, want.via, oif, want.metric, proto)


async def reconcile(rtnl: Rtnl, oif: int, desired: Iterable[Route], proto: int) -> ReconcileReport[Route]:
    wanted: dict[RouteKey, Route] = {(route.prefix, route.metric): route for route in desired}
    current, foreign = await table_state(rtnl, oif, proto)
    added: list[Route] = []
    replaced: list[Route] = []
    removed: list[Route] = []
    conflicts: list[Route] = []
    for key, want in sorted(wanted.items()):
        entry = current.get(key)
        wrote = await set_one(rtnl, oif, want, proto, entry, foreign=key in foreign)
        if entry is None:
            (added if wrote else conflicts).append(want)
        elif wrote:
            replaced.append(want)
    for key, entry in sorted(current.items()):
        if key not in wanted and await rtnl.delete_route(entry):
            removed.append(as_route(entry))
    return ReconcileReport(tuple(added), tuple(replaced), tuple(removed), tuple(conflicts))


def _our_entry(route: Route, oif: int, proto: int) -> RouteEntry:
    """The kernel entry we would have installed for ``route`` (what a delete names: prefix, metric, our
    protocol and device, so the kernel never matches a foreign route with the same prefix)."""
    scope = RT_SCOPE_LINK if route.via is None else RT_SCOPE_UNIVERSE
    return RouteEntry(route.prefix, route.via, oif, route.metric, proto, scope, route.via is not None, RT_TABLE_MAIN)


async def apply(rtnl: Rtnl, oif: int, changes: Changes, proto: int) -> ReconcileReport[Route]:
    """Write only ``changes`` (no dump): create new keys, replace our changed ones, delete ours."""
    added: list[Route] = []
    conflicts: list[Route] = []
    for route in changes.add_routes:
        created = await rtnl.add_route(route.prefix, route.via, oif, route.metric, proto)
        (added if created else conflicts).append(route)
    for route in changes.change_routes:
        await rtnl.replace_route(route.prefix, route.via, oif, route.metric, proto)
    removed = [route for route in changes.remove_routes if await rtnl.delete_route(_our_entry(route, oif, proto))]
    return ReconcileReport(tuple(added), changes.change_routes, tuple(removed), tuple(conflicts))
