"""Engine configuration (immutable; the agent builds it from the DMVPNHub/DMVPNSpoke resources)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from dmvpn.nhrp.cache import Network
from dmvpn.nhrp.codec import AUTH_MAX_SECRET_LEN, DEFAULT_HOP_COUNT, Address


@dataclass(frozen=True, slots=True, kw_only=True)
class NHSConfig:
    """A next hop server to register with; its protocol address is learned when not given."""

    nbma: Address
    protocol: Address | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StaticMapping:
    prefix: Network
    nbma: Address
    next_hop: Address | None = None  # defaults to the prefix's own address for host prefixes


class NhsAnswers(enum.Enum):
    """Which Resolution Requests without the A bit an NHS answers itself from a registration it holds
    (RFC 2332: the NHS serving the destination may reply for its client). The rest go on to the registrant,
    which answers authoritatively."""

    ALL = "all"
    """Every one: the requester learns the binding one hop and one node sooner."""
    LOWER_REQUESTER = "lower-requester"
    """Only a requester whose NBMA address is lower than the registrant's; a higher one's request goes on to
    the registrant. With IPsec between spokes the lower address initiates the SA (tie-break), and this way it
    is the lower end that learns the other's address first: from our answer, or from the forwarded request."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineConfig:
    protocol_address: Address  # our tunnel (overlay) address
    nbma_address: Address  # our underlay address, as configured (pre-NAT)
    nhs: tuple[NHSConfig, ...] = ()  # client role: servers to register with (several = dual hub)
    site_prefixes: tuple[Network, ...] = ()  # registered as CIEs with prefix length; answered for
    static_mappings: tuple[StaticMapping, ...] = ()
    server: bool = False  # NHS role: accept registrations, forward resolutions, send indications
    holding_time: int = 7200  # seconds, in every CIE we send (Cisco and FRR default)
    mtu: int = 0
    auth_secret: bytes | None = None  # Cisco cleartext authentication, 1-8 bytes
    nat_extension: bool = True  # send the Cisco NAT extension and honour it
    unique: bool = True  # set the unique bit in our registrations
    shortcuts: bool = True  # resolve destinations named by Traffic Indications
    redirect: bool = True  # (server) send Traffic Indications for hairpinned traffic
    # (client) set the A bit in our Resolution Requests: only the registrant itself may answer. Without it an
    # NHS that holds the registration may answer in its place (``nhs_answers``).
    authoritative_requests: bool = True
    nhs_answers: NhsAnswers = NhsAnswers.ALL  # (server) see NhsAnswers
    # (server) a Traffic Indication carries our answer for its destination (IndicationAnswer), to the
    # requesters ``nhs_answers`` would answer; an NHC without ``authoritative_requests`` then installs the
    # shortcut from the indication instead of asking: a round trip to the NHS sooner.
    indication_answers: bool = False
    hop_count: int = DEFAULT_HOP_COUNT
    min_prefix_length: int = 8  # never register or install anything broader than this
    registration_backoff: tuple[float, float] = (1.0, 64.0)  # first retry, cap (doubling)
    nhs_down_after: int = 4  # unanswered registration attempts before an NHS is declared down
    resolution_timeout: float = 1.0  # first retransmission; doubles
    resolution_attempts: int = 4
    negative_holding_time: float = 30.0
    purge_timeout: float = 1.0
    purge_attempts: int = 3
    traffic_indication_interval: float = 5.0  # (server) per (source, destination) pair
    traffic_indication_burst: int = 2
    traffic_indication_holddown: float = 2.0  # (client) ignore repeats for the same destination
    error_indication_interval: float = 1.0  # per peer NBMA; a burst of 5
    max_cache_entries: int = 65536
    max_rate_limit_keys: int = 16384
    request_id_start: int = 1

    def __post_init__(self) -> None:
        if self.auth_secret is not None and not 1 <= len(self.auth_secret) <= AUTH_MAX_SECRET_LEN:
            raise ValueError(f"the NHRP authentication secret is 1-{AUTH_MAX_SECRET_LEN} bytes")
        if not 1 <= self.holding_time <= 0xFFFF:
            raise ValueError("holding_time is 1-65535 seconds")
        if not 1 <= self.hop_count <= 0xFF:
            raise ValueError("hop_count is 1-255")
        for prefix in self.site_prefixes:
            if prefix.version != self.protocol_address.version:
                raise ValueError(f"site prefix {prefix} is not of the tunnel address family")
        if self.resolution_attempts < 1 or self.purge_attempts < 1 or self.nhs_down_after < 1:
            raise ValueError("attempt counts are at least 1")

    @property
    def host_prefix_length(self) -> int:
        return self.protocol_address.max_prefixlen
