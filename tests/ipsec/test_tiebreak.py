"""The tie-break: both ends of a shortcut compute the same initiator without talking to each other."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dmvpn.ipsec import InitiatePolicy, fallback_due, keep_duplicate, we_initiate

LOW, HIGH = IPv4Address("192.0.2.11"), IPv4Address("192.0.2.12")
addresses = st.integers(min_value=1, max_value=2**32 - 2).map(IPv4Address)


def test_lower_nbma_initiates_higher_waits() -> None:
    assert we_initiate(LOW, HIGH, InitiatePolicy.AUTO)
    assert not we_initiate(HIGH, LOW, InitiatePolicy.AUTO)


def test_numeric_not_textual_order() -> None:
    # "192.0.2.9" > "192.0.2.10" as text; the numeric order must decide.
    assert we_initiate(IPv4Address("192.0.2.9"), IPv4Address("192.0.2.10"), InitiatePolicy.AUTO)


def test_explicit_policies_override_the_tie_break() -> None:
    assert we_initiate(HIGH, LOW, InitiatePolicy.ALWAYS)
    assert we_initiate(HIGH, LOW, InitiatePolicy.ONCE), "a responder knows both addresses first: it initiates"
    assert not we_initiate(LOW, HIGH, InitiatePolicy.NEVER)


def test_own_address_is_not_a_peer() -> None:
    with pytest.raises(ValueError, match="own NBMA"):
        we_initiate(LOW, LOW, InitiatePolicy.AUTO)


@given(addresses, addresses)
def test_exactly_one_end_initiates(a: IPv4Address, b: IPv4Address) -> None:
    if a == b:
        return
    assert we_initiate(a, b, InitiatePolicy.AUTO) != we_initiate(b, a, InitiatePolicy.AUTO)


def test_fallback_only_after_the_delay_and_only_without_sa() -> None:
    assert not fallback_due(4.9, sa_up=False, fallback_s=5.0)
    assert fallback_due(5.0, sa_up=False, fallback_s=5.0)
    assert not fallback_due(60.0, sa_up=True, fallback_s=5.0)


def test_duplicates_both_ends_keep_the_one_the_lower_address_initiated() -> None:
    # Seen from LOW: [ours, theirs]; from HIGH the same two SAs are [theirs, ours] (its own numbering).
    assert keep_duplicate(LOW, HIGH, (True, False)) == 0
    assert keep_duplicate(HIGH, LOW, (False, True)) == 0
    assert keep_duplicate(LOW, HIGH, (False, True)) == 1
    assert keep_duplicate(HIGH, LOW, (True, False)) == 1
    assert keep_duplicate(LOW, HIGH, (True,)) is None
    # All made by one end (the peer restarted, or reauthenticated): not ours to choose.
    assert keep_duplicate(LOW, HIGH, (False, False)) is None
    assert keep_duplicate(HIGH, LOW, (True, True)) is None
