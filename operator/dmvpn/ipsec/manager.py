"""The agent's handle on charon: desired profile and peers in, SA state and events out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from ipaddress import IPv4Address
from pathlib import Path
from types import TracebackType
from typing import Any

from dmvpn.ipsec.client import ViciConnection, ViciMessage, check_response
from dmvpn.ipsec.parse import parse_rekey, parse_sas, parse_updown
from dmvpn.ipsec.render import (
    ViciDict,
    render_conns,
    render_credentials,
    render_initiate,
    render_shared,
    render_terminate,
)
from dmvpn.ipsec.state import SaTable, Transition
from dmvpn.ipsec.tiebreak import DEFAULT_FALLBACK_S, keep_duplicate, we_initiate
from dmvpn.ipsec.types import (
    CHILD_NAME,
    PEER_CONN_PREFIX,
    PSK_ID,
    RESPONDER_CONN,
    ApplyReport,
    CharonUnavailable,
    IkeSaInfo,
    InitiatePolicy,
    IpsecError,
    PeerAction,
    ProtectionProfile,
    SaEvent,
    peer_conn_name,
)

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/run/charon.vici")
EVENTS = ("ike-updown", "child-updown", "ike-rekey", "child-rekey")
#: IKE_SA states in which an SA to the peer exists or is being made (no second initiation then).
_ALIVE = frozenset({"CREATED", "CONNECTING", "ESTABLISHED", "PASSIVE", "REKEYING", "REKEYED"})
#: Retry interval of an ALWAYS peer (hub) whose SA does not come up: doubles up to the maximum.
_RETRY_S = 2.0
_RETRY_MAX_S = 60.0
#: Duplicate IKE_SAs count as crossed initiations only if established this close together.
_DEDUPE_WINDOW_S = 60
_DEDUPE_SETTLE_S = 1.0
#: An initiation this recent counts as in progress though charon's list-sas may not show it yet.
_INITIATE_CLAIM_S = 1.5
#: How long the manager trusts its record of what it loaded before asking charon again (``get-conns``,
#: ``get-shared``): a peer's IKE waits for every round trip, and under load each costs tens of ms.
_VERIFY_EVERY_S = 60.0

_Delta = tuple[tuple[str, ...], tuple[str, ...]]  # names (loaded, unloaded) by one part of an apply


class SaEventStream:
    """One subscriber's queue of :class:`SaEvent` (``async for event in stream``); ``close()`` ends it.

    The queue is unbounded: a subscriber must keep reading (there is one event per peer transition)."""

    def __init__(self, unsubscribe: Callable[[SaEventStream], None]) -> None:
        self._queue: asyncio.Queue[SaEvent | None] = asyncio.Queue()
        self._unsubscribe = unsubscribe
        self._closed = False

    def put(self, event: SaEvent) -> None:
        if not self._closed:
            self._queue.put_nowait(event)

    def __aiter__(self) -> AsyncIterator[SaEvent]:
        return self

    async def __anext__(self) -> SaEvent:
        item = await self._queue.get()
        if item is None:
            raise StopAsyncIteration
        return item

    async def next(self, timeout_s: float) -> SaEvent | None:
        """The next event, or None after ``timeout_s`` (or once closed)."""
        try:
            return await asyncio.wait_for(self.__anext__(), timeout_s)
        except (TimeoutError, StopAsyncIteration):
            return None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._unsubscribe(self)
            self._queue.put_nowait(None)


class IpsecManager:
    """Keeps charon (over VICI) in line with one :class:`ProtectionProfile` and the set of ensured peers.

    Two VICI connections: one for commands (serialised), one for ``ike-updown``/``child-updown``/
    ``ike-rekey``/``child-rekey`` events, from which the per-peer SA state (:meth:`sa_up`) and the event
    stream (:meth:`events`) are kept. If charon restarts, the manager reports every peer down, reconnects
    with backoff, reloads the profile, re-reads the SAs and re-ensures the peers.

        async with IpsecManager(profile, socket_path=Path("/run/charon.vici")) as ipsec:
            stream = ipsec.events()
            await ipsec.ensure_peer(IPv4Address("192.0.2.12"))
            async for event in stream:
                if event.peer == peer and event.up: install_shortcut(...)
    """

    def __init__(
        self,
        profile: ProtectionProfile,
        *,
        socket_path: Path = DEFAULT_SOCKET,
        fallback_s: float = DEFAULT_FALLBACK_S,
        reconnect_max_s: float = 5.0,
    ) -> None:
        self.profile = profile
        self.socket_path = socket_path
        self.fallback_s = fallback_s
        self.reconnect_max_s = reconnect_max_s
        self._table = SaTable(local=profile.local_nbma)
        self._desired: dict[IPv4Address, InitiatePolicy] = {}
        # Desired peers whose own connection is not loaded yet: they initiate to us (AUTO, the waiting side)
        # and our responder connection accepts them; the keeper loads it before a fallback initiation.
        self._unloaded_waiting: set[IPv4Address] = set()
        # Peers whose connection carries a trap policy (InitiatePolicy.TRAP): we initiate it as we load it,
        # and the kernel holds the packets routed into it until the CHILD_SA replaces the trap.
        self._trapped: set[IPv4Address] = set()
        self._initiated_at: dict[IPv4Address, float] = {}  # monotonic time of our last initiation per peer
        self._cmd: ViciConnection | None = None
        # ``list-sas`` has a session of its own, so reading the SAs never waits behind a ``load-conn`` (or
        # the other way round): ensure_peer reads them while the connection loads.
        self._query: ViciConnection | None = None
        self._ev: ViciConnection | None = None
        self._loaded_conns: dict[str, ViciDict] = {}
        self._loaded_shared: dict[str, ViciDict] = {}
        self._verified_at: float | None = None  # monotonic time of the last apply that asked charon
        self._loaded_creds: tuple[list[ViciDict], list[ViciDict]] | None = None
        self._subscribers: list[SaEventStream] = []
        self._changed = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._peer_tasks: dict[IPv4Address, asyncio.Task[None]] = {}
        self._helpers: set[asyncio.Task[Any]] = set()
        self._apply_lock = asyncio.Lock()
        self._closing = False
        self.initiations = 0
        """How many ``initiate`` commands this manager sent (tests check the tie-break with it)."""

    # --- life cycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect both sessions, apply the profile, read the current SAs; raises CharonUnavailable if
        charon does not answer."""
        await self._connect()
        try:
            await self._after_connect()
        except BaseException:
            await self._disconnect()
            raise
        self._runner = asyncio.create_task(self._run(), name="dmvpn-ipsec-events")

    async def close(self) -> None:
        """Stop the event task and close the sessions. SAs and connections stay in charon (an agent restart
        must not cut traffic); use :meth:`remove_peer` to tear a peer down."""
        self._closing = True
        tasks = [*self._peer_tasks.values(), *self._helpers]
        if self._runner is not None:
            tasks.append(self._runner)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._peer_tasks.clear()
        await self._disconnect()
        for stream in list(self._subscribers):
            stream.close()

    async def __aenter__(self) -> IpsecManager:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _connect(self) -> None:
        opened: list[ViciConnection] = []
        try:
            for _ in range(3):
                opened.append(await ViciConnection.open(self.socket_path))
            cmd, query, ev = opened
            await ev.subscribe(EVENTS)
        except BaseException:
            for conn in opened:
                await conn.close()
            raise
        self._cmd, self._query, self._ev = cmd, query, ev
        # A new charon knows nothing of what we loaded into the old one.
        self._loaded_conns.clear()
        self._loaded_shared.clear()
        self._verified_at = None
        self._loaded_creds = None

    async def _disconnect(self) -> None:
        for conn in (self._cmd, self._query, self._ev):
            if conn is not None:
                await conn.close()
        self._cmd = self._query = self._ev = None

    async def _after_connect(self) -> None:
        """Bring a new session up to date: SAs charon already has, our profile, then our peers."""
        await self._sync_and_end_stale()
        await self.apply()
        for peer, policy in self._desired.items():
            self._start_keeper(peer, policy)

    async def _run(self) -> None:
        """Read events until closed; on a lost connection, report all peers down and reconnect."""
        while not self._closing:
            try:
                ev = self._ev
                if ev is None:
                    raise CharonUnavailable("not connected")
                name, message = await ev.next_event()
            except CharonUnavailable as error:
                if self._closing:
                    return
                log.warning("lost charon (%s); reconnecting", error)
                self._publish(self._table.clear(), "disconnect")
                await self._disconnect()
                await self._reconnect()
                continue
            try:
                self._on_event(name, message)
            except Exception:  # a malformed event must not end event handling
                log.exception("could not handle VICI event %s", name)

    async def _reconnect(self) -> None:
        """Retry until charon answers again (or we close), backing off up to ``reconnect_max_s``."""
        delay = 0.2
        while not self._closing:
            try:
                await self._connect()
                await self._after_connect()
                log.info("reconnected to charon at %s", self.socket_path)
                return
            except CharonUnavailable as error:
                log.debug("charon not back yet: %s", error)
                await self._disconnect()
            except IpsecError as error:
                # charon is back but refuses our profile: keep the connection (events, status) and say so;
                # retrying would not change charon's mind, the next apply() with a new profile may.
                log.error("charon refused the IPsec profile after reconnecting: %s", error)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.reconnect_max_s)

    # --- events -------------------------------------------------------------------------------------

    def _on_event(self, name: str, message: ViciMessage) -> None:
        transitions: list[Transition] = []
        came_up: set[IPv4Address] = set()
        if name in ("ike-updown", "child-updown"):
            for updown in parse_updown(name, message):
                transitions += self._table.apply_updown(updown)
                if updown.up and updown.ike.remote_host is not None:
                    came_up.add(updown.ike.remote_host)
        elif name in ("ike-rekey", "child-rekey"):
            for rekey in parse_rekey(name, message):
                transitions += self._table.apply_rekey(rekey)
        self._publish(transitions, name)
        for peer in came_up:
            if len(self._table.ikes_of(peer)) > 1:
                self._spawn(self._dedupe_logged(peer))

    def _publish(self, transitions: list[Transition], reason: str) -> None:
        now = datetime.now(UTC)
        for peer, up in transitions:
            self._initiated_at.pop(peer, None)  # that initiation is over: a new one may follow at once
            log.info("IPsec to %s %s (%s)", peer, "up" if up else "down", reason)
            event = SaEvent(peer, up, reason, now)
            for stream in list(self._subscribers):
                stream.put(event)
        if transitions:
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._helpers.add(task)
        task.add_done_callback(self._helpers.discard)

    def events(self) -> SaEventStream:
        """Subscribe to per-peer SA up/down transitions from now on (each subscriber gets every event)."""
        stream = SaEventStream(self._subscribers.remove)
        self._subscribers.append(stream)
        return stream

    def sa_up(self, nbma: IPv4Address) -> bool:
        """True if a CHILD_SA to ``nbma`` is installed (from events, no round trip to charon)."""
        return self._table.up(nbma)

    def answered_only(self, nbma: IPv4Address) -> bool:
        """True if every installed IKE_SA to ``nbma`` is one the peer initiated and we answered (from events,
        no round trip to charon). Such a responder installs its CHILD_SA before its last IKE_AUTH message
        leaves, so for a moment the peer cannot yet decrypt what we send over it."""
        ikes = self._table.ikes_of(nbma)
        return bool(ikes) and not any(ike.initiator for ike in ikes)

    async def packets_in(self, nbma: IPv4Address) -> int:
        """Packets received over the installed GRE CHILD_SAs to ``nbma`` (charon's counters)."""
        return sum(
            child.packets_in
            for ike in await self._sas_to(nbma)
            for child in ike.children
            if child.name == CHILD_NAME and child.state == "INSTALLED"
        )

    def up_peers(self) -> frozenset[IPv4Address]:
        """Every peer with an installed CHILD_SA, ensured or not (peers may initiate to us)."""
        return self._table.up_peers()

    async def wait_sa_up(self, nbma: IPv4Address, timeout_s: float) -> bool:
        """Wait until :meth:`sa_up` is True for ``nbma``, at most ``timeout_s``; returns the final state."""
        return await self._wait_state(nbma, True, timeout_s)

    async def _wait_state(self, nbma: IPv4Address, up: bool, timeout_s: float | None) -> bool:
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while self._table.up(nbma) != up:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):  # timeout(), not wait_for: see Agent._timer_loop
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
        return self._table.up(nbma) == up

    # --- commands -----------------------------------------------------------------------------------

    def _session(self) -> ViciConnection:
        return self._open(self._cmd)

    def _query_session(self) -> ViciConnection:
        return self._open(self._query)

    def _open(self, session: ViciConnection | None) -> ViciConnection:
        if session is None or session.closed:
            raise CharonUnavailable(f"not connected to charon at {self.socket_path}")
        return session

    async def apply(self, profile: ProtectionProfile | None = None, *, verify: bool = True) -> ApplyReport:
        """Make charon hold exactly our connections, shared secret and credentials for ``profile`` (default:
        the current one) and the ensured peers. Idempotent: a second call loads nothing and no SA drops.

        ``verify=False`` trusts our record of what this session loaded instead of asking charon first
        (``get-conns``/``get-shared``), once a check has been made: ``ensure_peer`` runs as a shortcut
        waits for its SA, and two more round trips there would delay the IKE exchange. What someone else
        changed in charon is repaired by :meth:`verify_if_due`, which the agent calls off that path."""
        verify = verify or self._verified_at is None
        async with self._apply_lock:
            moved = profile is not None and profile.local_nbma != self.profile.local_nbma
            if profile is not None and profile != self.profile:
                self.profile = profile
                self._table.local = profile.local_nbma
            session = self._session()
            creds = await self._apply_credentials(session)
            try:
                (loaded_shared, unloaded_shared), (loaded, unloaded) = await self._apply_loaded(session, verify)
            except IpsecError as error:
                if verify:
                    raise
                # charon no longer holds what our record says (someone unloaded a connection of ours: an
                # unload of it fails): apply again against what charon does hold.
                log.info("charon's connections differ from our record (%s); checking them", error)
                verify = True
                (loaded_shared, unloaded_shared), (loaded, unloaded) = await self._apply_loaded(session, verify)
            if verify:
                self._verified_at = time.monotonic()
            if moved:
                await self._sync_and_end_stale()
            return ApplyReport(
                loaded_conns=loaded,
                unloaded_conns=unloaded,
                loaded_shared=loaded_shared,
                unloaded_shared=unloaded_shared,
                loaded_credentials=creds,
            )

    async def verify_if_due(self) -> ApplyReport | None:
        """Compare charon's connections and secrets with ours and repair the difference (someone ran
        ``swanctl --load-all``, say) when the last check is over :data:`_VERIFY_EVERY_S` old (or there
        was none); None when it was not due."""
        if self._verified_at is not None and time.monotonic() - self._verified_at <= _VERIFY_EVERY_S:
            return None
        return await self.apply(verify=True)

    async def _apply_credentials(self, session: ViciConnection) -> tuple[str, ...]:
        certs, keys = render_credentials(self.profile)
        if self._loaded_creds == (certs, keys):
            return ()
        # load-cert adds to charon's in-memory set (an equal certificate is not duplicated); load-key
        # replaces the key with the same key id.
        for cert in certs:
            await session.request("load-cert", cert)
        for key in keys:
            await session.request("load-key", key)
        self._loaded_creds = (certs, keys)
        return tuple(["ca-certificate", "certificate"][: len(certs)] + ["private-key"] * len(keys))

    async def _apply_loaded(self, session: ViciConnection, verify: bool) -> tuple[_Delta, _Delta]:
        """The shared secret, then the connections: (loaded, unloaded) names of each."""
        return await self._apply_shared(session, verify), await self._apply_conns(session, verify)

    async def _apply_shared(self, session: ViciConnection, verify: bool) -> _Delta:
        desired = render_shared(self.profile)
        if verify:
            present = {_text(key) for key in (await session.request("get-shared")).get("keys", [])}
        else:
            present = set(self._loaded_shared)
        loaded, unloaded = [], []
        for ident, message in desired.items():
            if ident not in present or self._loaded_shared.get(ident) != message:
                await session.request("load-shared", message)
                self._loaded_shared[ident] = message
                loaded.append(ident)
        for ident in sorted(present - desired.keys()):
            if ident == PSK_ID:
                await session.request("unload-shared", {"id": ident})
                self._loaded_shared.pop(ident, None)
                unloaded.append(ident)
        return tuple(loaded), tuple(unloaded)

    async def _apply_conns(self, session: ViciConnection, verify: bool) -> _Delta:
        desired = render_conns(self.profile, self._conn_peers(), self._trapped)
        if verify:
            present = {_text(name) for name in (await session.request("get-conns")).get("conns", [])}
        else:
            present = set(self._loaded_conns)
        loaded, unloaded = [], []
        for name, conn in desired.items():
            if name not in present or self._loaded_conns.get(name) != conn:
                # charon keeps the SAs of a connection reloaded with an unchanged config.
                await session.request("load-conn", {name: conn})
                self._loaded_conns[name] = conn
                loaded.append(name)
        for name in sorted(present - desired.keys()):
            if _ours(name):
                await session.request("unload-conn", {"name": name})
                self._loaded_conns.pop(name, None)
                unloaded.append(name)
        return tuple(loaded), tuple(unloaded)

    async def list_sas(self) -> list[IkeSaInfo]:
        """All IKE_SAs charon holds, with CHILD_SAs, SPIs and counters (``dmvpnctl show ipsec``)."""
        items, _ = await self._query_session().streamed("list-sas", "list-sa", {"noblock": "yes"})
        return parse_sas(items)

    async def _sas_to(self, peer: IPv4Address) -> list[IkeSaInfo]:
        return [ike for ike in await self.list_sas() if ike.remote_host == peer]

    async def _terminate(self, ike: IkeSaInfo) -> None:
        await self._session().request("terminate", render_terminate(ike.unique_id), check=False)

    async def _sync_and_end_stale(self) -> None:
        """Take charon's SAs as they are now, then end our IKE_SAs from a local address that is no longer
        our NBMA address (we moved: an agent restarted with a new ``nbma.address``, charon kept running).
        They carry nothing we send now, and the peer should drop them at once rather than after DPD."""
        sas = await self.list_sas()
        self._publish(self._table.sync(sas), "sync")
        for ike in sas:
            if _ours(ike.conn) and self._table.stale(ike):
                log.info("terminating IKE_SA %d from %s (our NBMA address is %s now)",
                         ike.unique_id, ike.local_host, self.profile.local_nbma)  # fmt: skip
                await self._terminate(ike)

    async def _in_progress(self, peer: IPv4Address) -> bool:
        return any(ike.state in _ALIVE and not self._table.stale(ike) for ike in await self._sas_to(peer))

    async def _initiate_unless_in_progress(self, peer: IPv4Address) -> bool:
        """Initiate unless an IKE_SA to ``peer`` is alive or we initiated one moments ago; True if we did.

        The claim is taken before any await: two callers in the same moment (a Resolution Request and
        the reply it makes both ask for the SA) would otherwise both find nothing in charon's list and
        both initiate. Charon's ``initiate`` with ``timeout -1`` returns before its IKE_SA shows in
        ``list-sas``, so a recent initiation counts as in progress for :data:`_INITIATE_CLAIM_S`."""
        if not self._claim_initiation(peer) or await self._in_progress(peer):
            return False
        await self._initiate(peer)
        return True

    def _restore_claim(self, peer: IPv4Address, earlier: float | None) -> None:
        if earlier is None:
            self._initiated_at.pop(peer, None)
        else:
            self._initiated_at[peer] = earlier

    def _claim_initiation(self, peer: IPv4Address) -> bool:
        """Take the right to initiate to ``peer`` now (no await: see above); False if a caller holds it."""
        now = time.monotonic()
        claimed = self._initiated_at.get(peer)
        if claimed is not None and now - claimed < _INITIATE_CLAIM_S:
            return False
        self._initiated_at[peer] = now
        return True

    async def _initiate(self, peer: IPv4Address) -> None:
        self._initiated_at[peer] = time.monotonic()
        self.initiations += 1
        log.info("initiating IPsec to %s", peer)
        await self._session().request("initiate", render_initiate(peer))

    # --- peers --------------------------------------------------------------------------------------

    @property
    def peers(self) -> frozenset[IPv4Address]:
        """Peers currently ensured (desired), whatever their SA state."""
        return frozenset(self._desired)

    async def ensure_peer(self, nbma: IPv4Address, policy: InitiatePolicy = InitiatePolicy.AUTO) -> PeerAction:
        """Make sure a protected SA to ``nbma`` exists or is coming: loads the per-peer connection and
        initiates it unless the tie-break says the peer does (then a fallback initiation is scheduled).
        Returns at once (IKE runs in the background); watch :meth:`events` or await :meth:`wait_sa_up`.

        The peer stays desired even if this raises CharonUnavailable: it is ensured again on reconnect."""
        if nbma == self.profile.local_nbma:
            raise ValueError(f"{nbma} is our own NBMA address")
        if policy is InitiatePolicy.TRAP:
            trapped = await self._trap(nbma)
            if trapped is not None:
                return trapped
            policy = InitiatePolicy.ONCE
        self._trapped.discard(nbma)
        changed = self._desired.get(nbma) != policy
        self._desired[nbma] = policy
        initiating = we_initiate(self.profile.local_nbma, nbma, policy)
        earlier_claim = self._initiated_at.get(nbma)
        claimed = initiating and not self._table.up(nbma) and self._claim_initiation(nbma)
        if policy is InitiatePolicy.AUTO and not initiating and peer_conn_name(nbma) not in self._loaded_conns:
            # The peer initiates, and our responder connection takes its IKE_SA: a load-conn now would only
            # compete with that exchange for charon (and hold its config lock while the exchange looks a
            # config up). The keeper loads the connection should the fallback initiation be due.
            self._unloaded_waiting.add(nbma)
            action = PeerAction.ALREADY_UP if self._table.up(nbma) else PeerAction.WAITING
        elif claimed and policy is InitiatePolicy.ONCE and await self._load_and_initiate(nbma):
            action = PeerAction.INITIATED  # (a peer left unloaded never takes this path: see _conn_peers)
        else:
            self._unloaded_waiting.discard(nbma)
            action = await self._apply_and_initiate(nbma, policy, initiating, claimed, earlier_claim)
        if changed or nbma not in self._peer_tasks:
            self._start_keeper(nbma, policy, initiated=action is not PeerAction.WAITING)
        return action

    async def _trap(self, peer: IPv4Address) -> PeerAction | None:
        """TRAP: load the peer's connection with a trap policy and initiate it, both commands together as
        ``_load_and_initiate`` sends them; None (nothing done) when the SA is up or another initiation
        holds the claim, where a trap's acquire could start a second IKE_SA beside that one. When more
        than the peer's connection must change, ``apply`` loads it with the trap, and the first packet's
        acquire makes charon initiate."""
        if self._table.up(peer) or peer in self._unloaded_waiting:
            return None
        earlier_claim = self._initiated_at.get(peer)
        if peer not in self._trapped and not self._claim_initiation(peer):
            return None
        self._desired[peer] = InitiatePolicy.TRAP
        self._trapped.add(peer)
        try:
            if not await self._load_and_initiate(peer):  # the trap is in the connection it renders
                await self.apply(verify=False)
        except BaseException:
            self._trapped.discard(peer)
            self._restore_claim(peer, earlier_claim)
            raise
        self._start_keeper(peer, InitiatePolicy.TRAP, initiated=True)
        return PeerAction.TRAPPED

    def trapped(self, nbma: IPv4Address) -> bool:
        """True while ``nbma``'s connection carries a trap policy (InitiatePolicy.TRAP)."""
        return nbma in self._trapped

    async def _load_and_initiate(self, peer: IPv4Address) -> bool:
        """ONCE's usual case, a new shortcut: the peer's connection is all charon lacks. Send its
        ``load-conn`` and the ``initiate`` together (charon handles them in order), so IKE starts one round
        trip to charon sooner (TRAP's case too: its connection carries the trap). False, having sent
        nothing, when more than that must change (``apply``)."""
        async with self._apply_lock:
            load = self._only_this_conn_to_load(peer)
            if load is None:
                return False
            self._initiated_at[peer] = time.monotonic()
            self.initiations += 1
            log.info("loading the connection to %s and initiating it", peer)
            loaded, initiated = await self._session().pipeline(
                [("load-conn", load), ("initiate", render_initiate(peer))]
            )
            check_response("load-conn", loaded)
            self._loaded_conns.update(load)
            check_response("initiate", initiated)
        return True

    def _conn_peers(self) -> frozenset[IPv4Address]:
        """The peers whose own connection charon should hold (the desired ones but those left unloaded)."""
        return frozenset(peer for peer in self._desired if peer not in self._unloaded_waiting)

    def _only_this_conn_to_load(self, peer: IPv4Address) -> ViciDict | None:
        """The ``load-conn`` message for ``peer``'s connection if it is the only difference between what
        ``apply`` would load and what this session has loaded (checked against charon at least once)."""
        if self._verified_at is None or self._loaded_creds != render_credentials(self.profile):
            return None
        if self._loaded_shared != render_shared(self.profile):
            return None
        name = peer_conn_name(peer)
        desired = render_conns(self.profile, self._conn_peers(), self._trapped)
        if name not in desired or self._loaded_conns.get(name) == desired[name]:
            return None  # nothing to load: apply's one answer from charon is as fast
        wanted = desired.pop(name)
        if desired != {other: conn for other, conn in self._loaded_conns.items() if other != name}:
            return None
        return {name: wanted}

    async def _apply_and_initiate(
        self,
        nbma: IPv4Address,
        policy: InitiatePolicy,
        initiating: bool,
        claimed: bool,
        earlier_claim: float | None,
    ) -> PeerAction:
        """``apply`` (loads whatever changed), then initiate if the tie-break and the claim say so."""
        # Is an IKE_SA to the peer already under way (the peer's, or ours from before a restart)? The SAs are
        # read (on their own session) while the connection loads: `initiate` then waits for one round trip
        # to charon instead of two. ONCE skips the read: the peer cannot know we want an SA (see
        # InitiatePolicy.ONCE), and on a loaded node the list was the slower of the two answers. What it
        # gives up: an IKE_SA of ours still being set up when the agent restarted is not seen, and a
        # second one may be made beside it (both carry the path; remove_peer ends every SA to the peer).
        ask = claimed and policy is not InitiatePolicy.ONCE
        alive = asyncio.ensure_future(self._in_progress(nbma)) if ask else None
        try:
            await self.apply(verify=False)
            in_progress = await alive if alive is not None else False
        finally:
            if alive is not None:  # apply failed: stop the read; either way its outcome is collected
                alive.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await alive
        if self._table.up(nbma):
            action = PeerAction.ALREADY_UP
            if claimed:  # nothing initiated: a keeper may initiate at once should this SA go down
                self._restore_claim(nbma, earlier_claim)
        elif not initiating:
            action = PeerAction.WAITING
        elif claimed:
            if not in_progress:
                await self._initiate(nbma)
            action = PeerAction.IN_PROGRESS if in_progress else PeerAction.INITIATED
        else:  # another caller holds the claim (returns at once), or the SA went down during the load
            initiated = await self._initiate_unless_in_progress(nbma)
            action = PeerAction.INITIATED if initiated else PeerAction.IN_PROGRESS
        return action

    async def remove_peer(self, nbma: IPv4Address) -> None:
        """Forget the peer: terminate its IKE_SAs (and CHILD_SAs) and unload its connection. Idempotent."""
        self._desired.pop(nbma, None)
        self._unloaded_waiting.discard(nbma)
        self._trapped.discard(nbma)
        task = self._peer_tasks.pop(nbma, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.terminate_peer(nbma)
        await self.apply(verify=False)

    async def terminate_peer(self, nbma: IPv4Address) -> int:
        """Terminate every IKE_SA to ``nbma`` (the connection stays loaded); returns how many."""
        sas = await self._sas_to(nbma)
        for ike in sas:
            await self._terminate(ike)
        return len(sas)

    def _start_keeper(self, peer: IPv4Address, policy: InitiatePolicy, initiated: bool = False) -> None:
        old = self._peer_tasks.pop(peer, None)
        if old is not None:
            old.cancel()
        self._peer_tasks[peer] = asyncio.create_task(
            self._keep_peer(peer, policy, initiated), name=f"dmvpn-ipsec-{peer}"
        )

    async def _keep_peer(self, peer: IPv4Address, policy: InitiatePolicy, initiated: bool) -> None:
        """Per-peer background duty: the fallback initiation (AUTO, waiting side), one initiation (ONCE, or
        AUTO's initiating side, if the call that made the keeper did not initiate) or keeping a hub's SA up
        (ALWAYS). Ends with :meth:`remove_peer`, :meth:`close` or a new policy for the peer."""
        try:
            if policy in (InitiatePolicy.AUTO, InitiatePolicy.ONCE):
                if not we_initiate(self.profile.local_nbma, peer, policy):
                    if await self._wait_state(peer, True, self.fallback_s):
                        return
                    log.info("no SA from %s within %.1f s: initiating ourselves", peer, self.fallback_s)
                    initiated = False
                    if peer in self._unloaded_waiting:
                        self._unloaded_waiting.discard(peer)
                        await self.apply(verify=False)
                if not initiated and not self._table.up(peer):
                    await self._initiate_unless_in_progress(peer)
            elif policy is InitiatePolicy.ALWAYS:
                await self._keep_up(peer, initiated)
        except CharonUnavailable:
            log.debug("keeper of %s stops until charon is back", peer)  # restarted after reconnect

    async def _keep_up(self, peer: IPv4Address, initiated: bool) -> None:
        retry = _RETRY_S
        while peer in self._desired and not self._closing:
            if not initiated and not self._table.up(peer):
                await self._initiate_unless_in_progress(peer)
            initiated = False
            if await self._wait_state(peer, True, retry):
                retry = _RETRY_S
                await self._wait_state(peer, False, None)
                log.info("IPsec to %s went down; initiating again", peer)
            else:
                retry = min(retry * 2, _RETRY_MAX_S)

    async def _dedupe_logged(self, peer: IPv4Address) -> None:
        try:
            await self._dedupe(peer)
        except IpsecError as error:  # includes CharonUnavailable: the next duplicate gets another try
            log.warning("could not remove duplicate IKE_SAs to %s: %s", peer, error)

    async def _dedupe(self, peer: IPv4Address) -> None:
        """Two established IKE_SAs to one peer, one made by each end (a fallback crossed the peer's
        initiation): the end with the lower NBMA address terminates all but the one both ends agree to
        keep. Only SAs established within :data:`_DEDUPE_WINDOW_S` of each other count: an old SA next to
        a new one is a restart, which charon resolves itself."""
        if int(self.profile.local_nbma) > int(peer):
            return
        await asyncio.sleep(_DEDUPE_SETTLE_S)  # let charon's own uniqueness handling go first
        sas = sorted(
            (ike for ike in await self._sas_to(peer) if ike.state == "ESTABLISHED" and ike.child_installed),
            key=lambda ike: ike.unique_id,
        )
        ages = [ike.established_s for ike in sas if ike.established_s is not None]
        if len(ages) != len(sas) or not ages or max(ages) - min(ages) > _DEDUPE_WINDOW_S:
            return
        keep = keep_duplicate(self.profile.local_nbma, peer, tuple(ike.initiator for ike in sas))
        if keep is None:
            return
        for index, ike in enumerate(sas):
            if index != keep:
                log.info("terminating duplicate IKE_SA %d to %s (crossed initiations)", ike.unique_id, peer)
                await self._terminate(ike)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _ours(conn: str) -> bool:
    return conn == RESPONDER_CONN or conn.startswith(PEER_CONN_PREFIX)
