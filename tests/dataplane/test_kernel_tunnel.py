"""The mGRE device, neighbours and routes against a real kernel: create, adopt, idempotence, changed
parameters, foreign entries left alone, restart adoption while traffic flows."""

from __future__ import annotations

import asyncio
import json
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest
from dplab import DEV, KEY, BackgroundPing, hub_desired, kernel_view, site_config, spoke_desired

from dmvpn.dataplane import (
    RTPROT_DMVPN,
    Changes,
    Dataplane,
    DataplaneError,
    DeviceConflict,
    Neighbour,
    Route,
    TunnelAction,
)
from dmvpn.lab.topology import TUNNEL_NET, Lab, add_static_mgre, hub_and_spokes, ping

pytestmark = pytest.mark.kernel


def link_details(ns_run: object, dev: str = DEV) -> dict[str, object]:
    data: dict[str, object] = json.loads(ns_run("ip", "-d", "-j", "link", "show", "dev", dev))[0]  # type: ignore[operator]
    return data


async def test_create_adopt_reconcile_idempotent_and_changed_params(lab: Lab) -> None:
    hub, spoke1 = hub_and_spokes(lab, spokes=1, with_pods=False)
    ns = hub.ns
    async with Dataplane(site_config(hub), netns=ns.name) as dp:
        created = await dp.ensure_tunnel()
        assert created.action is TunnelAction.CREATED
        info = link_details(ns.run)
        gre = info["linkinfo"]["info_data"]  # type: ignore[index]
        assert gre["local"] == str(hub.nbma) and gre.get("remote", "any") == "any"
        assert gre["ikey"] == gre["okey"] == f"0.0.0.{KEY}" and gre["ttl"] == 64
        assert info["link"] == "eth0" and info["mtu"] == 1400
        assert "UP" in info["flags"] and "NOARP" not in info["flags"]  # type: ignore[operator]
        assert f"inet {hub.tunnel_ip}/32" in ns.run("ip", "addr", "show", "dev", DEV)
        assert "= 3" in ns.run("sysctl", f"net.ipv4.neigh.{DEV}.app_solicit")
        assert "= 0" in ns.run("sysctl", f"net.ipv4.neigh.{DEV}.ucast_solicit")

        # Foreign state on and around our device: a neighbour without our mark, a route of another
        # protocol, and a foreign route holding a key we will also want.
        ns.run("ip", "neigh", "add", "10.255.0.77", "lladdr", "203.0.113.77", "dev", DEV, "nud", "permanent")
        ns.run("ip", "route", "add", "10.77.0.0/16", "via", "10.255.0.77", "dev", DEV, "onlink")
        ns.run("ip", "route", "add", "10.88.0.0/16", "dev", DEV)
        spoke2 = Neighbour(IPv4Address("10.255.0.2"), IPv4Address("192.0.2.12"))
        neighbours, routes = hub_desired(hub, [spoke1])
        neighbours.add(spoke2)
        routes.add(Route(IPv4Network("10.88.0.0/16")))
        first_n = await dp.reconcile_neighbours(neighbours)
        first_r = await dp.reconcile_routes(routes)
        assert set(first_n.added) == neighbours and not first_n.removed
        assert set(first_r.added) == routes - {Route(IPv4Network("10.88.0.0/16"))}
        assert first_r.conflicts == (Route(IPv4Network("10.88.0.0/16")),)
        assert f"proto {RTPROT_DMVPN}" in ns.run("ip", "route", "show", str(spoke1.lan))
        assert f"proto {RTPROT_DMVPN}" in ns.run("ip", "neigh", "show", str(spoke1.tunnel_ip), "dev", DEV)

        # Second reconcile: nothing changes, and not a single write is issued.
        before, writes = kernel_view(ns), dp.writes
        again = await dp.ensure_tunnel()
        assert again.action is TunnelAction.ADOPTED and not again.changes
        assert not (await dp.reconcile_neighbours(neighbours)).changed
        assert not (await dp.reconcile_routes(routes)).changed
        assert dp.writes == writes, "an idempotent reconcile must not write"
        assert kernel_view(ns) == before

        # A restarted agent sees exactly our state (not the foreign entries) without writing.
        async with Dataplane(site_config(hub), netns=ns.name) as restarted:
            snap = await restarted.snapshot()
            assert snap.device is not None and snap.device.addresses == (IPv4Interface(f"{hub.tunnel_ip}/32"),)
            assert set(snap.neighbours) == neighbours
            assert set(snap.routes) == routes - {Route(IPv4Network("10.88.0.0/16"))}
            assert snap.stats is not None
            assert restarted.writes == 0

        # Desired sets shrink and change: ours follow, foreign entries stay.
        moved = Neighbour(spoke2.tunnel_ip, IPv4Address("192.0.2.99"))
        report = await dp.reconcile_neighbours({moved})
        assert report.replaced == (moved,) and report.removed == (Neighbour(spoke1.tunnel_ip, spoke1.nbma),)
        routes_left = {Route(TUNNEL_NET)}
        report_r = await dp.reconcile_routes(routes_left)
        assert set(report_r.removed) == {Route(spoke1.lan, via=spoke1.tunnel_ip)}
        neigh_text = ns.run("ip", "neigh", "show", "dev", DEV)
        assert "10.255.0.77 lladdr 203.0.113.77" in neigh_text and "192.0.2.99" in neigh_text
        assert str(spoke1.tunnel_ip) + " " not in neigh_text
        route_text = ns.run("ip", "route")
        assert "10.77.0.0/16 via 10.255.0.77" in route_text and "10.88.0.0/16 dev gre1" in route_text

        # Incremental changes (the agent's path between full passes): only the writes asked for, no dump;
        # a new key a foreign route holds stays foreign, and deletes name our protocol, so they never
        # take a foreign route or binding with them.
        back = Neighbour(spoke1.tunnel_ip, spoke1.nbma)
        lan, clash = Route(spoke1.lan, via=back.tunnel_ip), Route(IPv4Network("10.88.0.0/16"), via=back.tunnel_ip)
        writes = dp.writes
        grown = await dp.apply_changes(Changes(set_neighbours=(back,), add_routes=(lan, clash)))
        assert grown.added == (lan,) and grown.conflicts == (clash,) and dp.writes - writes == 3
        assert set(await dp.neighbours()) == {moved, back} and set(await dp.routes()) == {Route(TUNNEL_NET), lan}
        assert "10.88.0.0/16 dev gre1 " in ns.run("ip", "route") + " "
        turned = Route(spoke1.lan, via=moved.tunnel_ip)
        foreign_binding = Neighbour(IPv4Address("10.255.0.77"), IPv4Address("203.0.113.77"))
        shrunk = await dp.apply_changes(
            Changes(change_routes=(turned,), remove_routes=(clash,), remove_neighbours=(back, foreign_binding))
        )
        assert shrunk.replaced == (turned,) and shrunk.removed == ()
        assert set(await dp.routes()) == {Route(TUNNEL_NET), turned} and await dp.neighbours() == (moved,)
        assert "10.255.0.77 lladdr 203.0.113.77" in ns.run("ip", "neigh", "show", "dev", DEV)
        assert "10.88.0.0/16 dev gre1" in ns.run("ip", "route")
        assert (await dp.apply_changes(Changes(remove_routes=(turned,)))).removed == (turned,)
        assert await dp.routes() == (Route(TUNNEL_NET),)

        # Changed parameters: MTU and TTL in place (neighbours survive), then the key.
        dp.config = site_config(hub, mtu=1300, ttl=32)
        updated = await dp.ensure_tunnel()
        assert updated.action is TunnelAction.UPDATED
        assert any("ttl 64 -> 32" in c for c in updated.changes) and any("mtu" in c for c in updated.changes)
        assert link_details(ns.run)["mtu"] == 1300
        assert await dp.neighbours() == (moved,)
        dp.config = site_config(hub, mtu=1300, ttl=32, key=43)
        rekeyed = await dp.ensure_tunnel()
        assert rekeyed.action in {TunnelAction.UPDATED, TunnelAction.RECREATED}
        assert any("key 42 -> 43" in c for c in rekeyed.changes)
        gre = link_details(ns.run)["linkinfo"]["info_data"]  # type: ignore[index]
        assert gre["okey"] == "0.0.0.43" and gre["local"] == str(hub.nbma) and gre["ttl"] == 32
        print(f"\n[dataplane] key change: {rekeyed.action.value} {rekeyed.changes}")
        # A stray address is corrected.
        ns.run("ip", "addr", "add", "10.255.0.200/24", "dev", DEV)
        fixed = await dp.ensure_tunnel()
        assert fixed.action is TunnelAction.UPDATED and "address - 10.255.0.200/24" in fixed.changes

        assert await dp.remove_tunnel() is True
        assert await dp.remove_tunnel() is False
        assert ns.run("ip", "route", "show", "proto", str(RTPROT_DMVPN)) == ""

    # A device built by hand (the lab's 'ip tunnel add ... key 42 ttl 64 local .. dev eth0', /32, up)
    # is adopted as is: only the Phase 2 switches change, never the GRE parameters.
    add_static_mgre(spoke1)
    async with Dataplane(site_config(spoke1), netns=spoke1.ns.name) as hand:
        adopted = await hand.ensure_tunnel()
        assert adopted.action is TunnelAction.UPDATED
        assert not [c for c in adopted.changes if c.split()[0] in {"local", "link", "ikey", "okey", "ttl", "mtu"}]
        assert "noarp off" in adopted.changes
        assert (await hand.ensure_tunnel()).action is TunnelAction.ADOPTED
    # A second device with the same local address and key cannot exist: a clear error, nothing left behind.
    async with Dataplane(site_config(spoke1, name="dmvpn9"), netns=spoke1.ns.name) as twin:
        with pytest.raises(DataplaneError, match=r"already uses local address 192\.0\.2\.11 and key 42"):
            await twin.ensure_tunnel()
    assert "dmvpn9" not in spoke1.ns.run("ip", "-o", "link", "show")

    # A non-GRE device with our name is not ours: refuse, never delete.
    ns.run("ip", "link", "add", "dmx", "type", "dummy")
    async with Dataplane(site_config(hub, name="dmx"), netns=ns.name) as other:
        with pytest.raises(DeviceConflict):
            await other.ensure_tunnel()
    assert "dmx" in ns.run("ip", "link", "show", "dmx")


async def test_restart_adoption_keeps_traffic_flowing(lab: Lab) -> None:
    sites = hub_and_spokes(lab, spokes=2)
    hub, spokes = sites[0], sites[1:]
    for site in sites:
        async with Dataplane(site_config(site), netns=site.ns.name) as dp:
            await dp.ensure_tunnel()
            neighbours, routes = hub_desired(hub, spokes) if site is hub else spoke_desired(hub)
            await dp.reconcile_neighbours(neighbours)
            await dp.reconcile_routes(routes)
    spoke1, spoke2 = spokes
    assert spoke1.pod is not None
    assert ping(spoke1.pod, str(spoke2.pod_ip), count=2)[1] == 2

    before = {site.name: kernel_view(site.ns) for site in sites}
    background = BackgroundPing.start(spoke1.pod, str(spoke2.pod_ip), count=30, interval=0.1)
    await asyncio.sleep(0.5)
    # "Restart": new Dataplane objects on every site adopt and reconcile the same desired state.
    for site in sites:
        async with Dataplane(site_config(site), netns=site.ns.name) as dp:
            report = await dp.ensure_tunnel()
            assert report.action is TunnelAction.ADOPTED, report
            neighbours, routes = hub_desired(hub, spokes) if site is hub else spoke_desired(hub)
            snap = await dp.snapshot()
            assert set(snap.neighbours) == neighbours and set(snap.routes) == routes
            assert not (await dp.reconcile_neighbours(neighbours)).changed
            assert not (await dp.reconcile_routes(routes)).changed
            assert dp.writes == 0
    sent, received = await asyncio.to_thread(background.result)
    assert (sent, received) == (30, 30), "adoption must not disturb traffic"
    assert {site.name: kernel_view(site.ns) for site in sites} == before
