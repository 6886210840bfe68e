"""IpsecManager and the asyncio VICI client against a fake charon (wire protocol, no strongSwan)."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from fake_charon import FakeCharon, fake_charon

from dmvpn.ipsec import (
    CharonUnavailable,
    InitiatePolicy,
    IpsecError,
    IpsecManager,
    PeerAction,
    ProtectionProfile,
    PskAuth,
    SaEventStream,
    X509Auth,
)
from dmvpn.ipsec import manager as manager_module
from dmvpn.ipsec.client import ViciConnection
from dmvpn.ipsec.types import PEER_CONN_PREFIX

LOW, MID, HIGH = IPv4Address("192.0.2.11"), IPv4Address("192.0.2.12"), IPv4Address("192.0.2.13")
PSK = PskAuth(b"0123456789abcdef-not-secret")


@pytest.fixture
def socket_path() -> AsyncIterator[Path]:
    with tempfile.TemporaryDirectory(prefix="vici") as tmp:  # short: AF_UNIX paths are limited
        yield Path(tmp) / "charon.vici"


@pytest.fixture
async def charon(socket_path: Path) -> AsyncIterator[FakeCharon]:
    async with fake_charon(socket_path, str(MID)) as fake:
        yield fake


def manager(path: Path, local: IPv4Address = MID, **kwargs: float) -> IpsecManager:
    return IpsecManager(ProtectionProfile(local, PSK), socket_path=path, **kwargs)


async def next_event(stream: SaEventStream, timeout_s: float = 2.0) -> tuple[IPv4Address, bool, str]:
    event = await stream.next(timeout_s)
    assert event is not None, "no SA event"
    return event.peer, event.up, event.reason


async def test_client_reports_failures_and_unknown_commands(charon: FakeCharon, socket_path: Path) -> None:
    conn = await ViciConnection.open(socket_path)
    try:
        assert await conn.request("get-conns") == {"conns": []}
        with pytest.raises(IpsecError, match="not found"):
            await conn.request("unload-conn", {"name": "nope"})
        with pytest.raises(IpsecError, match="does not know"):
            await conn.request("no-such-command")
        assert (await conn.request("get-conns")) == {"conns": []}  # still in step after errors
    finally:
        await conn.close()
    with pytest.raises(CharonUnavailable):
        await ViciConnection.open(socket_path.with_name("absent.vici"))


async def test_a_streamed_command_registers_its_event_once_per_connection(
    charon: FakeCharon, socket_path: Path
) -> None:
    charon.establish(f"{PEER_CONN_PREFIX}{HIGH}", str(HIGH), initiator=True)
    conn = await ViciConnection.open(socket_path)
    try:
        for _ in range(3):
            items, response = await conn.streamed("list-sas", "list-sa", {"noblock": "yes"})
            assert len(items) == 1 and response == {}
        assert charon.registrations["list-sa"] == 1  # one round trip per list-sas after the first
    finally:
        await conn.close()


async def test_start_loads_profile_and_reapply_changes_nothing(charon: FakeCharon, socket_path: Path) -> None:
    async with manager(socket_path) as ipsec:
        assert list(charon.conns) == ["dmvpn"]
        assert list(charon.shared) == ["dmvpn-psk"]
        report = await ipsec.apply()
        assert not report.changed
        assert charon.commands["load-conn"] == 1 and charon.commands["load-shared"] == 1
    # A restarted agent reloads (charon keeps SAs of an unchanged connection) but unloads nothing.
    async with manager(socket_path) as again:
        assert list(charon.conns) == ["dmvpn"]
        assert not (await again.apply()).changed


async def test_ensuring_a_peer_trusts_what_the_session_loaded_and_the_check_comes_later(
    charon: FakeCharon, socket_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each VICI round trip delays the peer's IKE: ensure_peer loads the new connection without first
    listing charon's connections and secrets, even when a check is due; what someone else removed is
    repaired by verify_if_due (every _VERIFY_EVERY_S), which the agent calls off the shortcut's path."""
    async with manager(socket_path) as ipsec:
        asked = charon.commands["get-conns"], charon.commands["get-shared"]
        await ipsec.ensure_peer(LOW, InitiatePolicy.ONCE)
        assert (charon.commands["get-conns"], charon.commands["get-shared"]) == asked
        assert "dmvpn-peer-192.0.2.11" in charon.conns
        del charon.conns["dmvpn-peer-192.0.2.11"]  # an admin's swanctl --load-all, say
        assert await ipsec.verify_if_due() is None, "checked moments ago: not due"
        monkeypatch.setattr(manager_module, "_VERIFY_EVERY_S", 0.0)
        await ipsec.ensure_peer(HIGH)
        assert (charon.commands["get-conns"], charon.commands["get-shared"]) == asked, "due, yet not asked here"
        assert "dmvpn-peer-192.0.2.11" not in charon.conns, "the record is trusted"
        report = await ipsec.verify_if_due()
        assert report is not None and report.loaded_conns == ("dmvpn-peer-192.0.2.11",)
        assert charon.commands["get-conns"] == asked[0] + 1
        assert {"dmvpn-peer-192.0.2.11", "dmvpn-peer-192.0.2.13"} <= set(charon.conns), "repaired"


async def test_removing_a_peer_whose_connection_someone_else_unloaded_still_works(
    charon: FakeCharon, socket_path: Path
) -> None:
    """A second manager on the same charon (an agent restarted while the first still ran, as the kernel lab
    does) unloaded our peer's connection: our record is stale and the unload fails; the apply checks what
    charon holds and carries on."""
    async with manager(socket_path) as ipsec:
        await ipsec.ensure_peer(LOW, InitiatePolicy.ONCE)
        assert await ipsec.wait_sa_up(LOW, 2.0)
        del charon.conns["dmvpn-peer-192.0.2.11"]
        await ipsec.remove_peer(LOW)
        assert set(charon.conns) == {"dmvpn"} and charon.sas_to(str(LOW)) == []


async def test_an_sa_we_only_answered_is_told_apart_and_its_packets_in_are_read(
    charon: FakeCharon, socket_path: Path
) -> None:
    """The agent holds its routes over an SA the peer initiated until a packet came in over it: the manager
    tells such SAs apart from its events and reads the GRE CHILD_SA's inbound packet counter."""
    async with manager(socket_path) as ipsec:
        stream = ipsec.events()
        charon.peer_initiates(str(LOW))
        assert await next_event(stream) == (LOW, True, "child-updown")
        assert ipsec.answered_only(LOW)
        assert await ipsec.packets_in(LOW) == 10  # the fake charon's counter
        assert await ipsec.ensure_peer(HIGH) is PeerAction.INITIATED
        assert await next_event(stream) == (HIGH, True, "child-updown")
        assert not ipsec.answered_only(HIGH), "we initiated that one"
        assert (
            not ipsec.answered_only(IPv4Address("192.0.2.99"))
            and await ipsec.packets_in(IPv4Address("192.0.2.99")) == 0
        )


async def test_lower_address_initiates_and_the_sa_up_event_arrives(charon: FakeCharon, socket_path: Path) -> None:
    async with manager(socket_path) as ipsec:
        stream = ipsec.events()
        assert await ipsec.ensure_peer(HIGH) is PeerAction.INITIATED
        assert await next_event(stream) == (HIGH, True, "child-updown")
        assert ipsec.sa_up(HIGH) and ipsec.initiations == 1
        assert await ipsec.ensure_peer(HIGH) is PeerAction.ALREADY_UP
        assert ipsec.initiations == 1
        [sa] = await ipsec.list_sas()
        assert (sa.conn, sa.remote_host, sa.children[0].packets_in) == ("dmvpn-peer-192.0.2.13", HIGH, 10)


async def test_the_sas_are_read_while_the_connection_loads(charon: FakeCharon, socket_path: Path) -> None:
    """On a busy node each answer from charon takes a while: the check for an IKE_SA already under way
    (list-sas, on its own session) runs during the load-conn, so initiate waits for one answer, not two."""
    async with manager(socket_path) as ipsec:
        charon.timeline.clear()
        charon.load_conn_delay_s = 0.3
        assert await ipsec.ensure_peer(HIGH) is PeerAction.INITIATED
        order = charon.timeline
        load_started, load_ended = order.index(("start", "load-conn")), order.index(("end", "load-conn"))
        assert load_started < order.index(("start", "list-sas")) < load_ended, order
        assert order.index(("start", "initiate")) > load_ended, order
        assert ipsec.initiations == 1


async def test_once_initiates_right_after_the_load_without_reading_the_sas(
    charon: FakeCharon, socket_path: Path
) -> None:
    """ONCE: the peer cannot know we want an SA (it never saw our request, or it waits for us under the
    tie-break), so nothing of its can be under way: initiate as soon as the connection is loaded, without
    waiting for charon's SA list (on a loaded node the slower of the two answers)."""
    async with manager(socket_path) as ipsec:
        charon.timeline.clear()
        charon.list_sas_delay_s = 0.3
        charon.load_conn_delay_s = 0.3
        assert await ipsec.ensure_peer(LOW, InitiatePolicy.ONCE) is PeerAction.INITIATED
        assert ("start", "list-sas") not in charon.timeline, charon.timeline
        order = charon.timeline
        # Sent together: charon had the initiate before it answered the load-conn, and ran it after.
        assert order.index(("recv", "initiate")) < order.index(("end", "load-conn")), order
        assert order.index(("start", "initiate")) > order.index(("end", "load-conn")), order
        assert ipsec.initiations == 1 and "dmvpn-peer-192.0.2.11" in charon.conns
        assert await ipsec.wait_sa_up(LOW, timeout_s=2.0)
        # Nothing left for apply to load: a second call changes nothing in charon.
        charon.timeline.clear()
        assert (await ipsec.apply(verify=True)).loaded_conns == ()


async def test_once_loads_first_when_more_than_the_peers_connection_changed(
    charon: FakeCharon, socket_path: Path
) -> None:
    """The load and the initiate go together only when the peer's connection is all charon lacks; here
    someone removed our responder connection, so apply repairs that first and the initiate follows."""
    async with manager(socket_path) as ipsec:
        await ipsec.apply(verify=True)
        ipsec._loaded_conns.pop("dmvpn")  # as if a load of it had not been answered
        charon.timeline.clear()
        charon.load_conn_delay_s = 0.2
        assert await ipsec.ensure_peer(LOW, InitiatePolicy.ONCE) is PeerAction.INITIATED
        order = charon.timeline
        assert order.index(("recv", "initiate")) > order.index(("end", "load-conn")), order
        assert order.count(("end", "load-conn")) == 2 and ipsec.initiations == 1


async def test_a_refused_load_is_not_recorded_and_its_initiate_fails_with_it(
    charon: FakeCharon, socket_path: Path
) -> None:
    async with manager(socket_path) as ipsec:
        charon.refuse_load_conn = True
        with pytest.raises(IpsecError, match="load-conn failed"):
            await ipsec.ensure_peer(LOW, InitiatePolicy.ONCE)
        assert "dmvpn-peer-192.0.2.11" not in charon.conns and not charon.sas_to(str(LOW))
        charon.refuse_load_conn = False
        assert await ipsec.ensure_peer(LOW, InitiatePolicy.ONCE) is not PeerAction.WAITING
        assert "dmvpn-peer-192.0.2.11" in charon.conns


async def test_higher_address_waits_for_the_peer(charon: FakeCharon, socket_path: Path) -> None:
    """The waiting side asks nothing of charon: the peer's IKE_SA lands on our responder connection, and a
    load-conn would only compete with that exchange. Nothing is loaded later either once the SA is up."""
    async with manager(socket_path, fallback_s=0.3) as ipsec:
        stream = ipsec.events()
        loads = charon.commands["load-conn"]
        assert await ipsec.ensure_peer(LOW) is PeerAction.WAITING
        assert "dmvpn-peer-192.0.2.11" not in charon.conns and charon.commands["load-conn"] == loads
        charon.peer_initiates(str(LOW))
        assert await next_event(stream) == (LOW, True, "child-updown")
        await asyncio.sleep(0.5)  # past the fallback: nothing more may happen
        assert ipsec.initiations == 0 and len(charon.sas_to(str(LOW))) == 1
        assert charon.commands["load-conn"] == loads
        # Another peer's connection loads (with its initiate) without dragging the waiting one's along.
        await ipsec.ensure_peer(IPv4Address("192.0.2.13"), InitiatePolicy.ONCE)
        assert "dmvpn-peer-192.0.2.13" in charon.conns and "dmvpn-peer-192.0.2.11" not in charon.conns


async def test_waiting_side_initiates_after_the_fallback(charon: FakeCharon, socket_path: Path) -> None:
    async with manager(socket_path, fallback_s=0.2) as ipsec:
        assert await ipsec.ensure_peer(LOW) is PeerAction.WAITING
        assert not ipsec.sa_up(LOW) and "dmvpn-peer-192.0.2.11" not in charon.conns
        assert await ipsec.wait_sa_up(LOW, timeout_s=2.0)
        assert ipsec.initiations == 1 and "dmvpn-peer-192.0.2.11" in charon.conns, "loaded, then initiated"


async def test_remove_peer_terminates_and_unloads(charon: FakeCharon, socket_path: Path) -> None:
    async with manager(socket_path) as ipsec:
        stream = ipsec.events()
        await ipsec.ensure_peer(HIGH)
        assert await next_event(stream) == (HIGH, True, "child-updown")
        await ipsec.remove_peer(HIGH)
        assert await next_event(stream) == (HIGH, False, "child-updown")
        assert charon.sas == {} and list(charon.conns) == ["dmvpn"]
        assert ipsec.peers == frozenset()
        await ipsec.remove_peer(HIGH)  # idempotent


async def test_hub_sa_is_kept_up(charon: FakeCharon, socket_path: Path) -> None:
    async with manager(socket_path) as ipsec:
        stream = ipsec.events()
        assert await ipsec.ensure_peer(LOW, InitiatePolicy.ALWAYS) is PeerAction.INITIATED
        assert await next_event(stream) == (LOW, True, "child-updown")
        [uid] = charon.sas_to(str(LOW))
        charon.drop(uid)  # e.g. DPD cleared it
        assert await next_event(stream) == (LOW, False, "child-updown")
        assert await next_event(stream) == (LOW, True, "child-updown")
        assert ipsec.initiations == 2


async def test_once_initiates_now_and_never_brings_the_sa_back(charon: FakeCharon, socket_path: Path) -> None:
    async with manager(socket_path) as ipsec:
        stream = ipsec.events()
        assert await ipsec.ensure_peer(LOW, InitiatePolicy.ONCE) is PeerAction.INITIATED  # MID > LOW: no wait
        assert await next_event(stream) == (LOW, True, "child-updown")
        [uid] = charon.sas_to(str(LOW))
        charon.drop(uid)  # the peer removed the idle shortcut's SA
        assert await next_event(stream) == (LOW, False, "child-updown")
        await asyncio.sleep(0.5)
        assert not ipsec.sa_up(LOW) and charon.sas_to(str(LOW)) == [] and ipsec.initiations == 1
        assert await ipsec.ensure_peer(LOW, InitiatePolicy.ONCE) is PeerAction.INITIATED, "new demand asks again"
        assert await next_event(stream) == (LOW, True, "child-updown")


async def test_two_asks_in_the_same_moment_initiate_one_ike_sa(charon: FakeCharon, socket_path: Path) -> None:
    async with manager(socket_path) as ipsec:
        stream = ipsec.events()
        charon.initiate_delay_s = 0.3  # like charon's initiate with timeout -1: the IKE_SA is listed later
        # A Resolution Request and the reply it makes both ask for the SA before charon lists it.
        await asyncio.gather(ipsec.ensure_peer(LOW, InitiatePolicy.ONCE), ipsec.ensure_peer(LOW, InitiatePolicy.ONCE))
        again = await ipsec.ensure_peer(LOW, InitiatePolicy.ONCE)  # and once more, after those returned
        assert again is PeerAction.IN_PROGRESS
        assert await next_event(stream) == (LOW, True, "child-updown")
        await asyncio.sleep(0.5)
        assert ipsec.initiations == 1 and len(charon.sas_to(str(LOW))) == 1


async def test_charon_restart_reports_down_then_reloads_and_reinitiates(socket_path: Path) -> None:
    charon = FakeCharon(socket_path, str(MID))
    await charon.start()
    ipsec = manager(socket_path, reconnect_max_s=0.2)
    try:
        await ipsec.start()
        stream = ipsec.events()
        await ipsec.ensure_peer(LOW, InitiatePolicy.ALWAYS)
        assert await next_event(stream) == (LOW, True, "child-updown")
        await charon.stop()
        assert await next_event(stream) == (LOW, False, "disconnect")
        assert not ipsec.sa_up(LOW)
        with pytest.raises(CharonUnavailable):
            await ipsec.list_sas()
        await charon.start()
        assert await next_event(stream, timeout_s=5.0) == (LOW, True, "child-updown")
        assert set(charon.conns) == {"dmvpn", "dmvpn-peer-192.0.2.11"} and "dmvpn-psk" in charon.shared
    finally:
        await ipsec.close()
        await charon.stop()


async def test_shortcut_we_initiate_is_initiated_again_after_a_charon_restart(socket_path: Path) -> None:
    charon = FakeCharon(socket_path, str(MID))
    await charon.start()
    ipsec = manager(socket_path, reconnect_max_s=0.2)
    try:
        await ipsec.start()
        await ipsec.ensure_peer(HIGH)
        assert await ipsec.wait_sa_up(HIGH, 2.0)
        await charon.stop()
        await charon.start()
        await asyncio.sleep(0.1)
        assert await ipsec.wait_sa_up(HIGH, 5.0)
        assert ipsec.initiations == 2
    finally:
        await ipsec.close()
        await charon.stop()


async def test_sas_from_an_address_we_moved_away_from_never_count_and_are_terminated(
    charon: FakeCharon, socket_path: Path
) -> None:
    """The node's NBMA address changed and its agent restarted; charon kept the IKE_SAs it had made from the
    old address. They protect nothing we send now: not up, and ended at once instead of after DPD."""
    old = charon.establish("dmvpn-peer-192.0.2.11", str(LOW), initiator=True)
    charon.local = "192.0.2.52"
    ipsec = manager(socket_path, local=IPv4Address("192.0.2.52"))
    try:
        await ipsec.start()
        assert not ipsec.sa_up(LOW)
        assert old not in charon.sas, "the stale IKE_SA was terminated"
        assert await ipsec.ensure_peer(LOW, InitiatePolicy.ONCE) == PeerAction.INITIATED
        assert await ipsec.wait_sa_up(LOW, 2.0)
        # moving again while running (a new profile): the SA from .52 goes, .53's is ours
        await ipsec.apply(ProtectionProfile(IPv4Address("192.0.2.53"), PSK))
        assert not ipsec.sa_up(LOW) and charon.sas_to(str(LOW)) == []
    finally:
        await ipsec.close()


async def test_refused_profile_raises_at_start(charon: FakeCharon, socket_path: Path) -> None:
    async def refuse(*_: object) -> dict[str, str]:
        return {"success": "no", "errmsg": "invalid value for: proposals"}

    charon.cmd_load_conn = refuse  # type: ignore[method-assign]
    with pytest.raises(IpsecError, match="proposals"):
        await manager(socket_path).start()


async def test_duplicate_ike_sas_the_lower_end_keeps_its_own(charon: FakeCharon, socket_path: Path) -> None:
    async with manager(socket_path) as ipsec:  # we are MID, the peer HIGH: we are the lower end
        await ipsec.ensure_peer(HIGH)
        assert await ipsec.wait_sa_up(HIGH, 2.0)
        [ours] = charon.sas_to(str(HIGH))
        theirs = charon.peer_initiates(str(HIGH))  # a fallback that crossed ours
        for _ in range(150):
            if theirs not in charon.sas:
                break
            await asyncio.sleep(0.02)
        assert charon.sas_to(str(HIGH)) == [ours]
        assert ipsec.sa_up(HIGH)


async def test_duplicates_made_by_the_peer_alone_are_left_to_charon(charon: FakeCharon, socket_path: Path) -> None:
    # A restarted peer initiates again while its stale IKE_SA still exists here: keeping the older one
    # would drop the live one, so the manager must not choose (charon's INITIAL_CONTACT handling does).
    async with manager(socket_path) as ipsec:
        stale = charon.peer_initiates(str(HIGH))
        fresh = charon.peer_initiates(str(HIGH))
        await asyncio.sleep(1.5)
        assert charon.sas_to(str(HIGH)) == [stale, fresh]
        assert ipsec.sa_up(HIGH)


async def test_switch_to_x509_loads_credentials_and_unloads_the_psk(charon: FakeCharon, socket_path: Path) -> None:
    async with manager(socket_path) as ipsec:
        x509 = X509Auth(b"cert", b"key", b"ca")
        report = await ipsec.apply(ProtectionProfile(MID, x509))
        assert report.unloaded_shared == ("dmvpn-psk",) and report.loaded_conns == ("dmvpn",)
        assert [cert["flag"] for cert in charon.certs] == [b"CA", b"NONE"] and len(charon.keys) == 1
        assert not (await ipsec.apply()).changed


async def test_foreign_connections_are_left_alone(charon: FakeCharon, socket_path: Path) -> None:
    charon.conns["site-to-site"] = {"remote_addrs": [b"198.51.100.1"]}
    charon.conns["dmvpn-peer-192.0.2.99"] = {"remote_addrs": [b"192.0.2.99"]}  # ours, no longer desired
    async with manager(socket_path):
        assert set(charon.conns) == {"site-to-site", "dmvpn"}


async def test_own_address_is_refused(charon: FakeCharon, socket_path: Path) -> None:
    async with manager(socket_path) as ipsec:
        with pytest.raises(ValueError, match="own NBMA"):
            await ipsec.ensure_peer(MID)


async def test_start_without_charon_raises(socket_path: Path) -> None:
    with pytest.raises(CharonUnavailable):
        await manager(socket_path).start()


def start_action(charon: FakeCharon, peer: IPv4Address) -> bytes:
    child: dict[str, bytes] = charon.conns[f"dmvpn-peer-{peer}"]["children"]["gre"]
    return child["start_action"]


async def test_trap_loads_a_trap_policy_and_initiates_with_it(charon: FakeCharon, socket_path: Path) -> None:
    """TRAP: the load-conn (its CHILD_SA with start_action=trap) and the initiate go together, as for ONCE;
    asked again while the SA comes, nothing new is loaded or initiated (the trap holds the claim)."""
    async with manager(socket_path) as ipsec:
        charon.timeline.clear()
        charon.load_conn_delay_s = 0.2
        charon.initiate_delay_s = 0.5  # the IKE exchange
        assert await ipsec.ensure_peer(LOW, InitiatePolicy.TRAP) is PeerAction.TRAPPED
        assert start_action(charon, LOW) == b"trap" and ipsec.trapped(LOW)
        order = charon.timeline
        assert order.index(("recv", "initiate")) < order.index(("end", "load-conn")), order
        assert order.count(("end", "load-conn")) == 1 and ipsec.initiations == 1
        charon.timeline.clear()
        assert await ipsec.ensure_peer(LOW, InitiatePolicy.TRAP) is PeerAction.TRAPPED
        assert ("recv", "load-conn") not in charon.timeline and ("recv", "initiate") not in charon.timeline
        assert await ipsec.wait_sa_up(LOW, timeout_s=2.0)
        assert (await ipsec.apply(verify=True)).loaded_conns == (), "the trap stays as loaded"
        assert await ipsec.ensure_peer(LOW, InitiatePolicy.TRAP) is PeerAction.ALREADY_UP


async def test_a_withdrawn_trap_is_reloaded_without_it_and_initiated(charon: FakeCharon, socket_path: Path) -> None:
    async with manager(socket_path) as ipsec:
        assert await ipsec.ensure_peer(HIGH, InitiatePolicy.TRAP) is PeerAction.TRAPPED
        for uid in charon.sas_to(str(HIGH)):  # the trap's IKE exchange failed
            charon.drop(uid)
        ipsec._initiated_at.clear()  # and the claim has run out (the agent withdraws a trap after seconds)
        assert await ipsec.ensure_peer(HIGH, InitiatePolicy.AUTO) is PeerAction.INITIATED
        assert start_action(charon, HIGH) == b"none" and not ipsec.trapped(HIGH)
        assert ipsec.initiations == 2
        await ipsec.remove_peer(HIGH)
        assert f"dmvpn-peer-{HIGH}" not in charon.conns


async def test_no_trap_beside_an_initiation_or_an_sa(charon: FakeCharon, socket_path: Path) -> None:
    """A trap next to an IKE_SA under way would make charon start a second one on the acquire: TRAP then
    does what ONCE would (here: nothing new, the initiation holds the claim; or the SA is up already)."""
    async with manager(socket_path) as ipsec:
        assert await ipsec.ensure_peer(LOW, InitiatePolicy.ONCE) is PeerAction.INITIATED
        assert await ipsec.ensure_peer(LOW, InitiatePolicy.TRAP) is not PeerAction.TRAPPED
        assert not ipsec.trapped(LOW) and start_action(charon, LOW) == b"none"
        assert await ipsec.wait_sa_up(LOW, timeout_s=2.0)
        assert await ipsec.ensure_peer(LOW, InitiatePolicy.TRAP) is PeerAction.ALREADY_UP
        assert not ipsec.trapped(LOW) and ipsec.initiations == 1
