"""Plain values the data plane takes and returns (no I/O here, so the agent can build and compare them freely)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Generic, TypeVar

# Our routing protocol number (rtnetlink RTPROT_*, 0..255). Routes and neighbours we install carry it, so
# we only ever touch our own entries and can adopt them after a restart. 0xd5 ('D' for DMVPN, unused by
# /etc/iproute2/rt_protos and by FRR, which uses 186-196).
RTPROT_DMVPN = 0xD5

# The GRE_KEY bit in IFLA_GRE_IFLAGS/OFLAGS (big-endian in pyroute2 since its issue 531).
GRE_KEY_FLAG = 0x2000


class DataplaneError(RuntimeError):
    """A netlink or nftables operation failed; the message says what and why (errno names included)."""


class DeviceConflict(DataplaneError):
    """The device name is taken by something we must not adopt (e.g. not a GRE device)."""


class NamespaceGone(DataplaneError):
    """The network namespace does not exist (any more)."""


@dataclass(frozen=True)
class TunnelConfig:
    """The multipoint GRE device as the spec describes it.

    ``address`` is the tunnel address WITH the subnet (``10.255.0.1/24`` as in the API); the device gets
    it as a /32 (FRR's way): which tunnel addresses are reachable directly and which via a hub is then
    decided by routes (see :class:`Route` and docs/dataplane.md), never by a connected /24.
    """

    name: str
    local: IPv4Address
    """Our NBMA (underlay) address: the GRE source, 'tunnel source'."""
    underlay: str
    """The underlay device the tunnel is bound to (IFLA_GRE_LINK, 'ip tunnel ... dev eth0')."""
    address: IPv4Interface
    key: int | None = None
    mtu: int = 1400
    ttl: int = 64
    on_demand: bool = True
    """Phase 2 hooks: clear NOARP, app_solicit=1, ucast/mcast_solicit=0 so the kernel asks us for NBMAs."""


@dataclass(frozen=True, order=True)
class Neighbour:
    """An NHRP binding in the kernel: tunnel address -> NBMA address (the 4-byte lladdr of the mGRE)."""

    tunnel_ip: IPv4Address
    nbma: IPv4Address


@dataclass(frozen=True, order=True)
class Route:
    """A route over the mGRE device: ``prefix via <tunnel address> dev <mgre> onlink``.

    ``via=None`` makes a link-scope route (``prefix dev <mgre>``): every address in it is resolved by
    neighbour lookup (a hub's route to its tunnel subnet). ``metric`` lets a shortcut and a summary
    coexist or lets NHRP routes lose to others.
    """

    prefix: IPv4Network
    via: IPv4Address | None = None
    metric: int = 0


T = TypeVar("T")


class TunnelAction(StrEnum):
    CREATED = "created"
    ADOPTED = "adopted"  # existed with matching parameters, untouched
    UPDATED = "updated"  # existed, changed in place (mtu, ttl, addresses, flags, up)
    RECREATED = "recreated"  # existed with parameters that cannot change in place (key, local, link)


@dataclass(frozen=True)
class TunnelReport:
    """What :meth:`Dataplane.ensure_tunnel` did; ``changes`` are human-readable ('mtu 1500 -> 1400')."""

    action: TunnelAction
    ifindex: int
    changes: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return self.action is not TunnelAction.ADOPTED or bool(self.changes)


@dataclass(frozen=True)
class ReconcileReport(Generic[T]):
    """What a desired-set reconcile did: entries added, replaced (changed value) and removed.

    ``conflicts``: desired entries NOT installed because a foreign entry holds the same key (a route
    with the same prefix and metric that is not ours); we never overwrite what is not ours.
    """

    added: tuple[T, ...] = ()
    replaced: tuple[T, ...] = ()
    removed: tuple[T, ...] = ()
    conflicts: tuple[T, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.added or self.replaced or self.removed)


@dataclass(frozen=True)
class Changes:
    """An incremental update against what the caller installed last, applied without dumping the
    kernel's tables (a dump costs far more than the one or two writes a new shortcut needs).

    ``add_routes`` are keys the caller did not hold: they are created, never replaced, so a foreign route
    that holds the key keeps it (reported in ``conflicts``). ``change_routes`` are keys the caller did
    install itself: they are replaced in place, with no window without a route.
    """

    set_neighbours: tuple[Neighbour, ...] = ()
    remove_neighbours: tuple[Neighbour, ...] = ()
    add_routes: tuple[Route, ...] = ()
    change_routes: tuple[Route, ...] = ()
    remove_routes: tuple[Route, ...] = ()

    def __bool__(self) -> bool:
        return bool(
            self.set_neighbours or self.remove_neighbours or self.add_routes or self.change_routes or self.remove_routes
        )


@dataclass(frozen=True)
class InterfaceStats:
    rx_packets: int
    tx_packets: int
    rx_bytes: int
    tx_bytes: int
    rx_errors: int = 0
    tx_errors: int = 0
    rx_dropped: int = 0
    tx_dropped: int = 0


@dataclass(frozen=True)
class DeviceState:
    """The mGRE device as the kernel has it now."""

    name: str
    ifindex: int
    kind: str
    up: bool
    noarp: bool
    mtu: int
    ttl: int
    key: int | None
    local: IPv4Address | None
    remote: IPv4Address | None
    link: int
    addresses: tuple[IPv4Interface, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    """Everything we own in one namespace: for 'show' views and adoption after a restart."""

    device: DeviceState | None
    neighbours: tuple[Neighbour, ...] = ()
    routes: tuple[Route, ...] = ()
    stats: InterfaceStats | None = None


@dataclass(frozen=True)
class Solicitation:
    """The kernel asks for the NBMA address of ``tunnel_ip`` (Phase 2 on-demand resolution)."""

    tunnel_ip: IPv4Address
    ifindex: int


@dataclass(frozen=True)
class HairpinEvent:
    """A packet the hub forwarded in and out of the mGRE device (Phase 3: send a Traffic Indication)."""

    src: IPv4Address
    dst: IPv4Address
    header: bytes
    """The packet's first bytes (IP header and a little payload) as the Traffic Indication quotes them."""
    indev: int | None = None
    outdev: int | None = None


@dataclass(frozen=True)
class HairpinConfig:
    """The hub's redirect trigger: forwarded packets in and out of ``ifname``, rate-limited, to NFLOG."""

    ifname: str
    group: int = 1
    rate_per_minute: int = 4
    burst: int = 1
    prefixlen: int = 24
    """Rate-limit key granularity: source and destination masked to this length (FRR: /24)."""
    snaplen: int = 128
    table: str = "dmvpn"
    """nftables table (family inet). Other chains may live in it: we only (re)write our own chain."""
    chain: str = "hairpin"
    """Our chain (not an nft keyword: "redirect" is one); our set is "<chain>_pairs"."""


@dataclass(frozen=True)
class ArrivalsConfig:
    """The first GRE packet that arrives under each new inbound SA, to NFLOG (:mod:`dmvpn.dataplane.arrivals`)."""

    local: IPv4Address
    """Our NBMA address: GRE to it is ours."""
    group: int = 2
    """NFLOG group (the hub's hairpin chain uses 1; a spoke runs this one)."""
    table: str = "dmvpn"
    """nftables table (family inet), shared with the hairpin and usage chains; we only (re)write our own chain."""
    chain: str = "arrivals"
    """Our chain; our set is "<chain>_sas"."""


@dataclass(frozen=True)
class UsageConfig:
    """Per-peer traffic counting (:mod:`dmvpn.dataplane.usage`): GRE sent from ``local``, per destination."""

    local: IPv4Address
    """Our NBMA address."""
    table: str = "dmvpn"
    """nftables table (family inet), shared with the hairpin chain; we only (re)write our own chain."""
    chain: str = "usage"
    """Our chain; our set is "<chain>_peers"."""
