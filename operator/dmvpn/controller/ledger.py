"""The in-process ledger of tunnel addresses: the one place where allocation decisions are made.

Allocation must never hand one address to two nodes, also when many spokes are reconciled at the same
time and before their status patches are back from the API server. So every decision runs under one
lock and sees, for every other spoke, both what its status holds (persisted: survives restarts) and
what this process just gave it (pending: not yet visible in any watch event). One operator replica
(kopf standalone mode) makes this lock global.
"""

import threading
from collections.abc import Callable, Iterable, Mapping
from ipaddress import IPv4Interface
from typing import TypeVar

Decision = TypeVar("Decision")


class Ledger:
    """Allocations by spoke and node that this process decided."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, IPv4Interface]] = {}

    def decide(
        self,
        spoke: str,
        persisted: Mapping[str, Mapping[str, IPv4Interface]],
        decide: Callable[[Mapping[str, frozenset[IPv4Interface]]], Decision],
        allocations_of: Callable[[Decision], Mapping[str, IPv4Interface]],
    ) -> Decision:
        """Run ``decide`` with every spoke's claimed addresses, then record what it gave ``spoke``.

        ``persisted`` is each spoke's ``status.allocations`` as last seen in a watch event.
        """
        with self._lock:
            owners = set(persisted) | set(self._pending)
            claims = {
                owner: frozenset(persisted.get(owner, {}).values()) | frozenset(self._pending.get(owner, {}).values())
                for owner in owners
            }
            decision = decide(claims)
            self._pending[spoke] = dict(allocations_of(decision))
            return decision

    def release(self, spoke: str) -> None:
        """Forget a spoke's allocations (its object is gone, or its deletion was finalized)."""
        with self._lock:
            self._pending.pop(spoke, None)

    def prune(self, alive: Iterable[str]) -> None:
        """Forget spokes that no longer exist (deleted while the operator was not looking)."""
        keep = set(alive)
        with self._lock:
            for spoke in [s for s in self._pending if s not in keep]:
                del self._pending[spoke]

    def pending(self, spoke: str) -> dict[str, IPv4Interface]:
        """What this process last decided for ``spoke`` (empty if nothing yet)."""
        with self._lock:
            return dict(self._pending.get(spoke, {}))
