"""The agent's handle on charon: desired profile and peers in, SA state and events out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from ipaddress import IPv4Address
from pathlib import Path
from types import TracebackType

from dmvpn.ipsec.tiebreak import DEFAULT_FALLBACK_S
from dmvpn.ipsec.types import (
    ApplyReport,
    IkeSaInfo,
    InitiatePolicy,
    PeerAction,
    ProtectionProfile,
    SaEvent,
)

DEFAULT_SOCKET = Path("/run/charon.vici")


class SaEventStream:
    """One subscriber's queue of :class:`SaEvent` (``async for event in stream``); ``close()`` ends it."""

    def __aiter__(self) -> AsyncIterator[SaEvent]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class IpsecManager:
    """Keeps charon (over VICI) in line with one :class:`ProtectionProfile` and the set of ensured peers.

    Two VICI connections: one for commands (serialised), one for ``ike-updown``/``child-updown``/
    ``ike-rekey``/``child-rekey`` events, from which the per-peer SA state (:meth:`sa_up`) and the event
    stream (:meth:`events`) are kept. If charon restarts, the manager reconnects with backoff, reloads
    the profile and re-ensures the peers, and reports every peer down meanwhile.

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

    async def start(self) -> None:
        """Connect both sessions, apply the profile, read the current SAs; raises CharonUnavailable if
        charon does not answer."""
        raise NotImplementedError

    async def close(self) -> None:
        """Stop the event task and close the sessions. SAs and connections stay in charon (an agent restart
        must not cut traffic); use :meth:`remove_peer` to tear a peer down."""
        raise NotImplementedError

    async def __aenter__(self) -> IpsecManager:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def apply(self, profile: ProtectionProfile | None = None) -> ApplyReport:
        """Make charon hold exactly our connections, shared secret and credentials for ``profile`` (default:
        the current one) and the ensured peers. Idempotent: a second call loads nothing and no SA drops."""
        raise NotImplementedError

    async def ensure_peer(self, nbma: IPv4Address, policy: InitiatePolicy = InitiatePolicy.AUTO) -> PeerAction:
        """Make sure a protected SA to ``nbma`` exists or is coming: loads the per-peer connection and
        initiates it unless the tie-break says the peer does (then a fallback initiation is scheduled).
        Returns at once (IKE runs in the background); watch :meth:`events` or await :meth:`wait_sa_up`."""
        raise NotImplementedError

    async def remove_peer(self, nbma: IPv4Address) -> None:
        """Forget the peer: terminate its IKE_SAs (and CHILD_SAs) and unload its connection. Idempotent."""
        raise NotImplementedError

    def sa_up(self, nbma: IPv4Address) -> bool:
        """True if a CHILD_SA to ``nbma`` is installed (from events, no round trip to charon)."""
        raise NotImplementedError

    async def wait_sa_up(self, nbma: IPv4Address, timeout_s: float) -> bool:
        """Wait until :meth:`sa_up` is True for ``nbma``, at most ``timeout_s``; returns the final state."""
        raise NotImplementedError

    def events(self) -> SaEventStream:
        """Subscribe to per-peer SA up/down transitions from now on (each subscriber gets every event)."""
        raise NotImplementedError

    @property
    def peers(self) -> frozenset[IPv4Address]:
        """Peers currently ensured (desired), whatever their SA state."""
        raise NotImplementedError

    async def list_sas(self) -> list[IkeSaInfo]:
        """All IKE_SAs charon holds, with CHILD_SAs, SPIs and counters (``dmvpnctl show ipsec``)."""
        raise NotImplementedError

    async def terminate_peer(self, nbma: IPv4Address) -> int:
        """Terminate every IKE_SA to ``nbma`` (the connection stays loaded); returns how many."""
        raise NotImplementedError
