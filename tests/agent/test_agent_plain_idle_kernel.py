"""Idle expiry without IPsec, with real agents in the kernel lab (hub + 2 spokes, plain GRE, 10 ms one-way
delay, shortcutIdleTimeout 6 s): no SA counts the shortcut's traffic, so the agent reads the data plane's
per-peer counter (GRE sent to each NBMA address, an nftables set). A shortcut that carries traffic for
several idle timeouts stays; once the traffic stops it ages out, and new traffic rebuilds it."""

from __future__ import annotations

import json

import pytest

from dmvpn.lab.agents import AgentLab
from dmvpn.lab.topology import Lab, hub_and_spokes, ping

pytestmark = pytest.mark.kernel

IDLE_S = 6


def test_a_busy_plain_gre_shortcut_stays_and_an_idle_one_ages_out(lab: Lab) -> None:
    hub, spoke1, spoke2 = hub_and_spokes(lab, spokes=2, delay_ms=10.0)
    assert spoke1.pod is not None and spoke2.pod is not None
    agents = AgentLab(lab, [hub, spoke1, spoke2], ipsec=False, idle_timeout=IDLE_S)
    agents.start_all()
    agents.wait_registered()
    assert ping(spoke1.pod, str(spoke2.pod_ip), count=40, interval=0.05)[1] >= 38
    agents.wait_shortcut("spoke1", str(spoke2.tunnel_ip))
    counters = agents.agents["spoke1"].request("show counters")["agent"]

    # Busy for over three idle timeouts: the shortcut must not age out (it used to, counted from creation).
    sent, received = ping(spoke1.pod, str(spoke2.pod_ip), count=100, interval=0.2)
    assert received >= sent - 2
    after = agents.agents["spoke1"].request("show counters")["agent"]
    assert after["shortcuts_expired"] == counters["shortcuts_expired"], "a busy shortcut was aged out"
    assert agents.shortcuts("spoke1"), "the busy shortcut is gone"
    usage = json.loads(spoke1.ns.run("nft", "-j", "list", "set", "inet", "dmvpn", "usage_peers"))
    counted = {e["elem"]["val"]: e["elem"]["counter"]["bytes"] for s in usage["nftables"] if "set" in s
               for e in s["set"].get("elem", [])}  # fmt: skip
    assert counted.get(str(spoke2.nbma), 0) > 100 * 84, f"GRE to spoke2 is counted: {counted}"

    # Idle: it ages out after the timeout, and its route leaves the kernel.
    idle_for = agents.wait_idle_expiry("spoke1", IDLE_S)
    assert not agents.shortcuts("spoke1"), "an idle shortcut must age out"
    assert idle_for >= IDLE_S - 1, f"removed after {idle_for:.1f} s, before the idle timeout"
    routes = json.loads(spoke1.ns.run("ip", "-j", "-4", "route", "show", str(spoke2.lan)) or "[]")
    assert [r.get("gateway") for r in routes] != [str(spoke2.tunnel_ip)], routes

    # New traffic: the shortcut is rebuilt.
    assert ping(spoke1.pod, str(spoke2.pod_ip), count=40, interval=0.05)[1] >= 38
    agents.wait_shortcut("spoke1", str(spoke2.tunnel_ip))
