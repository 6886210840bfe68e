"""Reconcile and rollback logic against an in-memory rtnetlink (no kernel): what is written and when."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from dmvpn.dataplane import Changes, DataplaneError, DeviceConflict, Neighbour, Route, TunnelAction, TunnelConfig
from dmvpn.dataplane import neighbours as neigh_ops
from dmvpn.dataplane import routes as route_ops
from dmvpn.dataplane import tunnel as tunnel_ops
from dmvpn.dataplane.rtnl import (
    IFF_NOARP,
    IFF_UP,
    NUD_FAILED,
    RT_TABLE_MAIN,
    GreParams,
    Link,
    NeighEntry,
    RouteEntry,
    Rtnl,
)
from dmvpn.dataplane.rtwrite import NUD_PERMANENT, RT_SCOPE_LINK

OURS = 0xD5
DEV = 10
A = IPv4Address


class FakeRtnl(Rtnl):
    """Kernel tables as dicts; every write is logged (and counted by the base class's counter)."""

    def __init__(self) -> None:
        super().__init__(None)
        self.links: dict[str, Link] = {"eth0": Link(2, "eth0", None, IFF_UP, 1500, None, None)}
        self.addrs: dict[int, list[IPv4Interface]] = {}
        self.neigh: dict[IPv4Address, NeighEntry] = {}
        self.route_table: dict[tuple[IPv4Network, int], RouteEntry] = {}
        self.log: list[str] = []
        self.fail_on: str | None = None

    def _record(self, what: str) -> None:
        self.writes += 1
        self.log.append(what)
        if self.fail_on and what.startswith(self.fail_on):
            raise DataplaneError(f"injected failure: {what}")

    async def link_by_name(self, name: str) -> Link | None:
        return self.links.get(name)

    async def create_gre(self, name: str, gre: GreParams, mtu: int) -> None:
        self._record(f"create {name}")
        self.links[name] = Link(DEV, name, "gre", IFF_NOARP, mtu, gre, None)

    async def change_gre(self, index: int, gre: GreParams, mtu: int) -> None:
        self._record(f"change #{index}")
        name = next(n for n, link in self.links.items() if link.index == index)
        self.links[name] = replace(self.links[name], gre=gre, mtu=mtu)

    async def set_mtu(self, index: int, mtu: int) -> None:
        self._record(f"mtu {mtu}")
        name = next(n for n, link in self.links.items() if link.index == index)
        self.links[name] = replace(self.links[name], mtu=mtu)

    async def set_flag(self, index: int, flag: int, on: bool) -> None:
        self._record(f"flag {flag:#x} {on}")
        name = next(n for n, link in self.links.items() if link.index == index)
        flags = self.links[name].flags
        self.links[name] = replace(self.links[name], flags=flags | flag if on else flags & ~flag)

    async def delete_link(self, index: int) -> bool:
        self._record(f"delete link #{index}")
        self.links = {n: link for n, link in self.links.items() if link.index != index}
        return True

    async def addresses(self, index: int) -> list[IPv4Interface]:
        return list(self.addrs.get(index, []))

    async def add_address(self, index: int, address: IPv4Interface) -> None:
        self._record(f"addr + {address}")
        self.addrs.setdefault(index, []).append(address)

    async def delete_address(self, index: int, address: IPv4Interface) -> None:
        self._record(f"addr - {address}")
        self.addrs[index].remove(address)

    async def neighbours(self, index: int) -> list[NeighEntry]:
        return list(self.neigh.values())

    async def replace_neighbour(self, index: int, dst: IPv4Address, lladdr: IPv4Address, proto: int) -> None:
        self._record(f"neigh {dst} {lladdr}")
        self.neigh[dst] = NeighEntry(dst, lladdr, NUD_PERMANENT, proto)

    async def delete_neighbour(self, index: int, dst: IPv4Address) -> bool:
        self._record(f"neigh - {dst}")
        return self.neigh.pop(dst, None) is not None

    async def routes(self, table: int = RT_TABLE_MAIN) -> list[RouteEntry]:
        return list(self.route_table.values())

    def _entry(self, prefix: IPv4Network, via: IPv4Address | None, oif: int, metric: int, proto: int) -> RouteEntry:
        scope = RT_SCOPE_LINK if via is None else 0
        return RouteEntry(prefix, via, oif, metric, proto, scope, via is not None, RT_TABLE_MAIN)

    async def add_route(self, prefix: IPv4Network, via: IPv4Address | None, oif: int, metric: int, proto: int) -> bool:
        self._record(f"route + {prefix}")
        if (prefix, metric) in self.route_table:
            return False
        self.route_table[(prefix, metric)] = self._entry(prefix, via, oif, metric, proto)
        return True

    async def replace_route(
        self, prefix: IPv4Network, via: IPv4Address | None, oif: int, metric: int, proto: int
    ) -> None:
        self._record(f"route = {prefix}")
        self.route_table[(prefix, metric)] = self._entry(prefix, via, oif, metric, proto)

    async def delete_route(self, route: RouteEntry) -> bool:
        """Like the kernel, a delete that names a protocol and device matches only such a route."""
        self._record(f"route - {route.prefix}")
        entry = self.route_table.get((route.prefix, route.metric))
        if entry is None or entry.proto != route.proto or (route.oif is not None and entry.oif != route.oif):
            return False
        del self.route_table[(route.prefix, route.metric)]
        return True

    async def neighbour(self, index: int, dst: IPv4Address) -> NeighEntry | None:
        return self.neigh.get(dst)


def config(**overrides: object) -> TunnelConfig:
    values: dict[str, object] = {
        "name": "dmvpn0",
        "local": A("192.0.2.1"),
        "underlay": "eth0",
        "address": IPv4Interface("10.255.0.1/24"),
        "key": 42,
        "on_demand": False,  # no sysctls: this test has no /proc/sys of its own
    }
    values.update(overrides)
    return TunnelConfig(**values)  # type: ignore[arg-type]


async def test_create_then_adopt_writes_nothing_the_second_time() -> None:
    rtnl = FakeRtnl()
    report = await tunnel_ops.ensure_tunnel(rtnl, config())
    assert report.action is TunnelAction.CREATED
    assert rtnl.addrs[DEV] == [IPv4Interface("10.255.0.1/32")]
    gre = rtnl.links["dmvpn0"].gre
    assert gre is not None and (gre.ikey, gre.okey, gre.link, gre.remote) == (42, 42, 2, None)
    writes = rtnl.writes
    again = await tunnel_ops.ensure_tunnel(rtnl, config())
    assert again.action is TunnelAction.ADOPTED and again.changes == () and not again.changed
    assert rtnl.writes == writes


async def test_failure_after_create_rolls_back_what_this_call_created() -> None:
    rtnl = FakeRtnl()
    rtnl.fail_on = "addr +"
    with pytest.raises(DataplaneError, match="injected"):
        await tunnel_ops.ensure_tunnel(rtnl, config())
    assert "dmvpn0" not in rtnl.links and rtnl.log[-1] == f"delete link #{DEV}"


async def test_failure_on_an_adopted_device_never_deletes_it() -> None:
    rtnl = FakeRtnl()
    await tunnel_ops.ensure_tunnel(rtnl, config())
    rtnl.fail_on = "mtu"
    with pytest.raises(DataplaneError):
        await tunnel_ops.ensure_tunnel(rtnl, config(mtu=1300))
    assert "dmvpn0" in rtnl.links


async def test_changed_gre_parameters_are_reported_and_changed_in_place() -> None:
    rtnl = FakeRtnl()
    await tunnel_ops.ensure_tunnel(rtnl, config())
    report = await tunnel_ops.ensure_tunnel(rtnl, config(key=43, ttl=32, mtu=1300))
    assert report.action is TunnelAction.UPDATED
    assert {"ikey 42 -> 43", "okey 42 -> 43", "ttl 64 -> 32", "mtu 1400 -> 1300"} == set(report.changes)
    assert "change #10" in rtnl.log and "create dmvpn0" in rtnl.log[:1]


async def test_refused_change_recreates() -> None:
    rtnl = FakeRtnl()
    await tunnel_ops.ensure_tunnel(rtnl, config())
    rtnl.fail_on = "change"
    report = await tunnel_ops.ensure_tunnel(rtnl, config(key=7))
    assert report.action is TunnelAction.RECREATED and "okey 42 -> 7" in report.changes
    tail = rtnl.log[rtnl.log.index("change #10") :]
    assert tail[:3] == ["change #10", "delete link #10", "create dmvpn0"]


async def test_non_gre_device_is_a_conflict_and_stays() -> None:
    rtnl = FakeRtnl()
    rtnl.links["dmvpn0"] = Link(5, "dmvpn0", "dummy", 0, 1500, None, None)
    with pytest.raises(DeviceConflict):
        await tunnel_ops.ensure_tunnel(rtnl, config())
    assert rtnl.writes == 0


async def test_missing_underlay_is_a_clear_error() -> None:
    with pytest.raises(DataplaneError, match="underlay device eth9"):
        await tunnel_ops.ensure_tunnel(FakeRtnl(), config(underlay="eth9"))


async def test_noarp_follows_on_demand() -> None:
    rtnl = FakeRtnl()
    await tunnel_ops.ensure_tunnel(rtnl, config())
    assert rtnl.links["dmvpn0"].flags & IFF_NOARP


def n(tunnel: str, nbma: str) -> Neighbour:
    return Neighbour(A(tunnel), A(nbma))


async def test_neighbour_reconcile_adds_replaces_removes_only_ours() -> None:
    rtnl = FakeRtnl()
    rtnl.neigh[A("10.255.0.77")] = NeighEntry(A("10.255.0.77"), A("203.0.113.7"), NUD_PERMANENT, 0)  # foreign
    rtnl.neigh[A("10.255.0.9")] = NeighEntry(A("10.255.0.9"), None, NUD_FAILED, 0)  # a failed solicitation
    first = await neigh_ops.reconcile(rtnl, DEV, [n("10.255.0.2", "192.0.2.12"), n("10.255.0.9", "192.0.2.19")], OURS)
    assert first.added == (n("10.255.0.2", "192.0.2.12"), n("10.255.0.9", "192.0.2.19")) and not first.replaced
    writes = rtnl.writes
    assert not (
        await neigh_ops.reconcile(rtnl, DEV, [n("10.255.0.2", "192.0.2.12"), n("10.255.0.9", "192.0.2.19")], OURS)
    ).changed
    assert rtnl.writes == writes
    second = await neigh_ops.reconcile(rtnl, DEV, [n("10.255.0.2", "192.0.2.99")], OURS)
    assert second.replaced == (n("10.255.0.2", "192.0.2.99"),) and second.removed == (n("10.255.0.9", "192.0.2.19"),)
    assert A("10.255.0.77") in rtnl.neigh, "foreign entries are never removed"
    taken = await neigh_ops.reconcile(rtnl, DEV, [n("10.255.0.2", "192.0.2.99"), n("10.255.0.77", "192.0.2.77")], OURS)
    assert taken.replaced == (n("10.255.0.77", "192.0.2.77"),), "a desired address wins over a foreign entry"
    assert neigh_ops.ours(rtnl.neigh.values(), OURS) == (n("10.255.0.2", "192.0.2.99"), n("10.255.0.77", "192.0.2.77"))


async def test_route_reconcile_never_overwrites_foreign_routes() -> None:
    rtnl = FakeRtnl()
    foreign = RouteEntry(IPv4Network("10.88.0.0/16"), None, DEV, 0, 4, RT_SCOPE_LINK, False, RT_TABLE_MAIN)
    rtnl.route_table[(foreign.prefix, 0)] = foreign
    hub = A("10.255.0.254")
    wanted = [
        Route(IPv4Network("10.255.0.0/24"), via=hub),
        Route(IPv4Network("10.1.0.0/16"), via=hub),
        Route(IPv4Network("10.88.0.0/16")),
    ]
    first = await route_ops.reconcile(rtnl, DEV, wanted, OURS)
    assert set(first.added) == set(wanted[:2]) and first.conflicts == (wanted[2],)
    assert rtnl.route_table[(foreign.prefix, 0)] == foreign
    assert not any("10.88" in line for line in rtnl.log), "a foreign key is not even tried"
    writes = rtnl.writes
    again = await route_ops.reconcile(rtnl, DEV, wanted, OURS)
    assert not again.changed and again.conflicts == (wanted[2],) and rtnl.writes == writes
    moved = Route(IPv4Network("10.1.0.0/16"), via=A("10.255.0.253"))
    third = await route_ops.reconcile(rtnl, DEV, [moved], OURS)
    assert third.replaced == (moved,) and third.removed == (wanted[0],)
    assert rtnl.route_table[(foreign.prefix, 0)] == foreign


async def test_routes_of_another_device_are_not_ours() -> None:
    rtnl = FakeRtnl()
    other = RouteEntry(IPv4Network("10.2.0.0/16"), A("10.254.0.1"), 99, 0, OURS, 0, True, RT_TABLE_MAIN)
    rtnl.route_table[(other.prefix, 0)] = other
    report = await route_ops.reconcile(rtnl, DEV, [], OURS)
    assert not report.changed and (other.prefix, 0) in rtnl.route_table


async def test_incremental_changes_write_only_what_changed_and_leave_foreign_entries_alone() -> None:
    rtnl = FakeRtnl()
    foreign = RouteEntry(IPv4Network("10.88.0.0/16"), None, DEV, 0, 4, RT_SCOPE_LINK, False, RT_TABLE_MAIN)
    rtnl.route_table[(foreign.prefix, 0)] = foreign
    rtnl.neigh[A("10.255.0.77")] = NeighEntry(A("10.255.0.77"), A("203.0.113.7"), NUD_PERMANENT, 0)
    peer = n("10.255.0.2", "192.0.2.12")
    lan = Route(IPv4Network("10.2.0.0/16"), via=peer.tunnel_ip)
    clash = Route(foreign.prefix, via=peer.tunnel_ip)
    first = await route_ops.apply(rtnl, DEV, Changes(add_routes=(lan, clash)), OURS)
    await neigh_ops.set_all(rtnl, DEV, [peer], OURS)
    assert first.added == (lan,) and first.conflicts == (clash,)
    assert rtnl.route_table[(foreign.prefix, 0)] == foreign, "create-only: the foreign route keeps its key"
    assert rtnl.log == ["route + 10.2.0.0/16", "route + 10.88.0.0/16", "neigh 10.255.0.2 192.0.2.12"]
    moved = Route(lan.prefix, via=A("10.255.0.3"))
    second = await route_ops.apply(rtnl, DEV, Changes(change_routes=(moved,), remove_routes=(clash,)), OURS)
    assert second.replaced == (moved,) and second.removed == (), "a delete names our protocol: not the foreign one"
    assert rtnl.route_table[(lan.prefix, 0)].gateway == A("10.255.0.3")
    assert rtnl.route_table[(foreign.prefix, 0)] == foreign
    removed = await neigh_ops.remove_ours(rtnl, DEV, [peer, n("10.255.0.77", "203.0.113.7")], OURS)
    assert removed == (peer,) and A("10.255.0.77") in rtnl.neigh, "a foreign binding is never deleted"
