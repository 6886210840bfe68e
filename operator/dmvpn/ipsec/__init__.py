"""IPsec protection of GRE (DMVPN 'tunnel protection ipsec profile'): the only code that speaks VICI.

IKEv2, ESP in transport mode between NBMA addresses, traffic selectors ``dynamic[gre]``, PSK or x509,
DPD, rekeying, ``unique=replace``, no MOBIKE. A hub only answers (``remote_addrs = %any``); a spoke also
loads one connection per peer it needs and initiates it on demand, with a deterministic tie-break so two
spokes resolving each other at once build one IKE_SA. See docs/ipsec.md.

    profile = ProtectionProfile.from_spec(spec.ipsec, local_nbma, "spoke", psk=psk_bytes)
    async with IpsecManager(profile, socket_path=Path("/run/charon.vici")) as ipsec:
        events = ipsec.events()                                  # subscribe before asking
        await ipsec.ensure_peer(hub_nbma, InitiatePolicy.ALWAYS)  # spoke -> hub
        await ipsec.ensure_peer(other_spoke_nbma)                 # shortcut: tie-break decides
        async for event in events:                                # SaEvent(peer, up, reason, at)
            ...                                                   # install the shortcut once up
        await ipsec.remove_peer(other_spoke_nbma)

Pure parts (unit-tested without charon): :mod:`dmvpn.ipsec.render` (profile -> VICI dicts),
:mod:`dmvpn.ipsec.tiebreak`, :mod:`dmvpn.ipsec.parse` (``list-sas`` -> :class:`IkeSaInfo`).
Mode ``required`` on the receive side: :func:`install_guard` (nftables, counted drops).
"""

from __future__ import annotations

from dmvpn.ipsec.guard import (
    GUARD_FAMILY,
    GUARD_TABLE,
    guard_counters_from,
    install_guard,
    remove_guard,
    render_guard,
    set_larval_drop,
)
from dmvpn.ipsec.manager import DEFAULT_SOCKET, IpsecManager, SaEventStream
from dmvpn.ipsec.tiebreak import DEFAULT_FALLBACK_S, fallback_due, keep_duplicate, we_initiate
from dmvpn.ipsec.types import (
    CHILD_NAME,
    PEER_CONN_PREFIX,
    PSK_ID,
    RESPONDER_CONN,
    ApplyReport,
    CharonUnavailable,
    ChildSaInfo,
    GuardCounters,
    IkeSaInfo,
    InitiatePolicy,
    IpsecError,
    PeerAction,
    ProtectionProfile,
    PskAuth,
    Role,
    SaEvent,
    X509Auth,
    peer_conn_name,
    peer_of_conn,
)

__all__ = [
    "CHILD_NAME",
    "DEFAULT_FALLBACK_S",
    "DEFAULT_SOCKET",
    "GUARD_FAMILY",
    "GUARD_TABLE",
    "PEER_CONN_PREFIX",
    "PSK_ID",
    "RESPONDER_CONN",
    "ApplyReport",
    "CharonUnavailable",
    "ChildSaInfo",
    "GuardCounters",
    "IkeSaInfo",
    "InitiatePolicy",
    "IpsecError",
    "IpsecManager",
    "PeerAction",
    "ProtectionProfile",
    "PskAuth",
    "Role",
    "SaEvent",
    "SaEventStream",
    "X509Auth",
    "fallback_due",
    "guard_counters_from",
    "install_guard",
    "keep_duplicate",
    "peer_conn_name",
    "peer_of_conn",
    "remove_guard",
    "render_guard",
    "set_larval_drop",
    "we_initiate",
]
