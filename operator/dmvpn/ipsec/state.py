"""Per-peer SA state kept from charon's events (sans-IO: fed parsed events, returns peer transitions).

A peer is *up* while at least one of its IKE_SAs holds an installed CHILD_SA named ``gre``: only then is
GRE to it protected, and only then may the agent send to it directly (shortcut route, NHRP reply).
An IKE_SA from a local address other than our NBMA address (``local``) never counts: it is left from an
address we moved away from, and the GRE we send now matches none of its policies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from dmvpn.ipsec.parse import RekeyEvent, UpdownEvent
from dmvpn.ipsec.types import CHILD_NAME, IkeSaInfo

Transition = tuple[IPv4Address, bool]
#: CHILD_SA states after which it protects nothing any more.
_GONE = frozenset({"DELETING", "DELETED", "DESTROYING", "FAILED"})


@dataclass
class TrackedIke:
    """What we know of one IKE_SA: its peer, who initiated it, and its installed GRE CHILD_SAs."""

    unique_id: int
    peer: IPv4Address
    initiator: bool
    established: bool
    children: set[int] = field(default_factory=set)


class SaTable:
    """IKE_SAs by unique id; :meth:`up_peers` is derived from them."""

    def __init__(self, child_name: str = CHILD_NAME, local: IPv4Address | None = None) -> None:
        self.child_name = child_name
        self.local = local
        self._ikes: dict[int, TrackedIke] = {}

    def stale(self, ike: IkeSaInfo) -> bool:
        """From a local address that is not ours (any more)."""
        return self.local is not None and ike.local_host is not None and ike.local_host != self.local

    def up(self, peer: IPv4Address) -> bool:
        return any(ike.peer == peer and ike.children for ike in self._ikes.values())

    def up_peers(self) -> frozenset[IPv4Address]:
        return frozenset(ike.peer for ike in self._ikes.values() if ike.children)

    def ikes_of(self, peer: IPv4Address) -> list[TrackedIke]:
        """Established IKE_SAs with an installed CHILD_SA to ``peer``, oldest (lowest id) first."""
        return sorted(
            (ike for ike in self._ikes.values() if ike.peer == peer and ike.established and ike.children),
            key=lambda ike: ike.unique_id,
        )

    def _changes(self, before: frozenset[IPv4Address]) -> list[Transition]:
        after = self.up_peers()
        went_up = [(peer, True) for peer in sorted(after - before)]
        went_down = [(peer, False) for peer in sorted(before - after)]
        return went_down + went_up

    def _installed(self, ike: IkeSaInfo) -> set[int]:
        return {
            child.unique_id for child in ike.children if child.name == self.child_name and child.state == "INSTALLED"
        }

    def _track(self, ike: IkeSaInfo) -> TrackedIke | None:
        if ike.remote_host is None or self.stale(ike):
            return None
        tracked = self._ikes.get(ike.unique_id)
        if tracked is None:
            tracked = TrackedIke(ike.unique_id, ike.remote_host, ike.initiator, ike.state == "ESTABLISHED")
            self._ikes[ike.unique_id] = tracked
        tracked.established = tracked.established or ike.state == "ESTABLISHED"
        return tracked

    def sync(self, sas: Iterable[IkeSaInfo]) -> list[Transition]:
        """Replace everything with a fresh ``list-sas`` (after (re)connecting)."""
        before = self.up_peers()
        self._ikes.clear()
        for ike in sas:
            tracked = self._track(ike)
            if tracked is not None:
                tracked.children = self._installed(ike)
        return self._changes(before)

    def clear(self) -> list[Transition]:
        """charon went away: every SA is gone (or unknown), so every peer is down."""
        before = self.up_peers()
        self._ikes.clear()
        return self._changes(before)

    def apply_updown(self, event: UpdownEvent) -> list[Transition]:
        before = self.up_peers()
        if event.kind == "ike-updown":
            if event.up:
                tracked = self._track(event.ike)
                if tracked is not None:
                    tracked.children |= self._installed(event.ike)
            else:
                self._ikes.pop(event.ike.unique_id, None)
        else:  # child-updown: the IKE section lists only the CHILD_SA concerned
            tracked = self._track(event.ike)
            if tracked is not None:
                named = {child.unique_id for child in event.ike.children if child.name == self.child_name}
                if event.up:
                    tracked.children |= self._installed(event.ike)
                else:
                    tracked.children -= named
        return self._changes(before)

    def apply_rekey(self, event: RekeyEvent) -> list[Transition]:
        before = self.up_peers()
        if event.kind == "ike-rekey" and event.old_ike is not None and event.new_ike is not None:
            old = self._ikes.pop(event.old_ike.unique_id, None)
            tracked = self._track(event.new_ike)
            if tracked is not None:
                # CHILD_SAs move to the new IKE_SA; who initiated the original stays the tie-break fact.
                tracked.children |= (old.children if old else set()) | self._installed(event.new_ike)
                if old is not None:
                    tracked.initiator = old.initiator
        elif event.kind == "child-rekey" and event.ike is not None:
            tracked = self._track(event.ike)
            if tracked is not None:
                if event.old_child is not None:
                    tracked.children.discard(event.old_child.unique_id)
                new = event.new_child
                if new is not None and new.name == self.child_name and new.state not in _GONE:
                    tracked.children.add(new.unique_id)
        return self._changes(before)
