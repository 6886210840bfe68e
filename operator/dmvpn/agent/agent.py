"""The node agent: one asyncio reconciler from a :class:`NodeConfig` into the kernel, NHRP and charon.

Event sources (NHRP packets, engine timers, SA events, hairpin NFLOG events, Phase 2 solicitations)
feed the sans-IO NHRP engine; its actions are carried out here. Kernel state is level-triggered: any
change marks the agent dirty and one reconcile task recomputes the whole desired set
(:mod:`dmvpn.agent.plan`) and writes only its difference from what it installed last; a full pass
against the kernel's own tables follows a start, a failed write and every quiet minute.

IPsec ordering (mode ``required``): no NHRP packet leaves towards a peer before its SA is up (the
nftables guard would drop it in clear): such sends wait in a small per-peer queue while IKE runs. A
spoke answering a Resolution Request starts IKE towards the requester at once, so IKE overlaps the
NHRP exchange instead of following it, and a shortcut is installed only once its SA is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any, Protocol

from dmvpn.agent import plan
from dmvpn.agent.config import NodeConfig
from dmvpn.agent.ports import DataplanePort, IpsecPort
from dmvpn.dataplane import DataplaneError, HairpinEvent, Neighbour, Route, Solicitation
from dmvpn.ipsec.types import GuardCounters, IkeSaInfo, InitiatePolicy, IpsecError, PeerAction, SaEvent
from dmvpn.nhrp.cache import ChangeKind, EntryType
from dmvpn.nhrp.codec import Address, PacketType, TrafficIndication, decode, ip_addresses
from dmvpn.nhrp.codec.errors import NHRPDecodeError
from dmvpn.nhrp.engine import (
    Action,
    CacheChanged,
    Engine,
    EngineConfig,
    NATAddressChanged,
    NhsAnswers,
    NHSConfig,
    NHSStateChanged,
    ResolutionDone,
    ResolutionFailed,
    Send,
)

log = logging.getLogger("dmvpn.agent")

PENDING_SEND_TTL = 10.0  # seconds an NHRP packet may wait for its peer's SA before it is dropped
PENDING_SEND_MAX = 16  # per peer
HELD_RESEND_AFTER_S = (0.1, 0.3)  # a packet that waited for a spoke's SA is sent again at these delays
HUB_SA_WAIT = 5.0  # seconds a starting spoke waits for its hubs' SAs before registering anyway
# A spoke-to-spoke SA we only answered carries our routes once a packet came in over it (the initiator can
# decrypt by then), or after the wait at the latest (the peer may send nothing). The data plane logs that
# packet (NFLOG); without that listener the agent reads the SA's counters from charon at this interval.
PEER_READY_POLL_S = 0.02
PEER_READY_WAIT_S = 1.0
# Seconds a shortcut routed into a trap policy waits for its SA before its routes are withdrawn (traffic back
# through the hub) and the SA is initiated again: the IKE exchange started with the trap failed or stalled.
TRAP_WAIT_S = 3.0
EARLY_ARRIVALS_KEPT = 256  # first packets logged before charon's SA-up event for their peer reached us
EVENTS_KEPT = 500
FULL_RECONCILE_EVERY = 60.0  # seconds without a change before a full pass checks the kernel's tables
_TYPE_OFFSET = 17
#: NHRP packet types that mean a shortcut is being built (Traffic Indication, Resolution Request/Reply).
_RESOLUTION_TYPES = frozenset(
    {PacketType.TRAFFIC_INDICATION, PacketType.RESOLUTION_REQUEST, PacketType.RESOLUTION_REPLY}
)
#: The periodic housekeeping (charon's SA list, the IPsec guard's counters) waits until this long after the
#: last resolution traffic: on a loaded node one sample holds the event loop and charon for 10-150 ms,
#: which would otherwise land on a shortcut being built (a Traffic Indication, a request the hub
#: forwards, the initiation of its SA) and delay it by as much.
HOUSEKEEPING_QUIET_S = 1.0


class Transport(Protocol):
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None: ...
    def send(self, nbma: Address, data: bytes) -> bool: ...
    def close(self) -> None: ...


TransportFactory = Callable[[int, Callable[[bytes, Address], None]], Transport]


class Observer(Protocol):
    """Metrics hooks (see :mod:`dmvpn.agent.metrics`); the default does nothing."""

    def shortcut_created(self) -> None: ...
    def shortcut_expired(self) -> None: ...
    def resolution_latency(self, seconds: float) -> None: ...
    def reconcile_error(self) -> None: ...


class _NullObserver:
    def shortcut_created(self) -> None: ...
    def shortcut_expired(self) -> None: ...
    def resolution_latency(self, seconds: float) -> None: ...
    def reconcile_error(self) -> None: ...


@dataclass
class PeerUsage:
    """Traffic seen on a shortcut peer's SA, for idle expiry."""

    last_bytes: int = -1
    last_active: float = 0.0


@dataclass
class AgentStats:
    reconciles: int = 0
    full_reconciles: int = 0
    reconcile_errors: int = 0
    shortcuts_created: int = 0
    shortcuts_expired: int = 0
    sends_held_for_sa: int = 0
    sends_dropped_no_sa: int = 0
    hairpin_events: int = 0
    solicitations: int = 0
    adopted_entries: int = 0
    last_error: str | None = None
    extra: dict[str, int] = field(default_factory=dict)


class Agent:
    """Runs one DMVPN endpoint. ``await agent.run(stop)`` until ``stop`` is set; kernel state, SAs and
    charon connections stay in place afterwards (a restarted agent adopts them)."""

    def __init__(
        self,
        config: NodeConfig,
        dataplane: DataplanePort,
        ipsec: IpsecPort | None,
        transport_factory: TransportFactory,
        *,
        hairpin: Callable[[], Any] | None = None,
        solicitations: Callable[[], Any] | None = None,
        arrivals: Callable[[], Any] | None = None,
        install_guard: Callable[[], Any] | None = None,
        guard_counters: Callable[[], Awaitable[GuardCounters | None]] | None = None,
        install_usage: Callable[[], Awaitable[Any]] | None = None,
        usage_counters: Callable[[], Awaitable[dict[IPv4Address, int] | None]] | None = None,
        uninstall: Sequence[tuple[str, Callable[[], Awaitable[Any]]]] = (),
        observer: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.dataplane = dataplane
        self.ipsec = ipsec if config.ipsec.required else None
        self._transport_factory = transport_factory
        self._hairpin_source = hairpin
        self._solicitation_source = solicitations
        self._arrivals_source = arrivals
        self._install_guard = install_guard
        self._guard_counters = guard_counters
        self.guard: GuardCounters | None = None  # last sample: clear GRE dropped by the IPsec guard
        self._install_usage = install_usage
        self._usage_counters = usage_counters
        self._uninstall = tuple(uninstall)  # (what, remove) for the kernel helpers a teardown takes away
        self.observer: Observer = observer or _NullObserver()
        self.clock = clock
        self.wallclock = wallclock
        self.engine = Engine(engine_config(config))
        self.transport: Transport | None = None
        self.ifindex: int | None = None
        self.stats = AgentStats()
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self.started_wall = wallclock()
        self.installed = plan.Desired()
        self._full_due = True  # the first pass compares against the kernel
        self._route_conflicts: set[plan.RouteKey] = set()
        self._sas: list[IkeSaInfo] = []
        # Bytes per peer at the last sample: the SAs' counters, or without IPsec the data plane's usage
        # counter (GRE we sent to each NBMA address); idle expiry compares samples of it.
        self.traffic: dict[IPv4Address, int] = {}
        self.traffic_at: float | None = None
        self.peer_since: dict[IPv4Address, float] = {}  # wall time a peer binding appeared
        self._dirty = asyncio.Event()
        self._timer_wakeup = asyncio.Event()
        self._held: dict[IPv4Address, deque[tuple[float, Send]]] = {}
        self._resolving_since: dict[Address, float] = {}
        self._renewing: set[Address] = set()  # destinations asked again before their shortcut expires
        self._usage: dict[IPv4Address, PeerUsage] = {}
        self._sa_up: set[IPv4Address] = set()
        # SA up, but the initiator may not decrypt yet: peer -> the id of the wait that holds its routes
        self._peer_not_ready: dict[IPv4Address, int] = {}
        self._waits = itertools.count(1)
        self._early_arrivals: dict[IPv4Address, float] = {}  # first packet over a new SA, before its SA-up
        # Shortcut peers routed into a trap policy (InitiatePolicy.TRAP) until their SA is up: peer -> wait id
        self._trapped: dict[IPv4Address, int] = {}
        # Traps need the guard's drop rule where queued packets do not meet it, and xfrm_larval_drop=0: both
        # come with the guard (install_guard). Without it a trap would lose the packets it should queue.
        self._traps_allowed = False
        self._listening: set[str] = set()  # kernel event sources that are up ("hairpin", "arrivals", ...)
        # time.monotonic() (real time, whatever clock the engine runs on) of the last resolution packet or hairpin
        self._resolution_traffic_at = -math.inf
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def sas(self) -> list[IkeSaInfo]:
        """The last SA list from charon (``show ipsec``, idle detection)."""
        return self._sas

    @sas.setter
    def sas(self, sas: list[IkeSaInfo]) -> None:
        """A new sample of charon's SAs; their byte counters are the traffic sample."""
        self._sas = sas
        self.note_traffic(_bytes_by_peer(sas))

    def note_traffic(self, by_peer: dict[IPv4Address, int]) -> None:
        """A traffic sample: a shortcut peer whose byte count moved was active at this sample's time."""
        self.traffic = by_peer
        self.traffic_at = now = self.clock()
        for nbma, seen in by_peer.items():
            usage = self._usage.get(nbma)
            # A re-made SA (or a counter element that timed out) starts at 0: a change to 0 is not traffic.
            if usage is not None and seen != usage.last_bytes and seen > 0:
                usage.last_bytes = seen
                usage.last_active = max(usage.last_active, now)

    # --- life cycle --------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.close()

    async def start(self) -> None:
        config = self.config
        await self.dataplane.open()
        report = await self.dataplane.ensure_tunnel()
        self.ifindex = report.ifindex
        self.event(
            "tunnel",
            f"{config.interface} {report.action.value}" + (f" ({', '.join(report.changes)})" if report.changes else ""),
        )
        snapshot = await self.dataplane.snapshot()
        self.installed = plan.Desired(frozenset(snapshot.neighbours), frozenset(snapshot.routes))
        if self.ipsec is None and self._install_usage is not None:
            await self._install_or_retry("usage", "traffic counter", self._install_usage)
        if self.ipsec is not None:
            if self._install_guard is not None:
                await self._install_or_retry("guard", "ipsec guard", self._install_guard_allowing_traps)
            if self._arrivals_source is not None:  # before any SA comes up
                self._spawn(self._arrivals_loop())
            await self.ipsec.start()
            self._spawn(self._sa_event_loop())
            for hub in config.hubs:
                await self._ensure_peer(hub.nbma, InitiatePolicy.ALWAYS, "hub")
        assert self.ifindex is not None
        self.transport = self._transport_factory(self.ifindex, self._on_packet)
        self.transport.start()
        now = self.clock()
        actions = self.engine.start(now)
        self._adopt(snapshot.neighbours, snapshot.routes, now)
        if self.ipsec is not None:  # SAs charon kept across our restart carry adopted shortcuts at once
            self._sa_up |= {peer for peer in self._known_peers() if self.ipsec.sa_up(peer)}
        self._carry_out(actions)
        self._dirty.set()
        self._spawn(self._reconcile_loop())
        self._spawn(self._timer_loop())
        self._spawn(self._sa_poll_loop())
        self._spawn(self._idle_loop())
        if self._hairpin_source is not None:
            self._spawn(self._hairpin_loop())
        if self._solicitation_source is not None:
            self._spawn(self._solicitation_loop())
        self.event("started", f"{config.role} {config.object_name} on node {config.node}, phase {config.phase}")

    async def _install_or_retry(self, kind: str, what: str, install: Callable[[], Awaitable[Any]]) -> None:
        """Install a kernel helper (the IPsec guard, the traffic counter); if nft fails (e.g. too slow),
        keep going and retry in the background: neither is needed to forward traffic (SAs still protect
        it; without the counter, idle expiry counts from the shortcut's creation until it is in)."""
        try:
            await install()
            return
        except Exception as error:
            self.stats.last_error = f"{what}: {error}"
            self.event(f"{kind}-failed", f"{error}; retrying in the background")
        self._spawn(self._retry_install(kind, what, install))

    async def _install_guard_allowing_traps(self) -> None:
        assert self._install_guard is not None
        await self._install_guard()
        self._traps_allowed = True

    async def _retry_install(self, kind: str, what: str, install: Callable[[], Awaitable[Any]]) -> None:
        for attempt in range(60):
            await asyncio.sleep(min(30.0, 2.0 * (attempt + 1)))
            try:
                await install()
            except Exception as error:
                self.stats.last_error = f"{what}: {error}"
                continue
            self.event(kind, "installed")
            return

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        if self.ipsec is not None:
            with contextlib.suppress(Exception):
                await self.ipsec.close()
        with contextlib.suppress(Exception):
            await self.dataplane.close()

    async def remove_kernel_helpers(self) -> list[str]:
        """Take away the nftables helpers this endpoint installed (hairpin chain, IPsec guard, usage
        counter), for a teardown when the node no longer runs it; a failure is logged and the others still
        go. Returns what failed. ``close()`` never does this: a restarted agent must find them in place."""
        failed: list[str] = []
        for what, remove in self._uninstall:
            try:
                await remove()
            except Exception as error:
                log.warning("teardown: removing the %s failed: %s", what, error)
                failed.append(what)
        return failed

    def _spawn(self, coro: Any) -> None:
        """Run ``coro`` in the background; the agent keeps a task only while it runs (an agent that runs for
        months starts thousands of short ones: IKE initiations, SA removals, waits)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or (error := task.exception()) is None:
            return
        self.stats.last_error = f"background task: {error!r}"
        log.error("background task failed", exc_info=error)

    def _adopt(self, neighbours: tuple[Neighbour, ...], routes: tuple[Route, ...], now: float) -> None:
        """Rebuild bindings a previous agent left in the kernel, so the first reconcile keeps them."""
        if self.config.phase == 1 and not self.config.is_hub:
            return
        for entry in plan.adopted_entries(self.config, neighbours, routes, now):
            if self.engine.cache.put(entry) is not None:
                self.stats.adopted_entries += 1
                if isinstance(entry.nbma, IPv4Address):
                    self.peer_since.setdefault(entry.nbma, self.wallclock())
        if self.stats.adopted_entries:
            self.event("adopted", f"{self.stats.adopted_entries} bindings found in the kernel")

    # --- events log ----------------------------------------------------------------------------------

    def event(self, kind: str, text: str) -> None:
        self.events.append({"time": self.wallclock(), "kind": kind, "text": text})
        log.info("%s: %s", kind, text)

    # --- NHRP input --------------------------------------------------------------------------------

    def _on_packet(self, data: bytes, nbma: Address) -> None:
        now = self.clock()
        indication = False
        if len(data) > _TYPE_OFFSET and data[_TYPE_OFFSET] in _RESOLUTION_TYPES:
            self._resolution_traffic_at = time.monotonic()
            indication = data[_TYPE_OFFSET] == PacketType.TRAFFIC_INDICATION
        try:
            actions = self.engine.receive(data, nbma, now)
        except Exception as error:  # a bug must cost one packet, never the agent
            log.exception("NHRP packet from %s crashed the engine", nbma)
            self.stats.extra["engine_errors"] = self.stats.extra.get("engine_errors", 0) + 1
            self.stats.last_error = f"engine: {error!r}"
            return
        self._carry_out(actions)
        if indication:  # after the Resolution Request it caused has left: noting it costs a decode and a log
            self._note_indication(data, nbma, now)

    def _note_indication(self, data: bytes, nbma: Address, now: float) -> None:
        """Start the resolution's clock and say so, for an indication the engine acted on (a resolution of
        the destination is pending; not one it refused, or already answered from its cache)."""
        if self.config.phase != 3 or self.config.is_hub:
            return
        try:
            packet = decode(data)
        except NHRPDecodeError:
            return
        if not isinstance(packet, TrafficIndication):
            return
        addresses = ip_addresses(packet.original_packet)
        if addresses is None:
            return
        destination = addresses[1]
        if destination not in self._resolving_since and self.engine.resolving(destination):
            self._resolving_since[destination] = now
            self.event("traffic-indication", f"from {nbma}: {addresses[0]} -> {destination} went via the hub")

    # --- engine actions ----------------------------------------------------------------------------

    def _carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send(action)
            elif isinstance(action, CacheChanged):
                self._cache_changed(action)
            elif isinstance(action, NHSStateChanged):
                self._dirty.set()
                state = "up" if action.up else "down"
                self.event("nhs", f"{action.nbma} ({action.protocol}) {state}: {action.reason}")
            elif isinstance(action, ResolutionDone):
                self._resolved(action)
            elif isinstance(action, ResolutionFailed):
                self._resolving_since.pop(action.destination, None)
                self._renewing.discard(action.destination)
                self.event("resolution-failed", f"{action.destination}: {action.reason}")
            elif isinstance(action, NATAddressChanged):
                self.event("nat", f"our NBMA address as the hub sees it: {action.nbma or 'unchanged (no NAT)'}")
        self._timer_wakeup.set()

    def _send(self, action: Send) -> None:
        nbma = action.nbma
        if self.ipsec is not None and isinstance(nbma, IPv4Address) and nbma not in self._sa_up:
            if self.ipsec.sa_up(nbma):  # the manager heard first (our event task has not run yet)
                self._sa_changed(nbma, True, "event")
                self._transmit(action)
                return
            held = self._held.setdefault(nbma, deque(maxlen=PENDING_SEND_MAX))
            held.append((self.clock(), action))
            self.stats.sends_held_for_sa += 1
            if not self.config.is_hub:
                if action.relay is not None:
                    self._relay(action, action.relay)
                self._spawn(self._ensure_peer(nbma, self._policy_for(nbma), "nhrp"))
            return
        self._transmit(action)

    def _relay(self, action: Send, nhs: Address) -> None:
        """Our reply must wait for the SA to the requester: hand it to the NHS its request came through as
        well (the NHS passes it on over its own SA), so the requester learns our NBMA address now. If we
        are the lower address we are initiating that SA, and the requester's route goes in when it is up;
        if we are the higher one the requester initiates (the tie-break), and could not before it knew our
        address. The held direct copy still goes once the SA is up, should this one be lost."""
        self.stats.extra["replies_relayed"] = self.stats.extra.get("replies_relayed", 0) + 1
        self._send(Send(nhs, action.data, action.packet_type))

    def _transmit(self, action: Send) -> None:
        if self.transport is None:
            return
        try:
            self.transport.send(action.nbma, action.data)
        except OSError as error:
            log.warning("NHRP send to %s failed: %s", action.nbma, error)

    def _policy_for(self, nbma: IPv4Address) -> InitiatePolicy:
        if self.config.hub_by_nbma(nbma) is not None:
            return InitiatePolicy.ALWAYS
        return self._responder_policy(nbma)

    def _responder_policy(self, requester: IPv4Address) -> InitiatePolicy:
        """Who brings up the SA when we answer another spoke's Resolution Request (we only ever send to a
        spoke to answer one). One rule between spokes, so two that resolve each other at once build one
        IKE_SA: the lower NBMA address initiates as soon as it knows the other's, the higher waits (AUTO:
        it initiates itself only if no SA arrived within the fallback delay). As the lower end we initiate
        at once (ONCE: if the SA goes, the peer found the shortcut idle, and nobody re-makes it until
        traffic asks again); as the higher one we wait, and our reply, relayed through the NHS, is how the
        requester learns our address (``_relay``)."""
        if int(self.config.nbma) > int(requester):
            return InitiatePolicy.AUTO
        return InitiatePolicy.ONCE

    def _cache_changed(self, change: CacheChanged) -> None:
        entry = change.entry
        # An update may have replaced a binding the plan uses by one it does not (the change names only
        # the new one), so updates always count.
        if change.kind == ChangeKind.UPDATED or plan.uses(self.config, entry.type):
            self._dirty.set()
        nbma = entry.nbma
        if not isinstance(nbma, IPv4Address):
            return
        if change.kind == ChangeKind.REMOVED:
            if entry.type in (EntryType.SHORTCUT, EntryType.DYNAMIC):
                self.event("binding-removed", f"{entry.prefix} ({entry.type.value}) at {nbma}")
            if not any(e.nbma == nbma for e in self.engine.cache):
                self.peer_since.pop(nbma, None)
                self._forget_spoke_peer(nbma)
            return
        self.peer_since.setdefault(nbma, self.wallclock())
        if entry.type == EntryType.DYNAMIC and change.kind == ChangeKind.ADDED:
            self.event("registration", f"{entry.prefix} at {nbma} (next hop {entry.next_hop})")
        elif entry.type == EntryType.CACHED and self.ipsec is not None and not self.config.is_hub:
            # A Resolution Request told us who wants a shortcut to us: start IKE now, in parallel.
            self._spawn(self._ensure_peer(nbma, self._responder_policy(nbma), "resolution request"))

    def _forget_spoke_peer(self, nbma: IPv4Address) -> None:
        """The last binding to another spoke went (purged, expired): its SA has nothing left to carry.
        A purge after the peer moved to a new NBMA address must not leave an SA to the old one behind."""
        if self.config.is_hub or self.config.hub_by_nbma(nbma) is not None:
            return
        self._usage.pop(nbma, None)
        trapped = self._trapped.pop(nbma, None) is not None
        if self.ipsec is not None and (nbma in self._sa_up or trapped):
            self.event("ike", f"removing the SA to {nbma}: no binding uses it")
            self._sa_changed(nbma, False, "no binding uses it")  # once, however many bindings went together
            self._spawn(self._remove_sa(nbma))

    def _resolved(self, done: ResolutionDone) -> None:
        entry = done.entry
        if done.destination in self._renewing:
            self._renewing.discard(done.destination)
            self.event("shortcut-renewed", f"{entry.prefix} via {entry.next_hop} at NBMA {entry.nbma}")
            return
        started = self._resolving_since.pop(done.destination, None)
        if started is not None:
            self.observer.resolution_latency(self.clock() - started)
        if done.indication_from is not None:  # no request, so _note_indication starts no clock: say it here
            self.observer.resolution_latency(0.0)
            self.event(
                "traffic-indication",
                f"from {done.indication_from}: traffic to {done.destination} went via the hub, which sent its answer",
            )
        if entry.type != EntryType.SHORTCUT:
            return
        self.stats.shortcuts_created += 1
        self.observer.shortcut_created()
        self.event("resolution-reply", f"{done.destination}: {entry.prefix} via {entry.next_hop} at NBMA {entry.nbma}")
        if isinstance(entry.nbma, IPv4Address):
            self._usage[entry.nbma] = PeerUsage(last_active=self.clock())
            if self.ipsec is not None and entry.nbma not in self._sa_up:
                self._spawn(self._ensure_peer(entry.nbma, self._shortcut_policy(done), "shortcut"))

    def _shortcut_policy(self, done: ResolutionDone) -> InitiatePolicy:
        """An NHS that answered our request for the destination itself means the destination never saw
        the request and nobody else brings the SA up, so we initiate at once (our hub answers only a
        requester with the lower address, which initiates anyway: ``NhsAnswers.LOWER_REQUESTER``). An
        answer in a Traffic Indication goes to the lower end, or to the higher one once the lower end had
        its answer (so the lower end initiates): the tie-break of ``_responder_policy`` decides, and the
        higher end waits. The responder's own reply (direct over its SA, or relayed through the NHS while
        it waits) follows that tie-break too: AUTO, the lower address initiates at once, the higher waits."""
        nbma = done.entry.nbma
        if done.indication_from is not None and isinstance(nbma, IPv4Address):
            policy = self._responder_policy(nbma)
        else:
            policy = InitiatePolicy.ONCE if done.nhs_answer else InitiatePolicy.AUTO
        # Traffic to the peer is what made us resolve it: route it into a trap at once instead (see TRAP).
        return InitiatePolicy.TRAP if policy is InitiatePolicy.ONCE and self._traps_allowed else policy

    # --- IPsec -------------------------------------------------------------------------------------

    def _known_peers(self) -> set[IPv4Address]:
        peers = {hub.nbma for hub in self.config.hubs}
        peers |= {e.nbma for e in self.engine.cache if isinstance(e.nbma, IPv4Address)}
        return peers

    async def _ensure_peer(self, nbma: IPv4Address, policy: InitiatePolicy, why: str) -> None:
        if self.ipsec is None or nbma in self._sa_up or nbma in self._trapped:
            return  # a trapped peer's IKE starts with its traffic; asking again would undo the trap
        try:
            action = await self.ipsec.ensure_peer(nbma, policy)
        except Exception as error:
            self.stats.last_error = f"ipsec ensure_peer {nbma}: {error}"
            log.warning("IPsec towards %s failed: %s", nbma, error)
            return
        if action.value != "already-up":
            self.event("ike", f"{action.value} towards {nbma} ({why})")
        if self.ipsec.sa_up(nbma):
            self._sa_changed(nbma, True, "already up")
        elif action is PeerAction.TRAPPED and nbma not in self._trapped:
            self._route_into_trap(nbma)

    def _route_into_trap(self, nbma: IPv4Address) -> None:
        """Route the shortcut now: charon is initiating, and the kernel queues its packets in the trap until
        the SA is up (nothing crosses the hub meanwhile). Withdrawn after :data:`TRAP_WAIT_S` without an SA."""
        wait = next(self._waits)
        self._trapped[nbma] = wait
        self._dirty.set()
        self._spawn(self._withdraw_trap_unless_up(nbma, wait))

    async def _withdraw_trap_unless_up(self, nbma: IPv4Address, wait: int) -> None:
        await asyncio.sleep(TRAP_WAIT_S)
        if self._trapped.get(nbma) != wait:
            return  # the SA came up (or the peer went)
        del self._trapped[nbma]
        self.stats.extra["traps_withdrawn"] = self.stats.extra.get("traps_withdrawn", 0) + 1
        self.event("trap-withdrawn", f"{nbma}: no SA within {TRAP_WAIT_S:g} s; via the hub again, initiating")
        self._dirty.set()
        # AUTO, not ONCE: as the lower end we initiate either way, and AUTO first asks charon whether the
        # trap's own IKE_SA is still under way (a slow exchange), which a second one would only duplicate.
        await self._ensure_peer(nbma, InitiatePolicy.AUTO, "trap withdrawn")

    async def _sa_event_loop(self) -> None:
        assert self.ipsec is not None
        stream = self.ipsec.events()
        try:
            async for sa_event in stream:
                self._on_sa_event(sa_event)
        finally:
            stream.close()

    def _on_sa_event(self, sa_event: SaEvent) -> None:
        self._sa_changed(sa_event.peer, sa_event.up, sa_event.reason)

    def _sa_changed(self, nbma: IPv4Address, up: bool, reason: str) -> None:
        if up == (nbma in self._sa_up):
            return
        self._trapped.pop(nbma, None)
        if up:
            self._sa_up.add(nbma)
            self.event("sa-up", f"{nbma} ({reason})")
            self._hold_routes_until_peer_ready(nbma)
            self._flush_held(nbma)
            if not self.config.is_hub and self.config.hub_by_nbma(nbma) is None:
                # A reply to our pending resolutions may have waited for this SA (or died with a crossed
                # duplicate): ask again now rather than at the next backoff step, seconds later.
                self._carry_out(self.engine.retransmit_resolutions(self.clock()))
        else:
            self._sa_up.discard(nbma)
            self._peer_not_ready.pop(nbma, None)
            self._early_arrivals.pop(nbma, None)
            self.event("sa-down", f"{nbma} ({reason})")
        self._dirty.set()

    def _hold_routes_until_peer_ready(self, nbma: IPv4Address) -> None:
        """A new SA to another spoke that the peer initiated: charon installed our end before it sent the
        last IKE_AUTH message, and the initiator installs its inbound SA only when that message arrives, so
        what we route over the SA at once can reach the peer before it can decrypt it (a lost packet in the
        switch). Our routes through the peer wait for a first packet from it over the SA. Not on a hub
        (spokes initiate to it and register over the SA), not for a hub, and not for a peer our routes
        already use (a restarted agent adopting its shortcuts)."""
        arrived_at = self._early_arrivals.pop(nbma, None)
        if self.ipsec is None or self.config.is_hub or self.config.hub_by_nbma(nbma) is not None:
            return
        if not self.ipsec.answered_only(nbma) or any(n.nbma == nbma for n in self.installed.neighbours):
            return
        if arrived_at is not None and time.monotonic() - arrived_at <= PEER_READY_WAIT_S:
            self.event("sa-ready", f"{nbma}: routing over the SA it initiated (a packet came in before its SA-up)")
            return
        wait = next(self._waits)
        self._peer_not_ready[nbma] = wait
        self._spawn(self._route_when_peer_ready(nbma, wait))

    async def _route_when_peer_ready(self, nbma: IPv4Address, wait: int) -> None:
        """End the wait ``wait`` for ``nbma`` after :data:`PEER_READY_WAIT_S` unless a packet ended it first:
        the data plane's log of the first packet over the SA (:meth:`on_arrival`) or, when that listener is
        not up, charon's inbound counter of the SA, read every :data:`PEER_READY_POLL_S`."""
        assert self.ipsec is not None
        deadline = time.monotonic() + PEER_READY_WAIT_S
        heard = False
        while self._peer_not_ready.get(nbma) == wait and (left := deadline - time.monotonic()) > 0:
            if "arrivals" in self._listening:  # on_arrival ends the wait; this only bounds it
                await asyncio.sleep(left)
                continue
            try:
                heard = await self.ipsec.packets_in(nbma) > 0
            except IpsecError as error:  # charon busy or gone: the wait bounds the delay
                log.debug("could not read the SA counters of %s: %s", nbma, error)
            if heard:
                break
            await asyncio.sleep(PEER_READY_POLL_S)
        if self._peer_not_ready.get(nbma) == wait:
            why = "a packet came in over it" if heard else f"nothing came in within {PEER_READY_WAIT_S:.0f} s"
            self._peer_ready(nbma, why)

    def _peer_ready(self, nbma: IPv4Address, why: str) -> None:
        del self._peer_not_ready[nbma]
        self.event("sa-ready", f"{nbma}: routing over the SA it initiated ({why})")
        self._dirty.set()

    async def _arrivals_loop(self) -> None:
        assert self._arrivals_source is not None
        await self._keep_listening("arrivals", self._arrivals_source, self.on_arrival)

    def on_arrival(self, logged: HairpinEvent) -> None:
        """The data plane logged the first GRE packet from ``logged.src`` under a new inbound SA."""
        nbma = logged.src
        self.stats.extra["sa_first_packets"] = self.stats.extra.get("sa_first_packets", 0) + 1
        if nbma in self._peer_not_ready:
            self._peer_ready(nbma, "a packet came in over it")
        elif nbma not in self._sa_up:  # charon's SA-up event is still on its way
            if len(self._early_arrivals) >= EARLY_ARRIVALS_KEPT:
                self._early_arrivals.pop(next(iter(self._early_arrivals)))
            self._early_arrivals[nbma] = time.monotonic()

    def _flush_held(self, nbma: IPv4Address) -> None:
        held = self._held.pop(nbma, None)
        if not held:
            return
        now = self.clock()
        flushed: list[Send] = []
        for queued_at, action in held:
            if now - queued_at <= PENDING_SEND_TTL:
                self._transmit(action)
                flushed.append(action)
            else:
                self.stats.sends_dropped_no_sa += 1
        if flushed and self.config.hub_by_nbma(nbma) is None:
            self._spawn(self._send_again(flushed))

    async def _send_again(self, actions: list[Send]) -> None:
        """Send what waited for a spoke's SA again, twice, moments later. When we were IKE's responder, our
        CHILD_SA is up before the initiator has installed its own (it does so on our last IKE_AUTH
        message), so the first copy can reach it before its inbound SA exists and be dropped; that copy
        is a Resolution Reply the requester would otherwise wait a retransmission, via the hub, for. A
        duplicate reply matches no pending request at the requester and is ignored."""
        waited = 0.0
        for delay in HELD_RESEND_AFTER_S:
            await asyncio.sleep(delay - waited)
            waited = delay
            for action in actions:
                self._transmit(action)
            self.stats.extra["held_sends_repeated"] = self.stats.extra.get("held_sends_repeated", 0) + len(actions)

    def _expire_held(self, now: float) -> None:
        for nbma in list(self._held):
            held = self._held[nbma]
            while held and now - held[0][0] > PENDING_SEND_TTL:
                held.popleft()
                self.stats.sends_dropped_no_sa += 1
            if not held:
                del self._held[nbma]

    async def _sa_poll_loop(self) -> None:
        """SA list for ``show ipsec``, idle detection, and a safety net for missed events."""
        # Sampled at least twice per idle timeout, so a short timeout still sees traffic in time.
        period = min(2.0, max(0.5, self.config.shortcut_idle_timeout / 2))
        while True:
            await asyncio.sleep(period)
            await self._until_resolution_quiet(limit_s=period)
            if self.ipsec is None:
                await self._sample_usage()
                continue
            await self._sample_guard()
            try:
                self.sas = await self.ipsec.list_sas()
            except Exception as error:
                self.stats.last_error = f"ipsec list_sas: {error}"
                continue
            for peer in self._known_peers():
                self._sa_changed(peer, self.ipsec.sa_up(peer), "sync")
            await self._verify_charon()

    async def _verify_charon(self) -> None:
        """Repair what someone else changed in charon (our connections, the PSK) now and then. Here, not
        in ensure_peer: the check costs charon two more answers, and a shortcut waits for ensure_peer;
        this loop has just waited for resolution traffic to pass."""
        assert self.ipsec is not None
        try:
            report = await self.ipsec.verify_if_due()
        except Exception as error:
            self.stats.last_error = f"ipsec verify: {error}"
            return
        if report is not None and report.changed:
            self.event("ike", f"repaired charon's configuration: {report}")

    async def _until_resolution_quiet(self, limit_s: float) -> None:
        """Wait until no resolution traffic has passed for :data:`HOUSEKEEPING_QUIET_S`, at most
        ``limit_s``: a busy hub (shortcuts forming all the time) still samples, one period late."""
        deadline = time.monotonic() + limit_s
        for attempt in range(100):  # each pass sleeps until quiet or the deadline; a bound, not the limit
            now = time.monotonic()
            quiet_at = self._resolution_traffic_at + HOUSEKEEPING_QUIET_S
            if now >= quiet_at or now >= deadline:
                return
            if attempt == 0:
                self.stats.extra["housekeeping_deferred"] = self.stats.extra.get("housekeeping_deferred", 0) + 1
            await asyncio.sleep(min(quiet_at, deadline) - now)

    async def _sample_usage(self) -> None:
        """Without IPsec: bytes sent to each peer, from the data plane's counter (None: not installed)."""
        if self._usage_counters is None or not any(e.type == EntryType.SHORTCUT for e in self.engine.cache):
            return  # nothing to age out: no nft run
        try:
            counts = await self._usage_counters()
        except Exception as error:
            self.stats.last_error = f"traffic counter: {error}"
            return
        if counts is not None:
            self.note_traffic(counts)

    async def _sample_guard(self) -> None:
        """What the guard dropped (peers without an SA: a rogue sender, a peer whose SA is gone)."""
        if self._guard_counters is None:
            return
        try:
            self.guard = await self._guard_counters()
        except Exception as error:
            self.stats.last_error = f"ipsec guard counters: {error}"

    # --- timers, reconcile, idle ----------------------------------------------------------------------

    async def _timer_loop(self) -> None:
        ticked_at = -math.inf  # clock() of the last engine tick
        deadline = self.engine.next_deadline()
        while True:
            delay = 1.0 if deadline is None else max(0.0, min(1.0, deadline - self.clock()))
            self._timer_wakeup.clear()
            woken = False
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancel that lands as the
            # event is set, leaving close() waiting forever for this task (seen in the simulated cloud).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._timer_wakeup.wait()
                    woken = True
            now = self.clock()
            deadline = self.engine.next_deadline()
            if woken and (deadline is None or deadline > now) and now - ticked_at < 1.0:
                # Woken by new work (every packet wakes us): only the deadline may have moved, and it is
                # read above. Running every timer here would add a full tick to each packet's handling;
                # a busy agent still ticks (and expires held sends) at least once a second.
                continue
            ticked_at = now
            self._expire_held(now)
            try:
                actions = self.engine.tick(now)
            except Exception as error:
                log.exception("engine tick failed")
                self.stats.last_error = f"engine tick: {error!r}"
                await asyncio.sleep(1.0)
                deadline = self.engine.next_deadline()
                continue
            self._carry_out(actions)
            deadline = self.engine.next_deadline()

    def desired(self) -> plan.Desired:
        if self.ipsec is None:
            sa_up: set[IPv4Address] = set()
        else:  # a trapped peer is routed before its SA: the kernel holds its packets until then
            sa_up = (self._sa_up | self._trapped.keys()) - self._peer_not_ready.keys()
        nhs_up = {nhs.nbma for nhs in self.engine.nhs if nhs.up and isinstance(nhs.nbma, IPv4Address)}
        return plan.desired(self.config, self.engine.cache, nhs_up, sa_up, self.clock())

    async def _reconcile_loop(self) -> None:
        while True:
            # Woken by a change, or after FULL_RECONCILE_EVERY quiet seconds for a full pass that repairs
            # what someone changed behind our back (asyncio.timeout: see _timer_loop).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FULL_RECONCILE_EVERY):
                    await self._dirty.wait()
            if not self._dirty.is_set():
                self._full_due = True
            self._dirty.clear()
            await self.reconcile_once()

    async def reconcile_once(self) -> bool:
        """Bring the kernel to :meth:`desired`. Normally only the difference from :attr:`installed` is
        written, with no dump (a new shortcut costs a neighbour and a route write, so the path switches
        within milliseconds of its SA); after a start, a failure, or a quiet period, a full pass compares
        against the kernel's own tables instead."""
        want = self.desired()
        full = self._full_due
        if want == self.installed and not full:
            return True
        try:
            conflicts = await (self._write_all(want) if full else self._write_changes(want))
        except (DataplaneError, OSError) as error:
            self._full_due = True  # what the failed pass wrote is unknown: compare against the kernel
            self.stats.reconcile_errors += 1
            self.stats.last_error = f"reconcile: {error}"
            self.observer.reconcile_error()
            log.warning("reconcile failed (retrying in 1 s): %s", error)
            self._spawn(self._redo_later(1.0))
            return False
        self._full_due = False
        self.stats.reconciles += 1
        if full:
            self.stats.full_reconciles += 1
        self._note_conflicts(conflicts)
        self._log_route_changes(self.installed, want)
        self.installed = want
        return True

    async def _write_all(self, want: plan.Desired) -> set[plan.RouteKey]:
        await self.dataplane.reconcile_neighbours(want.neighbours)
        report = await self.dataplane.reconcile_routes(want.routes)
        return {plan.route_key(route) for route in report.conflicts}

    async def _write_changes(self, want: plan.Desired) -> set[plan.RouteKey]:
        report = await self.dataplane.apply_changes(plan.changes(self.installed, want, self._route_conflicts))
        wanted = {plan.route_key(route) for route in want.routes}
        kept = {key for key in self._route_conflicts if key in wanted}
        retried = {plan.route_key(route) for route in report.added}
        return (kept - retried) | {plan.route_key(route) for route in report.conflicts}

    def _note_conflicts(self, conflicts: set[plan.RouteKey]) -> None:
        """Routes we want whose key a route that is not ours holds: we leave those alone, and say so once."""
        for prefix, metric in sorted(conflicts - self._route_conflicts):
            self.event("route-conflict", f"{prefix} metric {metric}: held by a route that is not ours, left alone")
        self._route_conflicts = conflicts

    async def _redo_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._dirty.set()

    def _log_route_changes(self, before: plan.Desired, after: plan.Desired) -> None:
        for route in sorted(after.routes - before.routes):
            via = f"via {route.via}" if route.via else "on the link"
            self.event("route-added", f"{route.prefix} {via}")
        for route in sorted(before.routes - after.routes):
            self.event("route-removed", f"{route.prefix}")

    @property
    def idle_check_period(self) -> float:
        """How often idle shortcuts are looked for and busy ones renewed: several times per idle timeout and
        per holding time (a binding an NHS answered for may hold for only part of it)."""
        timeout, hold = float(self.config.shortcut_idle_timeout), float(self.config.hold_time)
        return max(0.2, min(5.0, timeout / 4, hold / 4))

    async def _idle_loop(self) -> None:
        while True:
            await asyncio.sleep(self.idle_check_period)
            self.expire_idle_shortcuts()
            self.renew_busy_shortcuts()

    def renew_busy_shortcuts(self) -> list[Address]:
        """Resolve again, before they expire, the shortcuts that still carry traffic (not idle): the
        reply refreshes the binding in place, so a busy path never falls back to the hub, nor loses its
        SA, at the end of the responder's holding time (IOS and FRR renew the same way)."""
        now = self.clock()
        # At least two check periods ahead, so no busy shortcut can expire between two checks: one an NHS
        # answered for lives only as long as the registration it came from has left.
        ahead = max(renew_ahead(self.config.hold_time), 2 * self.idle_check_period)
        timeout = float(self.config.shortcut_idle_timeout)
        by_next_hop: dict[Address, list[Address]] = {}
        for entry in self.engine.cache:
            if entry.type != EntryType.SHORTCUT or entry.expires is None or entry.expires - now > ahead:
                continue
            usage = self._usage.get(entry.nbma) if isinstance(entry.nbma, IPv4Address) else None
            if usage is None or now - usage.last_active >= timeout or entry.next_hop is None:
                continue  # idle: expiry takes it
            destinations = by_next_hop.setdefault(entry.next_hop, [])
            if entry.prefix.network_address != entry.next_hop:
                destinations.append(entry.prefix.network_address)
        # The next hop's own binding comes with each reply for its prefixes; alone, it is asked for itself.
        due = [address for next_hop, found in by_next_hop.items() for address in (found or [next_hop])]
        for destination in due:
            self._renewing.add(destination)
            self._carry_out(self.engine.renew(destination, now))
        return due

    def expire_idle_shortcuts(self) -> list[IPv4Address]:
        """Drop shortcuts to peers that carried nothing for ``shortcutIdleTimeout`` (by their SA's bytes,
        or without IPsec by the GRE we sent them; with neither, since the shortcut was made), and their SAs.

        Idle time is measured between traffic samples (bytes changed in one sample, unchanged in a sample
        taken ``timeout`` later), never against the wall clock alone: when charon or nft answers more
        slowly than the timeout (a loaded node), a busy shortcut must not be removed for lack of a sample."""
        now = self.clock()
        timeout = float(self.config.shortcut_idle_timeout)
        traffic = self.traffic
        expired: list[IPv4Address] = []
        for nbma in {
            e.nbma for e in self.engine.cache if e.type == EntryType.SHORTCUT and isinstance(e.nbma, IPv4Address)
        }:
            assert isinstance(nbma, IPv4Address)
            if self.config.hub_by_nbma(nbma) is not None:
                continue
            usage = self._usage.setdefault(nbma, PeerUsage(last_active=now))
            if nbma in traffic and self.traffic_at is not None:
                idle_for = self.traffic_at - usage.last_active
            else:
                idle_for = now - usage.last_active
            if idle_for >= timeout:
                expired.append(nbma)
        for nbma in expired:
            self._expire_peer(nbma)
        return expired

    def _expire_peer(self, nbma: IPv4Address) -> None:
        removed = [e for e in self.engine.cache if e.nbma == nbma and e.type in (EntryType.SHORTCUT, EntryType.CACHED)]
        for entry in removed:
            self.engine.cache.remove(entry.prefix)
        self._usage.pop(nbma, None)
        self._trapped.pop(nbma, None)
        self.stats.shortcuts_expired += 1
        self.observer.shortcut_expired()
        self.event("shortcut-idle", f"{nbma}: {', '.join(str(e.prefix) for e in removed)} idle, removed")
        self._dirty.set()
        if self.ipsec is not None:
            self._spawn(self._remove_sa(nbma))

    async def _remove_sa(self, nbma: IPv4Address) -> None:
        assert self.ipsec is not None
        try:
            await self.ipsec.remove_peer(nbma)
        except Exception as error:
            self.stats.last_error = f"ipsec remove_peer {nbma}: {error}"
            self.event("ike-failed", f"removing the SA to {nbma}: {error}")
            return
        self.event("ike", f"removed the SA to {nbma}")

    # --- hub redirect and Phase 2 ----------------------------------------------------------------------

    async def _keep_listening(self, what: str, source: Callable[[], Any], handle: Callable[[Any], None]) -> None:
        """Run a kernel event source (NFLOG hairpin or arrivals reader, neighbour solicitations) for the agent's life:
        if setting it up or reading fails (nft too slow on a loaded node's first use), say so and start it
        again, with a growing pause, instead of losing Phase 3 redirects or Phase 2 resolution for good."""
        pause = 1.0
        while True:
            try:
                async with source() as events:
                    self.event(what, "listening")
                    self._listening.add(what)
                    pause = 1.0
                    async for item in events:
                        handle(item)
                return  # the source ended by itself (closed)
            except Exception as error:
                self.stats.last_error = f"{what}: {error}"
                self.stats.extra[f"{what}_restarts"] = self.stats.extra.get(f"{what}_restarts", 0) + 1
                self.event(f"{what}-failed", f"{error}; again in {pause:.0f} s")
            finally:
                self._listening.discard(what)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 30.0)

    async def _hairpin_loop(self) -> None:
        assert self._hairpin_source is not None
        await self._keep_listening("hairpin", self._hairpin_source, self.on_hairpin)

    def on_hairpin(self, hairpin_event: HairpinEvent) -> None:
        self.stats.hairpin_events += 1
        self._resolution_traffic_at = time.monotonic()
        self._carry_out(self.engine.hairpin(hairpin_event.header, self.clock()))

    async def _solicitation_loop(self) -> None:
        assert self._solicitation_source is not None
        await self._keep_listening("solicitations", self._solicitation_source, self.on_solicitation)

    def on_solicitation(self, ask: Solicitation) -> None:
        self.stats.solicitations += 1
        now = self.clock()
        self._resolving_since.setdefault(ask.tunnel_ip, now)
        self._carry_out(self.engine.resolve(ask.tunnel_ip, now))

    # --- views ------------------------------------------------------------------------------------

    @property
    def sa_up_peers(self) -> frozenset[IPv4Address]:
        return frozenset(self._sa_up)

    @property
    def held_sends(self) -> int:
        return sum(len(held) for held in self._held.values())

    def sa_usable(self, nbma: IPv4Address) -> bool:
        return self.ipsec is None or nbma in self._sa_up


def _bytes_by_peer(sas: list[IkeSaInfo]) -> dict[IPv4Address, int]:
    totals: dict[IPv4Address, int] = {}
    for sa in sas:
        if sa.remote_host is None:
            continue
        total = sum(child.bytes_in + child.bytes_out for child in sa.children)
        totals[sa.remote_host] = totals.get(sa.remote_host, 0) + total
    return totals


def renew_ahead(hold_time: int) -> float:
    """How long before a busy shortcut expires it is resolved again: a third of the holding time, at
    most two minutes (time for a few retransmissions), at least a few seconds."""
    return max(3.0, min(120.0, hold_time / 3))


def engine_config(config: NodeConfig) -> EngineConfig:
    """The NHRP engine's view of the node: NHSes, prefixes, holding time, Phase 3 switches."""
    return EngineConfig(
        protocol_address=config.tunnel_ip,
        nbma_address=config.nbma,
        nhs=tuple(NHSConfig(nbma=hub.nbma, protocol=hub.tunnel_ip) for hub in config.hubs),
        site_prefixes=config.site_prefixes,
        server=config.is_hub,
        holding_time=config.hold_time,
        unique=config.unique_registration,
        mtu=0,
        auth_secret=config.auth_secret,
        shortcuts=config.phase != 1,
        redirect=config.phase == 3,
        # Phase 3: our hub answers our spokes' requests from their registrations, so a shortcut forms a hop
        # and a node sooner (the destination resolves the way back on its own Traffic Indication anyway).
        # With IPsec only for the lower requester, so the lower end of every shortcut learns the other's
        # address first and initiates the SA at once (see _responder_policy). Phase 2 asks the destination
        # itself: the binding it caches from our request is its neighbour entry for the way back.
        authoritative_requests=config.phase != 3,
        nhs_answers=NhsAnswers.LOWER_REQUESTER if config.ipsec.required else NhsAnswers.ALL,
        # ... and puts that answer in its Traffic Indication already, to the same spokes: the shortcut (or
        # with IPsec, the initiation) starts when the indication arrives, a round trip to the hub sooner.
        # Spokes that do not know the extension (FRR, IOS) ignore it and ask as usual.
        indication_answers=config.phase == 3,
    )
