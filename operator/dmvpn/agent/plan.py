"""Pure reconcile decisions: which neighbours and routes the kernel should hold, given the NHRP cache.

The agent is level-triggered: after any event it recomputes the whole desired set here and hands it to
the data plane, which writes only differences. Keeping these decisions free of I/O makes every DMVPN
phase rule a unit test.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from dmvpn.agent.config import HubPeer, NodeConfig
from dmvpn.dataplane import Changes, Neighbour, Route
from dmvpn.nhrp.cache import CacheEntry, EntryType


@dataclass(frozen=True)
class Desired:
    neighbours: frozenset[Neighbour] = field(default_factory=frozenset)
    routes: frozenset[Route] = field(default_factory=frozenset)


RouteKey = tuple[IPv4Network, int]  # how the kernel keys a route in one table: prefix and metric


def route_key(route: Route) -> RouteKey:
    return (route.prefix, route.metric)


def host(address: IPv4Address) -> IPv4Network:
    return IPv4Network((int(address), 32))  # from the integer: no text round trip


def active_hub(config: NodeConfig, nhs_up: Collection[IPv4Address]) -> HubPeer | None:
    """The hub that carries traffic via the hub: the first configured one that is up, else the first."""
    for hub in config.hubs:
        if hub.nbma in nhs_up:
            return hub
    return config.hubs[0] if config.hubs else None


def _spoke_kinds(config: NodeConfig) -> tuple[EntryType, ...]:
    return (EntryType.SHORTCUT, EntryType.CACHED) if config.phase == 2 else (EntryType.SHORTCUT,)


def uses(config: NodeConfig, entry_type: EntryType) -> bool:
    """Whether bindings of this type can shape :func:`desired` at all. A binding of another type that
    appears or goes (a Resolution Request's CACHED requester in Phase 3, a NEGATIVE entry) needs no
    reconcile pass, and on a spoke that pass would run just as the Resolution Reply comes in."""
    if config.is_hub:
        return entry_type == EntryType.DYNAMIC
    return config.phase != 1 and entry_type in _spoke_kinds(config)


def shortcut_usable(entry: CacheEntry, config: NodeConfig, sa_up: Collection[IPv4Address], now: float) -> bool:
    """A resolved binding may carry traffic only once its IPsec SA is up (when IPsec is required):
    installing it earlier would send packets into a missing SA and lose them while IKE runs.

    Phase 2 also uses what a peer's Resolution Request told us (CACHED, the S bit): the reply to its first
    packet must go straight back, since our route to its prefix points at its tunnel address, not the hub."""
    if entry.type not in _spoke_kinds(config) or entry.nbma is None or entry.next_hop is None or entry.expired(now):
        return False
    if not isinstance(entry.nbma, IPv4Address) or not isinstance(entry.next_hop, IPv4Address):
        return False
    return not config.ipsec.required or entry.nbma in sa_up


def _ours(prefix: IPv4Network, config: NodeConfig) -> bool:
    """Never route our own tunnel address or site prefixes into the tunnel."""
    if prefix.prefixlen == 32 and prefix.network_address == config.tunnel_ip:
        return True
    return any(_within(prefix, own) for own in config.site_prefixes)


def _within(inner: IPv4Network, outer: IPv4Network) -> bool:
    """``inner.subnet_of(outer)`` in integers: ipaddress's own check showed as a third of a plan's cost,
    and the plan is recomputed on the path from a Resolution Reply to the shortcut route."""
    outer_mask = int(outer.netmask)
    return inner.prefixlen >= outer.prefixlen and int(inner.network_address) & outer_mask == int(outer.network_address)


def spoke_desired(
    config: NodeConfig,
    entries: Iterable[CacheEntry],
    nhs_up: Collection[IPv4Address],
    sa_up: Collection[IPv4Address],
    now: float,
) -> Desired:
    neighbours = {Neighbour(hub.tunnel_ip, hub.nbma) for hub in config.hubs}
    routes: set[Route] = set()
    hub = active_hub(config, nhs_up)
    if hub is not None:
        # Phase 2 resolves other spokes' tunnel addresses on the link (kernel solicitations); Phases 1
        # and 3 send them via the hub (and FRR answers resolutions only with such a route).
        routes.add(
            Route(config.tunnel_network) if config.phase == 2 else Route(config.tunnel_network, via=hub.tunnel_ip)
        )
        routes |= _hub_routes(config, hub)
        for peer in config.peer_spokes:
            for prefix in peer.site_prefixes:
                if config.phase == 1:
                    routes.add(Route(prefix, via=hub.tunnel_ip))
                elif config.phase == 2:
                    routes.add(Route(prefix, via=peer.tunnel_ip))
    if config.phase != 1:
        for entry in entries:
            if not shortcut_usable(entry, config, sa_up, now):
                continue
            assert isinstance(entry.next_hop, IPv4Address) and isinstance(entry.nbma, IPv4Address)
            if not isinstance(entry.prefix, IPv4Network) or _ours(entry.prefix, config):
                continue
            prefix = entry.prefix
            neighbours.add(Neighbour(entry.next_hop, entry.nbma))
            if prefix == host(entry.next_hop):
                if config.phase == 3:
                    routes.add(Route(prefix))  # the peer's tunnel address, directly on the link
            else:
                routes.add(Route(prefix, via=entry.next_hop))
    return Desired(frozenset(neighbours), frozenset(routes))


def _hub_routes(config: NodeConfig, active: HubPeer) -> set[Route]:
    """Each hub's own site prefixes via that hub (its LAN is behind it, whichever hub is active: the
    other hub has no route to it), then every hub's summary prefixes via the active hub."""
    routes: set[Route] = set()
    routed: set[IPv4Network] = {config.tunnel_network}
    for hub in config.hubs:
        for prefix in hub.site_prefixes:
            if prefix not in routed:
                routed.add(prefix)
                routes.add(Route(prefix, via=hub.tunnel_ip))
    for hub in config.hubs:
        for prefix in hub.summary_prefixes:
            if prefix not in routed:
                routed.add(prefix)
                routes.add(Route(prefix, via=active.tunnel_ip))
    return routes


def hub_desired(config: NodeConfig, entries: Iterable[CacheEntry], now: float) -> Desired:
    """A hub: every registered spoke's tunnel address on the link, its site prefixes via it."""
    neighbours: set[Neighbour] = set()
    routes: set[Route] = {Route(config.tunnel_network)}
    for entry in entries:
        if entry.type != EntryType.DYNAMIC or entry.expired(now) or entry.next_hop is None:
            continue
        if not isinstance(entry.next_hop, IPv4Address) or not isinstance(entry.prefix, IPv4Network):
            continue
        if isinstance(entry.nbma, IPv4Address):
            neighbours.add(Neighbour(entry.next_hop, entry.nbma))
        if entry.prefix != host(entry.next_hop) and not _ours(entry.prefix, config):
            routes.add(Route(entry.prefix, via=entry.next_hop))
    return Desired(frozenset(neighbours), frozenset(routes))


def desired(
    config: NodeConfig,
    entries: Iterable[CacheEntry],
    nhs_up: Collection[IPv4Address],
    sa_up: Collection[IPv4Address],
    now: float,
) -> Desired:
    if config.is_hub:
        return hub_desired(config, entries, now)
    return spoke_desired(config, entries, nhs_up, sa_up, now)


def changes(before: Desired, after: Desired, conflicts: Collection[RouteKey] = ()) -> Changes:
    """The writes that turn ``before`` (installed) into ``after``. ``conflicts``: route keys a foreign
    route held when we tried them; they are tried again as new keys (create only), never replaced."""
    had_binding = {n.tunnel_ip: n for n in sorted(before.neighbours)}
    wants_binding = {n.tunnel_ip: n for n in sorted(after.neighbours)}  # last one wins, like the full reconcile
    had_route = {route_key(r): r for r in before.routes}
    add: list[Route] = []
    change: list[Route] = []
    for key, route in sorted((route_key(r), r) for r in after.routes):
        if key not in had_route:
            add.append(route)
        elif had_route[key] != route:
            (add if key in conflicts else change).append(route)
    wanted_keys = {route_key(r) for r in after.routes}
    return Changes(
        set_neighbours=tuple(n for ip, n in sorted(wants_binding.items()) if had_binding.get(ip) != n),
        remove_neighbours=tuple(n for ip, n in sorted(had_binding.items()) if ip not in wants_binding),
        add_routes=tuple(add),
        change_routes=tuple(change),
        remove_routes=tuple(r for k, r in sorted(had_route.items()) if k not in wanted_keys and k not in conflicts),
    )


# --- adoption after a restart --------------------------------------------------------------------


def adopted_entries(
    config: NodeConfig, neighbours: Iterable[Neighbour], routes: Iterable[Route], now: float
) -> list[CacheEntry]:
    """Cache entries that rebuild, from what a previous agent left in the kernel, the bindings it had.

    A hub takes its neighbours and routes as registrations (spokes refresh them in time); a spoke takes
    bindings to peers other than its hubs as shortcuts. They expire after one holding time unless
    refreshed, so stale state cannot live forever.
    """
    hubs = {hub.tunnel_ip for hub in config.hubs}
    kind = EntryType.DYNAMIC if config.is_hub else EntryType.SHORTCUT
    expires = now + config.hold_time
    nbma_of: dict[IPv4Address, IPv4Address] = {}
    entries: list[CacheEntry] = []
    for neighbour in neighbours:
        if neighbour.tunnel_ip in hubs or neighbour.tunnel_ip == config.tunnel_ip:
            continue
        nbma_of[neighbour.tunnel_ip] = neighbour.nbma
        entries.append(
            CacheEntry(
                prefix=host(neighbour.tunnel_ip),
                type=kind,
                nbma=neighbour.nbma,
                next_hop=neighbour.tunnel_ip,
                expires=expires,
            )
        )
    for route in routes:
        if route.via is None or route.via in hubs or route.via not in nbma_of:
            continue
        entries.append(
            CacheEntry(prefix=route.prefix, type=kind, nbma=nbma_of[route.via], next_hop=route.via, expires=expires)
        )
    return entries
