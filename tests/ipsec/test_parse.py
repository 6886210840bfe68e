"""Parsing charon's bytes-valued messages (recorded from the lab) into SA views and peer state."""

from __future__ import annotations

from ipaddress import IPv4Address

import vici_recorded as recorded

from dmvpn.ipsec.parse import parse_rekey, parse_sas, parse_updown
from dmvpn.ipsec.state import SaTable

PEER = IPv4Address("192.0.2.11")


def test_list_sas_gives_states_spis_counters_and_times() -> None:
    [ike] = parse_sas([recorded.LIST_SA])
    assert (ike.conn, ike.unique_id, ike.state, ike.initiator) == ("dmvpn-peer-192.0.2.11", 1, "ESTABLISHED", True)
    assert (ike.local_host, ike.remote_host) == (IPv4Address("192.0.2.1"), PEER)
    assert (ike.spi_initiator, ike.spi_responder) == ("95f457561a4b0c98", "8dee099eebc1e967")
    assert (ike.established_s, ike.rekey_time_s, ike.encryption) == (3, 17, "AES_GCM_16_256")
    [child] = ike.children
    assert (child.name, child.unique_id, child.state, child.mode) == ("gre", 1, "INSTALLED", "TRANSPORT")
    assert (child.spi_in, child.spi_out) == ("c8330905", "c32363ff")
    assert (child.packets_in, child.packets_out, child.bytes_in, child.bytes_out) == (3, 3, 276, 276)
    assert (child.install_time_s, child.rekey_time_s, child.life_time_s) == (15, 14, 19)
    assert ike.child_installed


def test_connecting_sa_without_numbers_parses_with_blanks() -> None:
    [ike] = parse_sas([{"dmvpn": {"uniqueid": b"4", "state": b"CONNECTING", "remote-host": b"192.0.2.99"}}])
    assert (ike.state, ike.established_s, ike.encryption, ike.children) == ("CONNECTING", None, None, ())
    assert not ike.child_installed


def test_updown_events_parse() -> None:
    [up] = parse_updown("ike-updown", recorded.IKE_UP)
    assert up.up and up.ike.unique_id == 1 and up.ike.children == ()
    [down] = parse_updown("ike-updown", recorded.ike_down())
    assert not down.up and down.ike.state == "DELETING"
    [child] = parse_updown("child-updown", recorded.CHILD_UP)
    assert child.up and [c.unique_id for c in child.ike.children] == [1]


def test_rekey_events_parse() -> None:
    [ike] = parse_rekey("ike-rekey", recorded.IKE_REKEY)
    assert ike.old_ike is not None and ike.new_ike is not None
    assert (ike.old_ike.unique_id, ike.new_ike.unique_id) == (1, 2)
    [child] = parse_rekey("child-rekey", recorded.CHILD_REKEY)
    assert child.old_child is not None and child.new_child is not None
    assert (child.old_child.state, child.new_child.unique_id, child.new_child.spi_in) == ("REKEYED", 2, "c5bb0e85")


def test_peer_is_up_once_the_child_is_installed_and_stays_up_across_rekeys() -> None:
    table = SaTable()
    assert table.apply_updown(parse_updown("ike-updown", recorded.IKE_UP)[0]) == []
    assert not table.up(PEER)
    assert table.apply_updown(parse_updown("child-updown", recorded.CHILD_UP)[0]) == [(PEER, True)]
    assert table.apply_rekey(parse_rekey("child-rekey", recorded.CHILD_REKEY)[0]) == []
    assert table.apply_rekey(parse_rekey("ike-rekey", recorded.IKE_REKEY)[0]) == []
    [ike] = table.ikes_of(PEER)
    assert (ike.unique_id, ike.children, ike.initiator) == (2, {2}, True)  # who initiated survives the rekey
    assert table.apply_updown(parse_updown("child-updown", recorded.child_down(2, 2))[0]) == [(PEER, False)]
    assert table.apply_updown(parse_updown("ike-updown", recorded.ike_down(2))[0]) == []
    assert table.up_peers() == frozenset()


def test_ike_down_takes_its_children_with_it() -> None:
    table = SaTable()
    table.apply_updown(parse_updown("child-updown", recorded.CHILD_UP)[0])
    assert table.apply_updown(parse_updown("ike-updown", recorded.ike_down(1))[0]) == [(PEER, False)]


def test_sync_and_clear() -> None:
    table = SaTable()
    assert table.sync(parse_sas([recorded.LIST_SA])) == [(PEER, True)]
    assert table.sync(parse_sas([recorded.LIST_SA])) == []
    assert table.clear() == [(PEER, False)]


def test_other_child_names_do_not_count() -> None:
    table = SaTable(child_name="other")
    assert table.apply_updown(parse_updown("child-updown", recorded.CHILD_UP)[0]) == []
