"""The facade the agent uses: one mGRE device, its neighbours and routes, in one network namespace."""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network
from types import TracebackType

from dmvpn.dataplane.solicit import SolicitationListener
from dmvpn.dataplane.types import (
    RTPROT_DMVPN,
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
        self.writes = 0

    async def open(self) -> None:
        """Open the netlink socket (in the namespace). Does not change anything."""
        raise NotImplementedError

    async def close(self) -> None:
        """Close sockets. Leaves the kernel state in place (a restart adopts it)."""
        raise NotImplementedError

    async def __aenter__(self) -> Dataplane:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- the device ------------------------------------------------------------------------------

    async def ensure_tunnel(self) -> TunnelReport:
        """Create the mGRE device, or adopt a matching one untouched, or fix/recreate a differing one."""
        raise NotImplementedError

    async def remove_tunnel(self) -> bool:
        """Delete the device (and with it its neighbours and routes). False if it was not there."""
        raise NotImplementedError

    # --- neighbours (NHRP bindings) --------------------------------------------------------------

    async def reconcile_neighbours(self, desired: Iterable[Neighbour]) -> ReconcileReport[Neighbour]:
        """Make our neighbours on the device exactly ``desired``: add, replace changed NBMA, remove others.

        Only entries marked with our protocol are ever replaced or removed; a foreign entry for a
        desired tunnel address is replaced (the desired binding wins) and reported as replaced.
        """
        raise NotImplementedError

    async def set_neighbour(self, neighbour: Neighbour) -> bool:
        """Install or replace one binding (answer a solicitation, add a shortcut). True if it wrote."""
        raise NotImplementedError

    async def delete_neighbour(self, tunnel_ip: IPv4Address) -> bool:
        """Remove our binding for ``tunnel_ip``. False if there was none of ours."""
        raise NotImplementedError

    async def neighbours(self) -> tuple[Neighbour, ...]:
        """Our bindings on the device, sorted."""
        raise NotImplementedError

    # --- routes ----------------------------------------------------------------------------------

    async def reconcile_routes(self, desired: Iterable[Route]) -> ReconcileReport[Route]:
        """Make our routes (protocol ``proto``, main table) exactly ``desired``; others are never touched."""
        raise NotImplementedError

    async def set_route(self, route: Route) -> bool:
        """Install or replace one of our routes. True if it wrote."""
        raise NotImplementedError

    async def delete_route(self, prefix: IPv4Network, metric: int = 0) -> bool:
        """Remove our route to ``prefix`` (with ``metric``). False if there was none of ours."""
        raise NotImplementedError

    async def routes(self) -> tuple[Route, ...]:
        """Our routes, sorted."""
        raise NotImplementedError

    # --- Phase 2, stats, snapshot ----------------------------------------------------------------

    def solicitations(self) -> SolicitationListener:
        """Kernel requests for NBMA addresses on our device: ``async with dp.solicitations() as s``."""
        return SolicitationListener(self.config.name, netns=self.netns)

    async def stats(self) -> InterfaceStats | None:
        """RX/TX counters of the device; None if it does not exist."""
        raise NotImplementedError

    async def snapshot(self) -> Snapshot:
        """The device, our neighbours and routes, and the counters, as they are now."""
        raise NotImplementedError
