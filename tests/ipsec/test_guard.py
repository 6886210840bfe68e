"""The nftables guard of mode ``required`` (rendering and counter naming; the lab test applies it)."""

from __future__ import annotations

from ipaddress import IPv4Address

from dmvpn.ipsec import GuardCounters, guard_counters_from, render_guard
from dmvpn.ipsec.guard import fingerprint

NBMA = IPv4Address("192.0.2.11")


def test_guard_replaces_only_its_own_table_in_one_transaction() -> None:
    script = render_guard(NBMA)
    lines = script.splitlines()
    assert lines[:2] == ["add table inet dmvpn_ipsec", "delete table inet dmvpn_ipsec"]
    assert "flush ruleset" not in script
    assert all("dmvpn_ipsec" in line for line in lines if line.startswith(("add", "delete", "table")))
    assert f"ip protocol gre ip daddr {NBMA} meta secpath missing counter drop" in script
    assert f"ip protocol gre ip saddr {NBMA} rt ipsec missing counter drop" in script
    assert "hook input" in script and "hook postrouting" in script  # not output: trap-queued packets pass


def test_guard_without_address_covers_all_gre_and_fingerprints_differ() -> None:
    script = render_guard()
    assert "ip protocol gre meta secpath missing counter drop" in script
    assert fingerprint(None) != fingerprint(NBMA)
    assert fingerprint(NBMA) == fingerprint(IPv4Address("192.0.2.11"))
    assert f'comment "dmvpn-ipsec-in {fingerprint(NBMA)}"' in render_guard(NBMA)


def test_counters_are_named_by_the_rule_comments() -> None:
    digest = fingerprint(NBMA)
    by_comment = {f"dmvpn-ipsec-in {digest}": (4, 448), f"dmvpn-ipsec-out {digest}": (1, 112), "someone else": (9, 9)}
    assert guard_counters_from(by_comment) == GuardCounters(4, 448, 1, 112)
    assert guard_counters_from({}) == GuardCounters(0, 0, 0, 0)
