"""Values of the IPsec layer: credentials, the protection profile, SA views and events (no I/O here)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Literal

from dmvpn.api.constants import DEFAULT_ESP_PROPOSAL, DEFAULT_IKE_PROPOSAL

if TYPE_CHECKING:
    from dmvpn.api.spec import IpsecSpec

#: Name of the connection every endpoint loads to answer IKE from any peer (hub: the only one).
RESPONDER_CONN = "dmvpn"
#: Prefix of the per-peer connections a spoke loads to initiate towards one NBMA address.
PEER_CONN_PREFIX = "dmvpn-peer-"
#: Name of the CHILD_SA (the GRE transport-mode SA) inside every connection.
CHILD_NAME = "gre"
#: ID of our shared secret in charon (``get-shared`` lists it, ``unload-shared`` takes it).
PSK_ID = "dmvpn-psk"

Role = Literal["hub", "spoke"]


class IpsecError(RuntimeError):
    """charon refused a command, or could not be reached; the message says which and why."""


class CharonUnavailable(IpsecError):
    """The VICI socket is closed or absent (charon not running, or restarting)."""


@dataclass(frozen=True)
class PskAuth:
    """IKE authentication with one pre-shared key for the whole cloud (Cisco: keyring, address 0.0.0.0)."""

    secret: bytes = field(repr=False)


@dataclass(frozen=True)
class X509Auth:
    """IKE authentication with certificates: ours, our private key, and the CA(s) peers must chain to.

    All three are PEM bytes as read from Kubernetes Secrets (``tls.crt``, ``tls.key``, ``ca.crt``).
    """

    certificate_pem: bytes
    private_key_pem: bytes = field(repr=False)
    ca_pem: bytes


@dataclass(frozen=True)
class ProtectionProfile:
    """What 'tunnel protection ipsec profile' says for one endpoint: GRE between NBMA addresses in ESP.

    ``local_nbma`` is this endpoint's underlay address (IKE and ESP source); ``role`` decides whether we
    only respond (hub) or also initiate to peers on demand (spoke).
    """

    local_nbma: IPv4Address
    auth: PskAuth | X509Auth
    role: Role = "spoke"
    ike_proposals: tuple[str, ...] = (DEFAULT_IKE_PROPOSAL,)
    esp_proposals: tuple[str, ...] = (DEFAULT_ESP_PROPOSAL,)
    dpd_delay: int = 30
    rekey_time: int = 14400

    @classmethod
    def from_spec(
        cls,
        spec: IpsecSpec,
        local_nbma: IPv4Address,
        role: Role,
        *,
        psk: bytes | None = None,
        x509: X509Auth | None = None,
    ) -> ProtectionProfile:
        """Build the profile from ``spec.ipsec`` and the Secret values the agent has read (and validated
        with ``dmvpn.api.validate_ipsec_psk``). Raises ValueError if the credentials do not fit the spec."""
        auth: PskAuth | X509Auth
        if spec.psk is not None:
            if psk is None:
                raise ValueError("spec.ipsec.psk is set but no PSK value was given")
            auth = PskAuth(psk)
        elif spec.x509 is not None:
            if x509 is None:
                raise ValueError("spec.ipsec.x509 is set but no certificate, key and CA were given")
            auth = x509
        else:
            raise ValueError("spec.ipsec has no credentials (mode disabled needs no ProtectionProfile)")
        return cls(
            local_nbma=local_nbma,
            auth=auth,
            role=role,
            ike_proposals=tuple(spec.ike_proposals),
            esp_proposals=tuple(spec.esp_proposals),
            dpd_delay=spec.dpd_delay,
            rekey_time=spec.rekey_time,
        )


class InitiatePolicy(enum.Enum):
    """Who brings up the SA to a peer when :meth:`IpsecManager.ensure_peer` is called."""

    AUTO = "auto"
    """Spoke to spoke: the endpoint with the lower NBMA address initiates, the other waits and initiates
    itself only if no SA arrived within the fallback delay (no duplicate IKE_SAs when both resolve)."""
    ALWAYS = "always"
    """Spoke to hub: initiate now, and again whenever the SA goes down while the peer is ensured."""
    ONCE = "once"
    """Spoke to spoke, the end that knows both addresses while the other cannot know it is wanted (the lower
    end, told by the hub or by the other's Resolution Request): initiate now, but never bring the SA back
    once it goes down. A shortcut's SA lives for its traffic; a peer that removed it as idle must not see it
    re-made (new traffic resolves, and asks, again). Nothing of the peer's can be under way, so
    charon's SA list is not read first; our own concurrent asks share one initiation claim, which an
    agent restart in the middle of an IKE exchange loses."""
    TRAP = "trap"
    """ONCE's case with traffic waiting (the lower end told the other's address by the hub): the peer's
    connection is loaded with a trap policy and initiated (both commands together), so the caller may
    route into it at once. The kernel queues what it routes there (``xfrm_larval_drop=0``) until charon's
    CHILD_SA takes the trap's place, and the queue leaves through it, with nothing crossing the hub while
    IKE runs. The acquire those packets raise finds the IKE_SA under way and adds nothing to it (the
    kernel lab checks that one CHILD_SA results). Like ONCE, the SA is never brought back once it goes
    down. Granted only while nothing else is initiating to the peer (``PeerAction.TRAPPED``); otherwise
    the call does what ONCE would."""
    NEVER = "never"
    """Only accept the peer's SA (the per-peer connection is loaded, nothing is initiated)."""


class PeerAction(enum.Enum):
    """What :meth:`IpsecManager.ensure_peer` did."""

    ALREADY_UP = "already-up"
    INITIATED = "initiated"
    IN_PROGRESS = "in-progress"
    """An IKE_SA to the peer is being set up already (ours or the peer's): nothing new was initiated."""
    WAITING = "waiting"
    """The peer initiates (tie-break); a fallback initiation is scheduled."""
    TRAPPED = "trapped"
    """TRAP: charon holds a trap policy for the peer and is initiating the SA; route into it at once."""


@dataclass(frozen=True)
class ChildSaInfo:
    """One CHILD_SA (the GRE transport-mode ESP SA pair) of an IKE_SA, as ``list-sas`` reports it."""

    name: str
    unique_id: int
    state: str
    mode: str
    protocol: str
    spi_in: str
    spi_out: str
    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int
    install_time_s: int | None
    rekey_time_s: int | None
    life_time_s: int | None
    encryption: str | None


@dataclass(frozen=True)
class IkeSaInfo:
    """One IKE_SA with its CHILD_SAs, for ``dmvpnctl show ipsec`` (IOS: ``show crypto ikev2 sa``)."""

    conn: str
    unique_id: int
    state: str
    local_host: IPv4Address | None
    remote_host: IPv4Address | None
    local_id: str
    remote_id: str
    initiator: bool
    spi_initiator: str
    spi_responder: str
    established_s: int | None
    """Seconds since the IKE_SA was established (None while connecting)."""
    rekey_time_s: int | None
    encryption: str | None
    children: tuple[ChildSaInfo, ...]

    @property
    def child_installed(self) -> bool:
        """True if at least one CHILD_SA is INSTALLED: GRE to this peer is protected."""
        return any(child.state == "INSTALLED" for child in self.children)


@dataclass(frozen=True)
class SaEvent:
    """The protected state of one peer changed: ``up`` is True once a CHILD_SA to it is installed, False
    once none is left. ``reason`` is the VICI event that caused it (``child-updown``, ``ike-updown``,
    ``disconnect``, ``sync``)."""

    peer: IPv4Address
    up: bool
    reason: str
    at: datetime


@dataclass(frozen=True)
class ApplyReport:
    """What :meth:`IpsecManager.apply` changed in charon; all empty on an idempotent reapply."""

    loaded_conns: tuple[str, ...] = ()
    unloaded_conns: tuple[str, ...] = ()
    loaded_shared: tuple[str, ...] = ()
    unloaded_shared: tuple[str, ...] = ()
    loaded_credentials: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(
            self.loaded_conns
            or self.unloaded_conns
            or self.loaded_shared
            or self.unloaded_shared
            or self.loaded_credentials
        )


@dataclass(frozen=True)
class GuardCounters:
    """Counters of the nftables guard (``table inet dmvpn_ipsec``) that enforces mode ``required``."""

    dropped_in_packets: int
    dropped_in_bytes: int
    dropped_out_packets: int
    dropped_out_bytes: int


def peer_conn_name(nbma: IPv4Address) -> str:
    """The connection a spoke loads to initiate towards ``nbma`` (``dmvpn-peer-192.0.2.12``)."""
    return f"{PEER_CONN_PREFIX}{nbma}"


def peer_of_conn(name: str) -> IPv4Address | None:
    """Inverse of :func:`peer_conn_name`; None for other connections."""
    if not name.startswith(PEER_CONN_PREFIX):
        return None
    try:
        return IPv4Address(name.removeprefix(PEER_CONN_PREFIX))
    except ValueError:
        return None
