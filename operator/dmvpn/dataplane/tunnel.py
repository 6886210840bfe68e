"""Create, adopt, correct or recreate the multipoint GRE device (never flushing what already works)."""

from __future__ import annotations

from ipaddress import IPv4Interface

from dmvpn.dataplane.rtnl import IFF_NOARP, IFF_UP, GreParams, Link, Rtnl
from dmvpn.dataplane.sysctl import ensure_sysctls, phase2_sysctls
from dmvpn.dataplane.types import DataplaneError, DeviceConflict, TunnelAction, TunnelConfig, TunnelReport


def device_address(config: TunnelConfig) -> IPv4Interface:
    """The tunnel address as installed: /32 (FRR's way; reachability comes from routes, see docs)."""
    return IPv4Interface(f"{config.address.ip}/32")


def wanted_gre(config: TunnelConfig, underlay_index: int) -> GreParams:
    return GreParams(
        local=config.local,
        remote=None,
        link=underlay_index,
        ikey=config.key,
        okey=config.key,
        ttl=config.ttl,
    )


def gre_differences(have: GreParams, want: GreParams) -> list[str]:
    """Human-readable differences, e.g. 'key 41 -> 42' (empty when the device matches)."""
    pairs = [
        ("local", have.local, want.local),
        ("remote", have.remote, want.remote),
        ("link", have.link, want.link),
        ("ikey", have.ikey, want.ikey),
        ("okey", have.okey, want.okey),
        ("ttl", have.ttl, want.ttl),
        ("pmtudisc", have.pmtudisc, want.pmtudisc),
    ]
    return [f"{name} {_show(old)} -> {_show(new)}" for name, old, new in pairs if old != new]


def _show(value: object) -> str:
    return "none" if value is None else str(value)


async def underlay_index(rtnl: Rtnl, name: str) -> int:
    link = await rtnl.link_by_name(name)
    if link is None:
        raise DataplaneError(f"underlay device {name} not found: the tunnel must be bound to it")
    return link.index


async def ensure_tunnel(rtnl: Rtnl, config: TunnelConfig) -> TunnelReport:
    """Make the device match ``config``; see :class:`TunnelAction` for the possible outcomes."""
    want = wanted_gre(config, await underlay_index(rtnl, config.underlay))
    link = await rtnl.link_by_name(config.name)
    if link is None:
        return await _create(rtnl, config, want, TunnelAction.CREATED, ())
    if link.kind != "gre" or link.gre is None:
        raise DeviceConflict(f"{config.name} exists but is a {link.kind or 'plain'} device, not GRE: not ours")
    gre_changes = gre_differences(link.gre, want)
    if gre_changes:
        # The change below carries the MTU too: report it here, _converge will find it in place.
        if link.mtu != config.mtu:
            gre_changes.append(f"mtu {link.mtu} -> {config.mtu}")
        changed = await _change_or_recreate(rtnl, config, link, want, gre_changes)
        if changed is not None:
            return changed
        link = await _must_get(rtnl, config.name)
    changes = [*gre_changes, *await _converge(rtnl, config, link)]
    action = TunnelAction.UPDATED if changes else TunnelAction.ADOPTED
    return TunnelReport(action, link.index, tuple(changes))


async def _change_or_recreate(
    rtnl: Rtnl, config: TunnelConfig, link: Link, want: GreParams, changes: list[str]
) -> TunnelReport | None:
    """Change GRE parameters in place (keeps addresses, neighbours, routes); recreate if refused."""
    try:
        await rtnl.change_gre(link.index, want, config.mtu)
    except DataplaneError:
        await rtnl.delete_link(link.index)
        return await _create(rtnl, config, want, TunnelAction.RECREATED, tuple(changes))
    # A device with a remote is point-to-point; the kernel cannot turn it multipoint in place.
    after = await _must_get(rtnl, config.name)
    if after.gre is not None and gre_differences(after.gre, want):
        await rtnl.delete_link(link.index)
        return await _create(rtnl, config, want, TunnelAction.RECREATED, tuple(changes))
    return None


async def _must_get(rtnl: Rtnl, name: str) -> Link:
    link = await rtnl.link_by_name(name)
    if link is None:
        raise DataplaneError(f"{name} vanished while we configured it")
    return link


async def _create(
    rtnl: Rtnl, config: TunnelConfig, want: GreParams, action: TunnelAction, changes: tuple[str, ...]
) -> TunnelReport:
    """Create and configure; if any later step fails, delete the device this call created."""
    await rtnl.create_gre(config.name, want, config.mtu)
    link = await _must_get(rtnl, config.name)
    try:
        await _converge(rtnl, config, link)
    except BaseException:
        await rtnl.delete_link(link.index)
        raise
    return TunnelReport(action, link.index, changes)


async def _converge(rtnl: Rtnl, config: TunnelConfig, link: Link) -> list[str]:
    """Bring MTU, addresses, NOARP, sysctls and the up state in line; returns what changed."""
    changes: list[str] = []
    if link.mtu != config.mtu:
        await rtnl.set_mtu(link.index, config.mtu)
        changes.append(f"mtu {link.mtu} -> {config.mtu}")
    changes += await _converge_addresses(rtnl, link.index, device_address(config))
    want_noarp = not config.on_demand
    if bool(link.flags & IFF_NOARP) != want_noarp:
        await rtnl.set_flag(link.index, IFF_NOARP, want_noarp)
        changes.append("noarp on" if want_noarp else "noarp off")
    if config.on_demand:
        written = await ensure_sysctls(rtnl.netns, phase2_sysctls(config.name))
        rtnl.writes += len(written)
        changes += written
    if not link.flags & IFF_UP:
        await rtnl.set_flag(link.index, IFF_UP, True)
        changes.append("up")
    return changes


async def _converge_addresses(rtnl: Rtnl, index: int, want: IPv4Interface) -> list[str]:
    """Exactly one IPv4 address on our device: ours. IPv6 (link-local) is left alone."""
    changes: list[str] = []
    have = await rtnl.addresses(index)
    if want not in have:
        await rtnl.add_address(index, want)
        changes.append(f"address + {want}")
    for extra in have:
        if extra != want:
            await rtnl.delete_address(index, extra)
            changes.append(f"address - {extra}")
    return changes
