"""The data plane: the only code in kube-dmvpn that speaks netlink (pyroute2) or nftables.

One :class:`Dataplane` owns one multipoint GRE device in one network namespace, plus the neighbours
(tunnel address -> NBMA) and routes we installed on it, marked with :data:`RTPROT_DMVPN` so a restarted
agent adopts them and foreign entries are never touched. Everything is asyncio (pyroute2 0.9
``AsyncIPRoute``). See docs/dataplane.md.

    async with Dataplane(TunnelConfig(name="dmvpn0", local=..., underlay="eth0",
                                      address=IPv4Interface("10.255.0.1/24"), key=42)) as dp:
        await dp.ensure_tunnel()
        await dp.reconcile_neighbours({Neighbour(hub_tunnel_ip, hub_nbma)})
        await dp.reconcile_routes({Route(IPv4Network("10.255.0.0/24"), via=hub_tunnel_ip)})
        async with dp.solicitations() as asks:        # Phase 2: kernel asks for NBMA addresses
            async for ask in asks:
                await dp.set_neighbour(Neighbour(ask.tunnel_ip, await resolve(ask.tunnel_ip)))

Hub redirect (Phase 3): :func:`install_hairpin_rule` and :class:`NflogReader`. A spoke's first packet
under each new SA: :func:`install_arrivals_rule` and the same reader.
"""

from __future__ import annotations

from dmvpn.dataplane.arrivals import install_arrivals_rule, remove_arrivals_rule
from dmvpn.dataplane.dataplane import Dataplane
from dmvpn.dataplane.hairpin import install_hairpin_rule, remove_hairpin_rule
from dmvpn.dataplane.nflog import NflogReader, parse_nflog_packet
from dmvpn.dataplane.nftcount import Counter, element_counters, rule_counters
from dmvpn.dataplane.solicit import SolicitationListener
from dmvpn.dataplane.types import (
    GRE_KEY_FLAG,
    RTPROT_DMVPN,
    ArrivalsConfig,
    Changes,
    DataplaneError,
    DeviceConflict,
    DeviceState,
    HairpinConfig,
    HairpinEvent,
    InterfaceStats,
    NamespaceGone,
    Neighbour,
    ReconcileReport,
    Route,
    Snapshot,
    Solicitation,
    TunnelAction,
    TunnelConfig,
    TunnelReport,
    UsageConfig,
)
from dmvpn.dataplane.usage import install_usage_counter, remove_usage_counter, usage_by_peer

__all__ = [
    "GRE_KEY_FLAG",
    "RTPROT_DMVPN",
    "ArrivalsConfig",
    "Changes",
    "Counter",
    "Dataplane",
    "DataplaneError",
    "DeviceConflict",
    "DeviceState",
    "HairpinConfig",
    "HairpinEvent",
    "InterfaceStats",
    "NamespaceGone",
    "Neighbour",
    "NflogReader",
    "ReconcileReport",
    "Route",
    "Snapshot",
    "Solicitation",
    "SolicitationListener",
    "TunnelAction",
    "TunnelConfig",
    "TunnelReport",
    "UsageConfig",
    "element_counters",
    "install_arrivals_rule",
    "install_hairpin_rule",
    "install_usage_counter",
    "parse_nflog_packet",
    "remove_arrivals_rule",
    "remove_hairpin_rule",
    "remove_usage_counter",
    "rule_counters",
    "usage_by_peer",
]
