"""The NHRP cache: protocol prefix -> NBMA bindings with types, expiry and change events.

Pure (no clock: ``now`` is passed in). One entry per prefix; a lookup is longest-prefix match. Every
visible change is returned as a :class:`CacheChange` so the data plane can mirror the cache into
kernel routes and neighbours; refreshing only the expiry time is not a visible change.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Network

from dmvpn.nhrp.codec import Address

Network = IPv4Network | IPv6Network


class EntryType(StrEnum):
    LOCAL = "local"  # our own protocol address and site prefixes
    STATIC = "static"  # configured mapping
    NHS = "nhs"  # a next hop server we register with
    DYNAMIC = "dynamic"  # registered with us (we are the NHS)
    SHORTCUT = "shortcut"  # learned from a Resolution Reply to our request
    CACHED = "cached"  # learned in passing (e.g. the requester's binding in a Resolution Request)
    NEGATIVE = "negative"  # resolution failed: do not ask again before expiry


# Who may overwrite whom: a binding is only replaced by one of the same or a higher rank.
_RANK = {
    EntryType.NEGATIVE: 0,
    EntryType.CACHED: 1,
    EntryType.SHORTCUT: 2,
    EntryType.DYNAMIC: 3,
    EntryType.NHS: 4,
    EntryType.STATIC: 5,
    EntryType.LOCAL: 6,
}


def network(address: Address, prefix_length: int) -> Network:
    """``address`` masked to ``prefix_length`` bits. Built from the integer: given an address object,
    ipaddress formats it as text and parses it back, the costliest step of a cache lookup."""
    if isinstance(address, IPv4Address):
        return IPv4Network((int(address), prefix_length), strict=False)
    return IPv6Network((int(address), prefix_length), strict=False)


def host_network(address: Address) -> Network:
    return network(address, address.max_prefixlen)


def prefix_of(address: Address, prefix_length: int) -> Network:
    """The network of the given length around ``address``; 0 or too long means the host itself."""
    if prefix_length <= 0 or prefix_length > address.max_prefixlen:
        prefix_length = address.max_prefixlen
    return network(address, prefix_length)


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheEntry:
    prefix: Network
    type: EntryType
    nbma: Address | None = None  # where to send: the post-NAT address when there is NAT
    next_hop: Address | None = None  # protocol address of the peer serving the prefix
    claimed_nbma: Address | None = None  # the NBMA address the peer claimed (differs behind NAT)
    expires: float | None = None  # None: never
    mtu: int = 0
    unique: bool = False

    def expired(self, now: float) -> bool:
        return self.expires is not None and self.expires <= now

    def same_binding(self, other: CacheEntry) -> bool:
        """Equal in everything the data plane cares about (i.e. ignoring the expiry time)."""
        return (self.type, self.nbma, self.next_hop, self.claimed_nbma, self.mtu, self.unique) == (
            other.type,
            other.nbma,
            other.next_hop,
            other.claimed_nbma,
            other.mtu,
            other.unique,
        )


class ChangeKind(StrEnum):
    ADDED = "added"
    UPDATED = "updated"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class CacheChange:
    kind: ChangeKind
    entry: CacheEntry  # the new entry, or for REMOVED the one that was removed


class NHRPCache:
    def __init__(self, max_entries: int = 65536) -> None:
        self.max_entries = max_entries
        self._entries: dict[Network, CacheEntry] = {}
        self._lengths: dict[int, Counter[int]] = {4: Counter(), 6: Counter()}
        self._expiry_heap: list[tuple[float, int, Network]] = []
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[CacheEntry]:
        return iter(list(self._entries.values()))

    def get(self, prefix: Network) -> CacheEntry | None:
        return self._entries.get(prefix)

    def lookup(self, address: Address, now: float, *, types: frozenset[EntryType] | None = None) -> CacheEntry | None:
        """Longest-prefix match among live entries, optionally only of the given types."""
        lengths = self._lengths[address.version]
        for length in sorted(lengths, reverse=True):
            entry = self._entries.get(network(address, length))
            if entry is None or entry.expired(now):
                continue
            if types is None or entry.type in types:
                return entry
        return None

    def accepts(self, entry: CacheEntry) -> bool:
        """Whether :meth:`put` would store the entry (rank and capacity permitting)."""
        existing = self._entries.get(entry.prefix)
        if existing is None:
            return len(self._entries) < self.max_entries
        return _RANK[entry.type] >= _RANK[existing.type]

    def put(self, entry: CacheEntry) -> CacheChange | None:
        """Store the entry unless a higher-ranked binding holds the prefix or the cache is full."""
        if not self.accepts(entry):
            return None
        existing = self._entries.get(entry.prefix)
        self._entries[entry.prefix] = entry
        if entry.expires is not None:
            heapq.heappush(self._expiry_heap, (entry.expires, next(self._sequence), entry.prefix))
        if existing is None:
            self._lengths[entry.prefix.version][entry.prefix.prefixlen] += 1
            return CacheChange(ChangeKind.ADDED, entry)
        if existing.same_binding(entry):
            return None
        return CacheChange(ChangeKind.UPDATED, entry)

    def remove(self, prefix: Network) -> CacheChange | None:
        entry = self._entries.pop(prefix, None)
        if entry is None:
            return None
        lengths = self._lengths[prefix.version]
        lengths[prefix.prefixlen] -= 1
        if lengths[prefix.prefixlen] <= 0:
            del lengths[prefix.prefixlen]
        return CacheChange(ChangeKind.REMOVED, entry)

    def remove_where(self, predicate: Callable[[CacheEntry], bool]) -> list[CacheChange]:
        doomed = [entry.prefix for entry in self._entries.values() if predicate(entry)]
        return [change for prefix in doomed if (change := self.remove(prefix)) is not None]

    def expire(self, now: float) -> list[CacheChange]:
        """Remove every entry whose expiry time has come."""
        changes: list[CacheChange] = []
        while self._expiry_heap and self._expiry_heap[0][0] <= now:
            expires, _, prefix = heapq.heappop(self._expiry_heap)
            entry = self._entries.get(prefix)
            if entry is not None and entry.expires == expires:
                removed = self.remove(prefix)
                if removed is not None:
                    changes.append(removed)
        return changes

    def next_expiry(self) -> float | None:
        """When :meth:`expire` next has work; stale heap items are dropped here."""
        while self._expiry_heap:
            expires, _, prefix = self._expiry_heap[0]
            entry = self._entries.get(prefix)
            if entry is not None and entry.expires == expires:
                return expires
            heapq.heappop(self._expiry_heap)
        return None
