"""Bad peers and bad packets against running agents, then idle expiry, in the kernel lab.

Hub + 2 spokes with real agents and charons, IPsec required, 10 ms one-way delay, shortcutIdleTimeout 15 s,
plus a rogue site on the same underlay with a GRE device of the right key but no IKE credentials:

1. malformed NHRP sent at the hub by a legitimate spoke (through its ESP-protected path, so it reaches the
   agent) is counted per reason and dropped, and the hub keeps serving;
2. the rogue can neither register with the hub nor inject pod traffic into a spoke: its clear GRE is
   dropped (and counted) by the IPsec guard;
3. the shortcut spoke1 -> spoke2 still forms through that hub, then ages out after the idle timeout, with
   its SA; new traffic goes via the hub again and rebuilds it.
"""

from __future__ import annotations

import json
import struct
import sys
import time
from ipaddress import IPv4Address

import pytest

from dmvpn.lab.agents import AgentLab
from dmvpn.lab.topology import Lab, Netns, Site, add_static_mgre, hub_and_spokes, ping, tunnel_rx
from dmvpn.nhrp.codec import CIE, Message, PacketType, RegistrationFlag, decode, encode
from dmvpn.nhrp.codec.errors import NHRPDecodeError

pytestmark = pytest.mark.kernel

DELAY_MS = 10.0
IDLE_S = 15
GRE_KEY = 42
ROGUE_NBMA, ROGUE_TUNNEL = "192.0.2.66", "10.255.0.66"

# Sends each hex-encoded NHRP packet from argv[3:] out of device argv[1] to NBMA address argv[2].
SEND_NHRP = """
import socket, sys, time
sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x2001))
sock.bind((sys.argv[1], 0x2001))
for packet in sys.argv[3:]:
    sock.sendto(bytes.fromhex(packet), (sys.argv[1], 0x2001, 0, 0, socket.inet_aton(sys.argv[2])))
    time.sleep(0.1)
"""
# Sends argv[2] (hex: a GRE header and its payload) 20 times to argv[1] from a raw GRE socket.
SEND_GRE = """
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_GRE)
for _ in range(20):
    sock.sendto(bytes.fromhex(sys.argv[2]), (sys.argv[1], 0))
    time.sleep(0.02)
"""


def spoke1_sa_peers(agents: AgentLab) -> set[str]:
    return {sa["peer"] for sa in agents.agents["spoke1"].request("show ipsec") if sa.get("peer")}


def run_python(ns: Netns, script: str, *args: str) -> None:
    ns.run(sys.executable, "-I", "-S", "-c", script, *args, timeout=60)


def guard_drops(site: Site) -> int:
    """Packets the IPsec guard (table inet dmvpn_ipsec) dropped on input: GRE that did not come in ESP."""
    rules = json.loads(site.ns.run("nft", "-j", "list", "table", "inet", "dmvpn_ipsec"))["nftables"]
    for item in rules:
        rule = item.get("rule", {})
        if str(rule.get("comment", "")).startswith("dmvpn-ipsec-in"):
            return sum(int(e["counter"]["packets"]) for e in rule["expr"] if isinstance(e, dict) and "counter" in e)
    raise AssertionError(f"no guard rule at {site.name}: {rules}")


def echo_requests_received(ns: Netns) -> int:
    """ICMP echo requests this namespace's IP stack took in (/proc/net/snmp is per network namespace)."""
    rows = [line.split() for line in ns.run("cat", "/proc/net/snmp").splitlines() if line.startswith("Icmp:")]
    return int(dict(zip(rows[0][1:], rows[1][1:], strict=True))["InEchos"])


def checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def gre_with_icmp_echo(src: str, dst: str) -> bytes:
    """Keyed GRE (key 42, IPv4 payload) carrying a valid ICMP echo request src -> dst."""
    icmp = bytearray(struct.pack("!BBHHH", 8, 0, 0, 0x4242, 1) + b"rogue-payload!!!")
    icmp[2:4] = struct.pack("!H", checksum(bytes(icmp)))
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0,
                                   IPv4Address(src).packed, IPv4Address(dst).packed))  # fmt: skip
    header[10:12] = struct.pack("!H", checksum(bytes(header)))
    return struct.pack("!HHI", 0x2000, 0x0800, GRE_KEY) + bytes(header) + bytes(icmp)


def rogue_registration() -> bytes:
    return encode(
        Message(
            type=PacketType.REGISTRATION_REQUEST,
            flags=RegistrationFlag.UNIQUE,
            request_id=7,
            src_nbma=IPv4Address(ROGUE_NBMA),
            src_protocol=IPv4Address(ROGUE_TUNNEL),
            dst_protocol=IPv4Address("10.255.0.254"),
            cies=(CIE(prefix_length=32, holding_time=600),),
        )
    )


def test_bad_packets_and_a_rogue_peer_then_idle_expiry(lab: Lab) -> None:
    hub, spoke1, spoke2 = hub_and_spokes(lab, spokes=2, delay_ms=DELAY_MS)
    assert spoke1.pod is not None and spoke2.pod is not None
    rogue = lab.add_site("rogue", ROGUE_NBMA, ROGUE_TUNNEL, "10.1.66.0/24", DELAY_MS, with_pod=False)
    add_static_mgre(rogue, key=GRE_KEY)
    agents = AgentLab(lab, [hub, spoke1, spoke2], ipsec=True, idle_timeout=IDLE_S)
    agents.start_all()
    agents.wait_registered(timeout_s=120)
    hub_agent = agents.agents["hub"]

    # 1. malformed NHRP from a legitimate peer, through its SA: counted and dropped
    valid = rogue_registration()
    bad_version = valid[:16] + bytes([valid[16] ^ 0xFF]) + valid[17:]  # byte 16: the NHRP version
    garbage = [
        b"\x00\x01\x08\x00",  # the first 4 bytes of a header (the kernel drops GRE under 12 bytes before us)
        b"\xff" * 19,  # shorter than the fixed header
        valid[:-4],  # truncated: the header's length says more
        bad_version,
        valid[:2] + b"\x86\xdd" + valid[4:],  # the protocol type changed: the checksum no longer matches
    ]
    for packet in garbage:
        with pytest.raises(NHRPDecodeError):
            decode(packet)  # each is malformed by our own codec's standards, checked here first
    before = hub_agent.request("show counters")
    run_python(spoke2.ns, SEND_NHRP, "dmvpn0", str(hub.nbma), *(packet.hex() for packet in garbage))
    deadline = time.monotonic() + 20
    after = before
    while time.monotonic() < deadline:
        after = hub_agent.request("show counters")
        if after["drops"].get("decode_error", 0) - before["drops"].get("decode_error", 0) >= len(garbage):
            break
        time.sleep(0.3)
    decode_errors = after["drops"].get("decode_error", 0) - before["drops"].get("decode_error", 0)
    counted = f"{after['drops']} {after['decode_errors']}"
    assert decode_errors == len(garbage), f"each malformed packet is counted once: {counted}"
    assert sum(after["decode_errors"].values()) - sum(before["decode_errors"].values()) == len(garbage)
    assert after["agent"].get("engine_errors", 0) == 0 and hub_agent.poll() is None, "the hub keeps running"

    # 2. the rogue has the GRE key but no IKE credentials: it can neither register nor inject
    hub_drops, spoke_drops = guard_drops(hub), guard_drops(spoke1)
    registrations_before = after["packets_in"].get("registration_request", 0)
    run_python(rogue.ns, SEND_NHRP, "gre1", str(hub.nbma), *[rogue_registration().hex()] * 5)
    echoes_before = echo_requests_received(spoke1.pod)
    run_python(rogue.ns, SEND_GRE, str(spoke1.nbma), gre_with_icmp_echo(str(spoke2.pod_ip), str(spoke1.pod_ip)).hex())
    time.sleep(1.0)
    assert guard_drops(hub) - hub_drops >= 5, "the hub's guard dropped the rogue's clear registrations"
    assert guard_drops(spoke1) - spoke_drops >= 20, "spoke1's guard dropped the injected GRE"
    assert echo_requests_received(spoke1.pod) == echoes_before, "nothing reached the pod"
    counters = hub_agent.request("show counters")
    assert counters["packets_in"].get("registration_request", 0) == registrations_before
    assert not [r for r in hub_agent.request("show nhrp") if r["protocol"] == ROGUE_TUNNEL]

    # 3. the hub still serves: pod-to-pod goes via the hub, then the shortcut forms (IPsec up)
    before_hub = tunnel_rx(hub)
    sent, received = ping(spoke1.pod, str(spoke2.pod_ip), count=60, interval=0.05)
    assert received == sent and tunnel_rx(hub) > before_hub
    shortcut = agents.wait_shortcut("spoke1", str(spoke2.tunnel_ip))
    assert shortcut["ipsec"] == "up"

    # ... then ages out when idle, with its SA; the route via spoke2 leaves the kernel
    idle_for = agents.wait_idle_expiry("spoke1", IDLE_S)
    assert not agents.shortcuts("spoke1"), "an idle shortcut must age out"
    assert idle_for >= IDLE_S - 1, f"removed after {idle_for:.1f} s, before the idle timeout"
    routes = json.loads(spoke1.ns.run("ip", "-j", "-4", "route", "show", str(spoke2.lan)) or "[]")
    assert [r.get("gateway") for r in routes] != [str(spoke2.tunnel_ip)], routes
    # The idle shortcut's SA is removed, and stays gone: spoke2 (which answered spoke1's Resolution
    # Request and initiated that SA) must not make it again (it once did, with a keep-up policy).
    removed = f"removed the SA to {spoke2.nbma}"
    deadline = time.monotonic() + 30
    events: list[tuple[str, str]] = []
    while time.monotonic() < deadline:
        events = [(e["kind"], e["text"]) for e in agents.agents["spoke1"].request("show events")]
        if ("ike", removed) in events:
            break
        time.sleep(0.5)
    assert ("ike", removed) in events, f"the idle shortcut's SA must be removed: {events[-10:]}"
    deadline = time.monotonic() + 20  # show ipsec is the agent's last SA sample, taken every 2 s at most
    while time.monotonic() < deadline and str(spoke2.nbma) in spoke1_sa_peers(agents):
        time.sleep(0.5)
    assert str(spoke2.nbma) not in spoke1_sa_peers(agents), "the SA to spoke2 is gone from charon"
    time.sleep(4)  # two more samples: nobody re-made it
    assert str(spoke2.nbma) not in spoke1_sa_peers(agents), "the SA to spoke2 was made again"
    assert agents.agents["spoke1"].request("show counters")["agent"]["shortcuts_expired"] >= 1

    # New traffic: via the hub again, and the shortcut is rebuilt
    before_hub = tunnel_rx(hub)
    sent, received = ping(spoke1.pod, str(spoke2.pod_ip), count=60, interval=0.05)
    assert received >= sent - 2 and tunnel_rx(hub) > before_hub
    agents.wait_shortcut("spoke1", str(spoke2.tunnel_ip))
