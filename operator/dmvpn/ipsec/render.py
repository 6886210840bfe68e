"""Pure rendering: a :class:`ProtectionProfile` (and a peer) -> the dicts VICI commands take.

Values are strings (VICI sends everything as text; ``"yes"``/``"no"``, never Python booleans) or bytes
for credential blobs, so rendering is deterministic and comparable: the manager reloads a connection only
when its rendered dict changed.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

from dmvpn.ipsec.types import (
    CHILD_NAME,
    PSK_ID,
    RESPONDER_CONN,
    ProtectionProfile,
    PskAuth,
    X509Auth,
    peer_conn_name,
)

ViciDict = dict[str, Any]

#: Inbound anti-replay window in packets (charon's default is 32). Measured in the bench lab: with 32 the
#: hand-built kernel GRE+ESP path fell from 78 to 64 Mbit/s, the agent path's rate then, so that window,
#: not the agent, cost the SA a fifth of its throughput (docs/ipsec.md). 1024 is Cisco's largest
#: ``replay window-size``; the protection against replays stays on.
REPLAY_WINDOW = 1024


def render_child(profile: ProtectionProfile, *, trap: bool = False) -> ViciDict:
    """The CHILD_SA: ESP in transport mode protecting GRE between the two NBMA addresses only. ``trap``:
    charon installs its policy at once and starts IKE on the kernel's acquire (InitiatePolicy.TRAP)."""
    return {
        "mode": "transport",
        "local_ts": ["dynamic[gre]"],
        "remote_ts": ["dynamic[gre]"],
        "esp_proposals": list(profile.esp_proposals),
        "rekey_time": str(profile.rekey_time),
        "replay_window": str(REPLAY_WINDOW),
        # DPD failure: drop the SA and let the manager decide (re-initiate hubs, report shortcuts down).
        "dpd_action": "clear",
        "start_action": "trap" if trap else "none",
        "close_action": "none",
    }


def _auth_rounds(profile: ProtectionProfile) -> tuple[ViciDict, ViciDict]:
    if isinstance(profile.auth, PskAuth):
        return {"auth": "psk", "id": str(profile.local_nbma)}, {"auth": "psk"}
    local: ViciDict = {"auth": "pubkey", "certs": [profile.auth.certificate_pem]}
    remote: ViciDict = {"auth": "pubkey", "cacerts": [profile.auth.ca_pem]}
    return local, remote


def unique_policy(profile: ProtectionProfile) -> str:
    """``replace`` on hubs: a spoke's new IKE_SA (after a reboot, or from a new NAT mapping) replaces its
    stale one at once instead of after DPD. Hubs never initiate, so two IKE_SAs with one spoke can only
    mean the old one is dead. ``no`` on spokes: if a fallback initiation ever crosses the peer's, each end
    could replace a different one of the two and drop both; the manager removes such a duplicate itself
    (see tiebreak.keep_duplicate), and a rebooted peer's INITIAL_CONTACT still replaces stale SAs."""
    return "replace" if profile.role == "hub" else "no"


def render_conn(profile: ProtectionProfile, remote: IPv4Address | None, *, trap: bool = False) -> ViciDict:
    """One IKEv2 connection from our NBMA address to ``remote`` (None: any peer, responder only); ``trap``
    as in :func:`render_child` (only with a ``remote``)."""
    if trap and remote is None:
        raise ValueError("a trap needs the peer's address: the responder connection has none")
    local_auth, remote_auth = _auth_rounds(profile)
    conn: ViciDict = {
        "version": "2",
        "local_addrs": [str(profile.local_nbma)],
        "remote_addrs": [str(remote) if remote is not None else "%any"],
        "proposals": list(profile.ike_proposals),
        "rekey_time": str(profile.rekey_time),
        # Re-authentication would tear the IKE_SA down and up; IKEv2 rekeying keeps it (as IOS does).
        "reauth_time": "0",
        "dpd_delay": str(profile.dpd_delay),
        "unique": unique_policy(profile),
        # The NBMA address is the identity of a DMVPN endpoint; it does not roam.
        "mobike": "no",
        # Retries and fallbacks are the manager's: a failed attempt must be reported, not hidden.
        "keyingtries": "1",
        "local": local_auth,
        "remote": remote_auth,
        "children": {CHILD_NAME: render_child(profile, trap=trap)},
    }
    return conn


def render_conns(
    profile: ProtectionProfile,
    peers: frozenset[IPv4Address] | set[IPv4Address],
    trapped: frozenset[IPv4Address] | set[IPv4Address] = frozenset(),
) -> dict[str, ViciDict]:
    """Every connection we want loaded: the responder (``dmvpn``) and one per ensured peer (spokes
    initiate to hubs and to each other; a hub may initiate to another hub); those of ``trapped`` peers
    carry a trap policy."""
    conns = {RESPONDER_CONN: render_conn(profile, None)}
    for peer in sorted(peers):
        conns[peer_conn_name(peer)] = render_conn(profile, peer, trap=peer in trapped)
    return conns


def render_shared(profile: ProtectionProfile) -> dict[str, ViciDict]:
    """The shared secrets we want (``load-shared`` messages by id): the cloud's PSK for any peer."""
    if not isinstance(profile.auth, PskAuth):
        return {}
    # No owners: the key applies to every peer identity, like IOS 'address 0.0.0.0 0.0.0.0'.
    return {PSK_ID: {"id": PSK_ID, "type": "IKE", "data": profile.auth.secret, "owners": []}}


def render_credentials(profile: ProtectionProfile) -> tuple[list[ViciDict], list[ViciDict]]:
    """(``load-cert`` messages, ``load-key`` messages) for an x509 profile; empty for PSK."""
    if not isinstance(profile.auth, X509Auth):
        return [], []
    auth = profile.auth
    certs = [
        {"type": "X509", "flag": "CA", "data": auth.ca_pem},
        {"type": "X509", "flag": "NONE", "data": auth.certificate_pem},
    ]
    keys = [{"type": "any", "data": auth.private_key_pem}]
    return certs, keys


def render_initiate(peer: IPv4Address) -> ViciDict:
    """``initiate`` for the per-peer connection; ``timeout -1`` returns at once (events report the result)."""
    return {"ike": peer_conn_name(peer), "child": CHILD_NAME, "timeout": "-1"}


def render_terminate(ike_unique_id: int) -> ViciDict:
    """``terminate`` of one IKE_SA (and its CHILD_SAs) by unique id: charon sends the DELETE to the peer
    and we return at once (``ike-updown`` reports the end)."""
    return {"ike-id": str(ike_unique_id), "timeout": "-1"}
