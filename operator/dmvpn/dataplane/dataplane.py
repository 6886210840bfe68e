"""The facade the agent uses: one mGRE device, its neighbours and routes, in one network namespace."""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from types import TracebackType

from dmvpn.dataplane import neighbours as neigh_ops
from dmvpn.dataplane import routes as route_ops
from dmvpn.dataplane import tunnel as tunnel_ops
from dmvpn.dataplane.rtnl import IFF_NOARP, IFF_UP, Link, Rtnl
from dmvpn.dataplane.solicit import SolicitationListener
from dmvpn.dataplane.types import (
    RTPROT_DMVPN,
    Changes,
    DataplaneError,
    DeviceState,
    InterfaceStats,
    Neighbour,
    ReconcileReport,
    Route,
    Snapshot,
    TunnelConfig,
    TunnelReport,
)


class Dataplane:
    """Kernel state of one mGRE device. Use as ``async with Dataplane(config, netns=...) as dp``.

    ``netns`` is a namespace name (``/run/netns/<name>``), a path (a CNI_NETNS) or None (ours).
    Methods are idempotent: calling them again with the same input issues no netlink write
    (:attr:`writes` counts the writes, for tests and metrics). Errors raise :class:`DataplaneError`
    (or a subclass) and never leave half-built state behind.
    """

    def __init__(self, config: TunnelConfig, *, netns: str | None = None, proto: int = RTPROT_DMVPN) -> None:
        self.config = config
        self.netns = netns
        self.proto = proto
        self._rtnl = Rtnl(netns)
        self._ifindex: int | None = None  # our device's index, known after ensure_tunnel()

    @property
    def writes(self) -> int:
        """Netlink (and sysctl) writes issued so far: unchanged after an idempotent call."""
        return self._rtnl.writes

    async def open(self) -> None:
        """Open the netlink socket (in the namespace). Does not change anything."""
        await self._rtnl.open()

    async def close(self) -> None:
        """Close sockets. Leaves the kernel state in place (a restart adopts it)."""
        self._rtnl.close()

    async def __aenter__(self) -> Dataplane:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _device(self) -> Link | None:
        return await self._rtnl.link_by_name(self.config.name)

    async def _index(self) -> int:
        link = await self._device()
        if link is None:
            raise DataplaneError(f"device {self.config.name} does not exist: call ensure_tunnel() first")
        return link.index

    # --- the device ------------------------------------------------------------------------------

    async def ensure_tunnel(self) -> TunnelReport:
        """Create the mGRE device, or adopt a matching one untouched, or fix/recreate a differing one.

        Also (re)applies the tunnel address (/32), MTU, NOARP/Phase 2 sysctls and the up state.
        Raises :class:`DeviceConflict` if the name belongs to a non-GRE device.
        """
        report = await tunnel_ops.ensure_tunnel(self._rtnl, self.config)
        self._ifindex = report.ifindex
        return report

    async def remove_tunnel(self) -> bool:
        """Delete the device (and with it its neighbours and routes). False if it was not there."""
        self._ifindex = None
        link = await self._device()
        if link is None:
            return False
        return await self._rtnl.delete_link(link.index)

    # --- neighbours (NHRP bindings) --------------------------------------------------------------

    async def reconcile_neighbours(self, desired: Iterable[Neighbour]) -> ReconcileReport[Neighbour]:
        """Make our neighbours on the device exactly ``desired``: add, replace changed NBMA, remove others.

        Only entries marked with our protocol are ever removed; a foreign entry for a desired tunnel
        address is replaced (the desired binding wins: it is our device) and reported as replaced.
        """
        return await neigh_ops.reconcile(self._rtnl, await self._index(), desired, self.proto)

    async def set_neighbour(self, neighbour: Neighbour) -> bool:
        """Install or replace one binding (answer a solicitation, add a shortcut). True if it wrote."""
        index = await self._index()
        current = await self._rtnl.neighbour(index, neighbour.tunnel_ip)
        return await neigh_ops.set_one(self._rtnl, index, neighbour, self.proto, current)

    async def delete_neighbour(self, tunnel_ip: IPv4Address) -> bool:
        """Remove our binding for ``tunnel_ip``. False if there was none of ours."""
        return await neigh_ops.delete_if_ours(self._rtnl, await self._index(), tunnel_ip, self.proto)

    async def neighbours(self) -> tuple[Neighbour, ...]:
        """Our bindings on the device, sorted (empty if there is no device)."""
        link = await self._device()
        if link is None:
            return ()
        return neigh_ops.ours(await self._rtnl.neighbours(link.index), self.proto)

    # --- routes ----------------------------------------------------------------------------------

    async def reconcile_routes(self, desired: Iterable[Route]) -> ReconcileReport[Route]:
        """Make our routes (protocol ``proto``, main table, our device) exactly ``desired``.

        Foreign routes are never touched: a desired route whose prefix and metric a foreign route
        already holds is reported in ``conflicts`` instead of being installed.
        """
        return await route_ops.reconcile(self._rtnl, await self._index(), desired, self.proto)

    async def set_route(self, route: Route) -> bool:
        """Install or correct one of our routes. True if it wrote (False: in place, or a foreign conflict)."""
        oif = await self._index()
        current, foreign = await route_ops.table_state(self._rtnl, oif, self.proto)
        key = (route.prefix, route.metric)
        return await route_ops.set_one(self._rtnl, oif, route, self.proto, current.get(key), foreign=key in foreign)

    async def delete_route(self, prefix: IPv4Network, metric: int = 0) -> bool:
        """Remove our route to ``prefix`` (with ``metric``). False if there was none of ours."""
        oif = await self._index()
        for entry in await route_ops.ours(self._rtnl, oif, self.proto):
            if entry.prefix == prefix and entry.metric == metric:
                return await self._rtnl.delete_route(entry)
        return False

    async def routes(self) -> tuple[Route, ...]:
        """Our routes on the device, sorted (empty if there is no device)."""
        link = await self._device()
        if link is None:
            return ()
        return tuple(sorted(route_ops.as_route(e) for e in await route_ops.ours(self._rtnl, link.index, self.proto)))

    # --- incremental update ----------------------------------------------------------------------

    async def apply_changes(self, changes: Changes) -> ReconcileReport[Route]:
        """Write ``changes`` (see :class:`Changes`) without dumping the tables: new bindings first, then
        routes that use them, then removed routes, then removed bindings, so no route ever points at a
        tunnel address without its binding. Returns what happened to the routes (``conflicts``: new keys a
        foreign route holds). Drift from edits behind our back is for :meth:`reconcile_routes` to fix.
        """
        # The device's index as ensure_tunnel() left it: a link dump per shortcut would cost more than the
        # writes. If the device was replaced behind our back, a write fails and the next call looks again.
        index = self._ifindex if self._ifindex is not None else await self._index()
        try:
            await neigh_ops.set_all(self._rtnl, index, changes.set_neighbours, self.proto)
            report = await route_ops.apply(self._rtnl, index, changes, self.proto)
            await neigh_ops.remove_ours(self._rtnl, index, changes.remove_neighbours, self.proto)
        except DataplaneError:
            self._ifindex = None
            raise
        self._ifindex = index
        return report

    # --- Phase 2, stats, snapshot ----------------------------------------------------------------

    def solicitations(self) -> SolicitationListener:
        """Kernel requests for NBMA addresses on our device: ``async with dp.solicitations() as asks``."""
        return SolicitationListener(self.config.name, netns=self.netns)

    async def stats(self) -> InterfaceStats | None:
        """RX/TX counters of the device; None if it does not exist."""
        link = await self._device()
        return None if link is None else link.stats

    async def link_stats(self, ifname: str) -> InterfaceStats | None:
        """RX/TX counters of any device in the namespace (e.g. the underlay) for ``dmvpnctl``."""
        link = await self._rtnl.link_by_name(ifname)
        return None if link is None else link.stats

    async def snapshot(self) -> Snapshot:
        """The device, our neighbours and routes, and the counters, as they are now (reads only)."""
        link = await self._device()
        if link is None:
            return Snapshot(device=None)
        addresses = tuple(await self._rtnl.addresses(link.index))
        return Snapshot(
            device=_device_state(link, addresses),
            neighbours=neigh_ops.ours(await self._rtnl.neighbours(link.index), self.proto),
            routes=tuple(
                sorted(route_ops.as_route(e) for e in await route_ops.ours(self._rtnl, link.index, self.proto))
            ),
            stats=link.stats,
        )


def _device_state(link: Link, addresses: tuple[IPv4Interface, ...]) -> DeviceState:
    gre = link.gre
    return DeviceState(
        name=link.name,
        ifindex=link.index,
        kind=link.kind or "",
        up=bool(link.flags & IFF_UP),
        noarp=bool(link.flags & IFF_NOARP),
        mtu=link.mtu,
        ttl=gre.ttl if gre else 0,
        key=gre.okey if gre else None,
        local=gre.local if gre else None,
        remote=gre.remote if gre else None,
        link=gre.link if gre else 0,
        addresses=addresses,
    )
