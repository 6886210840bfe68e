"""The pure NHRP cache: longest-prefix lookup, ranks, expiry and change events."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_network

from dmvpn.nhrp.cache import CacheEntry, ChangeKind, EntryType, NHRPCache, host_network, network, prefix_of

NBMA1 = IPv4Address("198.51.100.1")
NBMA2 = IPv4Address("198.51.100.2")


def entry(prefix: str, kind: EntryType = EntryType.SHORTCUT, **kwargs: object) -> CacheEntry:
    return CacheEntry(prefix=ip_network(prefix), type=kind, **kwargs)  # type: ignore[arg-type]


def test_longest_prefix_match_and_type_filter() -> None:
    cache = NHRPCache()
    cache.put(entry("10.0.0.0/8", nbma=NBMA1))
    cache.put(entry("10.20.0.0/16", nbma=NBMA2))
    cache.put(entry("10.20.0.5/32", EntryType.NEGATIVE, expires=50.0))
    assert cache.lookup(IPv4Address("10.20.0.5"), 0.0).type == EntryType.NEGATIVE  # type: ignore[union-attr]
    positive = cache.lookup(IPv4Address("10.20.0.5"), 0.0, types=frozenset({EntryType.SHORTCUT}))
    assert positive is not None and positive.prefix == ip_network("10.20.0.0/16")
    assert cache.lookup(IPv4Address("10.20.0.5"), 60.0).prefix == ip_network("10.20.0.0/16")  # type: ignore[union-attr]
    assert cache.lookup(IPv4Address("10.9.9.9"), 0.0).nbma == NBMA1  # type: ignore[union-attr]
    assert cache.lookup(IPv4Address("192.0.2.1"), 0.0) is None
    assert cache.lookup(IPv6Address("fd00::1"), 0.0) is None


def test_events_added_updated_removed_and_silent_refresh() -> None:
    cache = NHRPCache()
    first = cache.put(entry("10.1.0.0/16", nbma=NBMA1, expires=10.0))
    assert first is not None and first.kind == ChangeKind.ADDED
    assert cache.put(entry("10.1.0.0/16", nbma=NBMA1, expires=20.0)) is None  # only the expiry moved
    updated = cache.put(entry("10.1.0.0/16", nbma=NBMA2, expires=20.0))
    assert updated is not None and updated.kind == ChangeKind.UPDATED and updated.entry.nbma == NBMA2
    removed = cache.remove(ip_network("10.1.0.0/16"))
    assert removed is not None and removed.kind == ChangeKind.REMOVED and removed.entry.nbma == NBMA2
    assert cache.remove(ip_network("10.1.0.0/16")) is None


def test_expiry_uses_the_latest_time_and_reports_removals() -> None:
    cache = NHRPCache()
    cache.put(entry("10.1.0.0/16", nbma=NBMA1, expires=10.0))
    cache.put(entry("10.1.0.0/16", nbma=NBMA1, expires=30.0))  # refreshed: the old heap item is stale
    cache.put(entry("10.2.0.0/16", nbma=NBMA1, expires=20.0))
    assert cache.next_expiry() == 20.0
    assert cache.expire(15.0) == []
    gone = cache.expire(25.0)
    assert [change.entry.prefix for change in gone] == [ip_network("10.2.0.0/16")]
    assert cache.next_expiry() == 30.0
    assert len(cache.expire(30.0)) == 1
    assert cache.next_expiry() is None and len(cache) == 0


def test_higher_ranked_bindings_are_not_overwritten() -> None:
    cache = NHRPCache()
    cache.put(entry("172.16.0.1/32", EntryType.STATIC, nbma=NBMA1))
    assert not cache.accepts(entry("172.16.0.1/32", EntryType.DYNAMIC, nbma=NBMA2))
    assert cache.put(entry("172.16.0.1/32", EntryType.DYNAMIC, nbma=NBMA2)) is None
    assert cache.get(ip_network("172.16.0.1/32")).nbma == NBMA1  # type: ignore[union-attr]
    cache.put(entry("10.5.0.5/32", EntryType.NEGATIVE, expires=5.0))
    assert cache.put(entry("10.5.0.5/32", EntryType.SHORTCUT, nbma=NBMA2)) is not None


def test_capacity_is_bounded() -> None:
    cache = NHRPCache(max_entries=2)
    assert cache.put(entry("10.0.0.1/32", nbma=NBMA1)) is not None
    assert cache.put(entry("10.0.0.2/32", nbma=NBMA1)) is not None
    assert cache.put(entry("10.0.0.3/32", nbma=NBMA1)) is None
    assert cache.put(entry("10.0.0.2/32", nbma=NBMA2)) is not None  # replacing is fine
    assert len(cache) == 2


def test_prefix_of_treats_zero_and_overlong_as_host() -> None:
    assert prefix_of(IPv4Address("10.1.2.3"), 0) == ip_network("10.1.2.3/32")
    assert prefix_of(IPv4Address("10.1.2.3"), 255) == ip_network("10.1.2.3/32")
    assert prefix_of(IPv4Address("10.1.2.3"), 16) == ip_network("10.1.0.0/16")


def test_network_keeps_the_address_family_even_for_small_ipv6_values() -> None:
    # Built from the address's integer: ::1 and 0.0.0.1 share the value 1, so the family must come from
    # the address, not be guessed from the number (ipaddress.ip_network would guess IPv4).
    assert network(IPv6Address("::1"), 128) == ip_network("::1/128")
    assert network(IPv6Address("::1"), 32) == ip_network("::/32")
    assert network(IPv6Address("2001:db8::1"), 64) == ip_network("2001:db8::/64")
    assert network(IPv4Address("10.1.2.3"), 24) == ip_network("10.1.2.0/24")
    assert host_network(IPv4Address("10.1.2.3")) == ip_network("10.1.2.3/32")
    assert host_network(IPv6Address("::1")) == ip_network("::1/128")


def test_lookup_finds_ipv6_bindings_next_to_ipv4_ones() -> None:
    cache = NHRPCache()
    cache.put(CacheEntry(prefix=ip_network("2001:db8::/32"), type=EntryType.STATIC, nbma=IPv4Address("192.0.2.9")))
    cache.put(CacheEntry(prefix=ip_network("0.0.0.1/32"), type=EntryType.STATIC, nbma=IPv4Address("192.0.2.8")))
    found = cache.lookup(IPv6Address("2001:db8:1::5"), 0.0)
    assert found is not None and found.nbma == IPv4Address("192.0.2.9")
    assert cache.lookup(IPv6Address("::1"), 0.0) is None  # not the IPv4 binding of 0.0.0.1
