"""Two hubs, real agents in the kernel lab: spokes register with both; when the first hub dies, existing
shortcuts keep forwarding through the outage and hub-bound traffic moves to the second hub.

Sites: hub (192.0.2.1, LAN 10.1.0.0/24), hub2 (192.0.2.2, LAN 10.1.100.0/24), spoke1, spoke2; plain GRE
(failover does not depend on IPsec), 10 ms one-way underlay delay, NHRP holding time 60 s so that a dead
NHS is noticed within a test's time (refresh every 20 s, declared down after 4 unanswered attempts).
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from dmvpn.lab.agents import AgentLab
from dmvpn.lab.topology import Lab, Site, hub_and_spokes, ping

pytestmark = pytest.mark.kernel

DELAY_MS = 10.0
HOLD_S = 60
SUMMARY = "10.1.0.0/16"


def route_gateway(site: Site, prefix: str) -> str | None:
    rows = json.loads(site.ns.run("ip", "-j", "-4", "route", "show", prefix, "dev", "dmvpn0") or "[]")
    return rows[0].get("gateway", "") if rows else None


def spoke_packets_forwarded(hub: Site) -> int:
    """Packets the counting rules in the hub's FORWARD chain saw (the spokes' pods' ICMP, both ways)."""
    lines = hub.ns.run("iptables", "-nvxL", "FORWARD").splitlines()
    return sum(int(line.split()[0]) for line in lines if "dual-hub-spoke-traffic" in line)


def nhs_states(agents: AgentLab, site: str) -> dict[str, str]:
    return {p["nbma"]: p["state"] for p in agents.agents[site].request("show dmvpn")["peers"] if p["kind"] == "nhs"}


def test_dual_hub_failover_keeps_existing_shortcuts(lab: Lab) -> None:
    hub, spoke1, spoke2 = hub_and_spokes(lab, spokes=2, delay_ms=DELAY_MS)
    hub2 = lab.add_site("hub2", "192.0.2.2", "10.255.0.253", "10.1.100.0/24", DELAY_MS)
    assert spoke1.pod is not None and spoke2.pod is not None and hub2.pod is not None
    agents = AgentLab(lab, [hub, hub2, spoke1, spoke2], ipsec=False, hubs=2, hold_time=HOLD_S)
    agents.start_all()
    agents.wait_registered(timeout_s=90)

    # Both hubs hold both spokes; a spoke sends the summary via the first hub, each hub's LAN via that hub.
    for site in (hub, hub2):
        rows = agents.agents[site.name].request("show nhrp")
        for spoke in (spoke1, spoke2):
            assert any(r["protocol"] == str(spoke.tunnel_ip) and r["type"] == "dynamic" for r in rows), rows
    assert route_gateway(spoke1, SUMMARY) == str(hub.tunnel_ip)
    assert route_gateway(spoke1, str(hub2.lan)) == str(hub2.tunnel_ip)
    assert ping(spoke1.pod, str(hub2.pod_ip), count=5, interval=0.1) == (5, 5), "hub2's LAN, via hub2"

    # A shortcut spoke1 -> spoke2 through the first hub's redirect.
    sent, received = ping(spoke1.pod, str(spoke2.pod_ip), count=40, interval=0.05)
    assert received == sent
    agents.wait_shortcut("spoke1", str(spoke2.tunnel_ip))
    agents.wait_shortcut("spoke2", str(spoke1.tunnel_ip))

    # The first hub dies (its agent and its underlay link) while spoke1 pings spoke2 over the shortcut.
    pinger = subprocess.Popen(
        spoke1.pod.argv("ping", "-n", "-q", "-i", "0.1", "-c", "700", "-W", "2", str(spoke2.pod_ip)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        time.sleep(1.0)
        agents.agents["hub"].kill()
        hub.ns.run("ip", "link", "set", "eth0", "down")
        died = time.monotonic()
        deadline = died + 90
        while time.monotonic() < deadline and route_gateway(spoke1, SUMMARY) != str(hub2.tunnel_ip):
            time.sleep(0.5)
        failover_s = time.monotonic() - died
        assert route_gateway(spoke1, SUMMARY) == str(hub2.tunnel_ip), f"no failover: {nhs_states(agents, 'spoke1')}"
        assert nhs_states(agents, "spoke1") == {str(hub.nbma): "down", str(hub2.nbma): "up"}
        print(f"\n[lab] spoke1 moved {SUMMARY} to hub2 {failover_s:.1f} s after hub died")
        out, _ = pinger.communicate(timeout=120)
    finally:
        if pinger.poll() is None:
            pinger.kill()
            pinger.wait()
    summary = next(line for line in out.splitlines() if "packets transmitted" in line)
    sent, received = (int(part.split()[0]) for part in summary.split(",")[:2])
    assert received == sent, f"the existing shortcut must keep forwarding through the outage: {summary}"

    # After the failover: the shortcut still carries spoke traffic (hub2 forwards none of it), hub2's LAN
    # works. Counted by an iptables rule (count only) on the pods' ICMP in both directions: the tunnel's
    # packet counter would also count NHRP (registration refreshes, shortcut renewals) on hub2.
    for src, dst in ((spoke1, spoke2), (spoke2, spoke1)):
        hub2.ns.run("iptables", "-I", "FORWARD", "1", "-s", str(src.pod_ip), "-d", str(dst.pod_ip), "-p", "icmp",
                    "-m", "comment", "--comment", "dual-hub-spoke-traffic")  # fmt: skip
    assert ping(spoke1.pod, str(spoke2.pod_ip), count=20, interval=0.05) == (20, 20)
    assert spoke_packets_forwarded(hub2) == 0
    assert agents.shortcuts("spoke1"), "the shortcut survived"
    assert ping(spoke1.pod, str(hub2.pod_ip), count=5, interval=0.1) == (5, 5)
