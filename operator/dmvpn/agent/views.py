"""What ``dmvpnctl show ...`` prints, as plain JSON-ready dicts built from the agent's state (pure)."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any

from dmvpn.nhrp.cache import CacheEntry, EntryType

if TYPE_CHECKING:
    from dmvpn.agent.agent import Agent


def _protocol(entry: CacheEntry) -> str:
    prefix = entry.prefix
    return str(prefix.network_address) if prefix.prefixlen == prefix.max_prefixlen else str(prefix)


def _expires_in(entry: CacheEntry, now: float) -> int | None:
    return None if entry.expires is None else max(0, round(entry.expires - now))


def show_nhrp(agent: Agent) -> list[dict[str, Any]]:
    """The NHRP cache, like ``show ip nhrp``: one row per binding."""
    now = agent.clock()
    rows = []
    for entry in sorted(agent.engine.cache, key=lambda e: (e.prefix.version, e.prefix)):
        rows.append(
            {
                "protocol": _protocol(entry),
                "nbma": str(entry.nbma) if entry.nbma is not None else None,
                "nextHop": str(entry.next_hop) if entry.next_hop is not None else None,
                "type": entry.type.value,
                "expiresIn": _expires_in(entry, now),
            }
        )
    return rows


def _ipsec_state(agent: Agent, nbma: IPv4Address) -> str:
    if agent.ipsec is None:
        return "disabled"
    return "up" if nbma in agent.sa_up_peers else "down"


def _uptime(agent: Agent, nbma: IPv4Address) -> int | None:
    since = agent.peer_since.get(nbma)
    return None if since is None else max(0, round(agent.wallclock() - since))


def show_dmvpn(agent: Agent) -> dict[str, Any]:
    """Like Cisco's ``show dmvpn``: one row per peer (NHS, registered spoke, shortcut)."""
    config = agent.config
    now = agent.clock()
    peers: list[dict[str, Any]] = []
    for nhs in agent.engine.nhs:
        tunnel = nhs.protocol
        peers.append(
            {
                "nbma": str(nhs.nbma),
                "tunnel": str(tunnel) if tunnel is not None else None,
                "kind": "nhs",
                "state": "up" if nhs.up else "down",
                "ipsec": _ipsec_state(agent, nhs.nbma) if isinstance(nhs.nbma, IPv4Address) else "n/a",
                "uptime": _uptime(agent, nhs.nbma) if isinstance(nhs.nbma, IPv4Address) and nhs.up else None,
            }
        )
    installed = {neighbour.tunnel_ip for neighbour in agent.installed.neighbours}
    seen: set[tuple[str, str]] = set()
    for entry in agent.engine.cache:
        if entry.type not in (EntryType.DYNAMIC, EntryType.SHORTCUT) or not isinstance(entry.nbma, IPv4Address):
            continue
        if entry.next_hop is None or entry.prefix.prefixlen != entry.prefix.max_prefixlen:
            continue  # one row per peer: its host binding
        key = (str(entry.nbma), str(entry.next_hop))
        if key in seen:
            continue
        seen.add(key)
        if entry.type == EntryType.DYNAMIC:
            kind, state = "spoke", "up"
        else:
            kind = "shortcut"
            state = "up" if entry.next_hop in installed else "waiting-ipsec"
        peers.append(
            {
                "nbma": str(entry.nbma),
                "tunnel": str(entry.next_hop),
                "kind": kind,
                "state": state,
                "ipsec": _ipsec_state(agent, entry.nbma),
                "uptime": _uptime(agent, entry.nbma),
                "expiresIn": _expires_in(entry, now),
                "prefixes": sorted(
                    str(e.prefix)
                    for e in agent.engine.cache
                    if e.nbma == entry.nbma and e.type == entry.type and e.prefix.prefixlen != e.prefix.max_prefixlen
                ),
            }
        )
    return {
        "interface": config.interface,
        "role": config.role,
        "node": config.node,
        "nbma": str(config.nbma),
        "tunnel": str(config.tunnel),
        "phase": config.phase,
        "peers": peers,
    }


def show_ipsec(agent: Agent) -> list[dict[str, Any]]:
    """SAs per peer with state and counters (IOS: ``show crypto ipsec sa``)."""
    rows = []
    for sa in agent.sas:
        children: list[dict[str, Any]] = [
            {
                "name": child.name,
                "state": child.state,
                "mode": child.mode,
                "spiIn": child.spi_in,
                "spiOut": child.spi_out,
                "bytesIn": child.bytes_in,
                "bytesOut": child.bytes_out,
                "packetsIn": child.packets_in,
                "packetsOut": child.packets_out,
                "encryption": child.encryption,
            }
            for child in sa.children
        ]
        totals = {
            key: sum(int(child[key] or 0) for child in children)
            for key in ("bytesIn", "bytesOut", "packetsIn", "packetsOut")
        }
        rows.append(
            {
                "peer": str(sa.remote_host) if sa.remote_host is not None else None,
                "conn": sa.conn,
                "state": sa.state,
                "initiator": sa.initiator,
                "established": sa.established_s,
                **totals,
                "children": children,
            }
        )
    return rows


def show_counters(agent: Agent) -> dict[str, Any]:
    """NHRP packets in/out per type, drops per reason, and the agent's own counters."""
    snapshot: dict[str, Any] = dict(agent.engine.counters.snapshot())
    stats = agent.stats
    snapshot["agent"] = {
        "reconciles": stats.reconciles,
        "reconcile_errors": stats.reconcile_errors,
        "shortcuts_created": stats.shortcuts_created,
        "shortcuts_expired": stats.shortcuts_expired,
        "sends_held_for_sa": stats.sends_held_for_sa,
        "sends_dropped_no_sa": stats.sends_dropped_no_sa,
        "hairpin_events": stats.hairpin_events,
        "solicitations": stats.solicitations,
        "adopted_entries": stats.adopted_entries,
        **stats.extra,
    }
    guard = agent.guard
    snapshot["ipsecGuard"] = (
        None
        if guard is None
        else {"droppedInPackets": guard.dropped_in_packets, "droppedOutPackets": guard.dropped_out_packets}
    )  # clear GRE dropped (ipsec.mode required): in = from peers without an SA, out = before our SA was up
    snapshot["lastError"] = stats.last_error
    return snapshot


def show_events(agent: Agent) -> list[dict[str, Any]]:
    return list(agent.events)


def node_status(agent: Agent) -> dict[str, Any]:
    """The ``status.nodes[<node>]`` entry (docs/api.md) this node reports."""
    import datetime

    config = agent.config
    nhs_up = [str(nhs.protocol) for nhs in agent.engine.nhs if nhs.up and nhs.protocol is not None]
    dmvpn = show_dmvpn(agent)
    return {
        "role": config.role,
        "nbma": str(config.nbma),
        "tunnelAddress": str(config.tunnel),
        "nhsUp": nhs_up,
        "registered": bool(nhs_up) if not config.is_hub else True,
        "peers": sum(1 for peer in dmvpn["peers"] if peer["kind"] == "spoke"),
        "shortcuts": sum(1 for peer in dmvpn["peers"] if peer["kind"] == "shortcut" and peer["state"] == "up"),
        "sas": len(agent.sa_up_peers),
        "lastUpdate": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "message": agent.stats.last_error or "",
    }


COMMANDS = {
    "show dmvpn": show_dmvpn,
    "show nhrp": show_nhrp,
    "show ipsec": show_ipsec,
    "show counters": show_counters,
    "show events": show_events,
    "show status": node_status,
}
