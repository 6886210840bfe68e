"""Desired-set reconcile of NHRP bindings (tunnel address -> NBMA) as permanent neighbours on the mGRE."""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address

from dmvpn.dataplane.rtnl import NeighEntry, Rtnl
from dmvpn.dataplane.rtwrite import NUD_PERMANENT
from dmvpn.dataplane.types import Neighbour, ReconcileReport


def is_ours(entry: NeighEntry, proto: int) -> bool:
    return entry.proto == proto


def in_place(entry: NeighEntry | None, want: Neighbour, proto: int) -> bool:
    """The kernel already holds exactly our binding (a permanent entry with our mark and NBMA)."""
    return entry is not None and is_ours(entry, proto) and entry.state == NUD_PERMANENT and entry.lladdr == want.nbma


def is_valid_binding(entry: NeighEntry) -> bool:
    """Had a usable link-layer address (INCOMPLETE/FAILED entries from solicitations have none)."""
    return entry.lladdr is not None


def ours(entries: Iterable[NeighEntry], proto: int) -> tuple[Neighbour, ...]:
    return tuple(sorted(Neighbour(e.dst, e.lladdr) for e in entries if is_ours(e, proto) and e.lladdr is not None))


async def set_one(rtnl: Rtnl, index: int, want: Neighbour, proto: int, current: NeighEntry | None) -> bool:
    if in_place(current, want, proto):
        return False
    await rtnl.replace_neighbour(index, want.tunnel_ip, want.nbma, proto)
    return True


async def reconcile(rtnl: Rtnl, index: int, desired: Iterable[Neighbour], proto: int) -> ReconcileReport[Neighbour]:
    """Add missing, replace changed (ours or a foreign entry for a desired address), remove ours not desired."""
    wanted: dict[IPv4Address, Neighbour] = {}
    for neighbour in desired:
        wanted[neighbour.tunnel_ip] = neighbour  # last one wins, like a dict update
    current = {entry.dst: entry for entry in await rtnl.neighbours(index)}
    added: list[Neighbour] = []
    replaced: list[Neighbour] = []
    removed: list[Neighbour] = []
    for tunnel_ip, want in sorted(wanted.items()):
        entry = current.get(tunnel_ip)
        if not await set_one(rtnl, index, want, proto, entry):
            continue
        (replaced if entry is not None and is_valid_binding(entry) else added).append(want)
    for tunnel_ip, entry in sorted(current.items()):
        if tunnel_ip in wanted or not is_ours(entry, proto):
            continue
        if await rtnl.delete_neighbour(index, tunnel_ip) and entry.lladdr is not None:
            removed.append(Neighbour(tunnel_ip, entry.lladdr))
    return ReconcileReport(tuple(added), tuple(replaced), tuple(removed))


async def set_all(rtnl: Rtnl, index: int, wanted: Iterable[Neighbour], proto: int) -> None:
    """Install or replace each binding without reading first (one write each): the desired binding wins
    on our device, as in :func:`reconcile`."""
    for want in wanted:
        await rtnl.replace_neighbour(index, want.tunnel_ip, want.nbma, proto)


async def delete_if_ours(rtnl: Rtnl, index: int, tunnel_ip: IPv4Address, proto: int) -> bool:
    """Delete the binding for ``tunnel_ip`` if the kernel holds it as ours (a foreign entry stays): one
    read and at most one write. False if there was none of ours."""
    entry = await rtnl.neighbour(index, tunnel_ip)
    if entry is None or not is_ours(entry, proto):
        return False
    return await rtnl.delete_neighbour(index, tunnel_ip)


async def remove_ours(rtnl: Rtnl, index: int, gone: Iterable[Neighbour], proto: int) -> tuple[Neighbour, ...]:
    """Delete each binding the kernel still holds as ours (a foreign entry that took the address since
    stays)."""
    return tuple([neighbour for neighbour in gone if await delete_if_ours(rtnl, index, neighbour.tunnel_ip, proto)])
