"""The real agent in the kernel lab: hub + 2 spokes, one charon and one `dmvpn-agent --standalone` per site,
10 ms one-way underlay delay, IPsec required."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import pytest

from dmvpn.lab.agents import AgentLab
from dmvpn.lab.topology import Lab, Netns, hub_and_spokes, ping, tunnel_rx

pytestmark = pytest.mark.kernel

DELAY_MS = 10.0


def flood_ping(pod: Netns, dst: str, count: int, interval: float = 0.05) -> tuple[int, int]:
    return ping(pod, dst, count=count, interval=interval, timeout_s=2.0)


def test_phase3_ipsec_shortcut_without_loss_then_restart(lab: Lab) -> None:
    hub, spoke1, spoke2 = hub_and_spokes(lab, spokes=2, delay_ms=DELAY_MS)
    assert spoke1.pod is not None and spoke2.pod is not None
    agents = AgentLab(lab, [hub, spoke1, spoke2], ipsec=True)
    agents.start_all()
    agents.wait_registered()

    inet = lab.underlay()
    capture = subprocess.Popen(
        inet.argv("timeout", "30", "tcpdump", "-n", "-l", "-i", "br0", "ip proto 47 or ip proto 50"),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    time.sleep(1.0)

    # 1. pod-to-pod across spokes: first via the hub, then direct, nothing lost in the switch
    before = tunnel_rx(hub)
    sent, received = flood_ping(spoke1.pod, str(spoke2.pod_ip), count=60)
    via_hub = tunnel_rx(hub) - before
    assert received == sent, f"lost {sent - received} of {sent} pings while the shortcut formed"
    assert via_hub > 0, "the first packets must go via the hub"
    shortcut = agents.wait_shortcut("spoke1", timeout_s=20)
    assert shortcut["tunnel"] == str(spoke2.tunnel_ip) and shortcut["ipsec"] == "up"

    before = tunnel_rx(hub)
    sent, received = flood_ping(spoke1.pod, str(spoke2.pod_ip), count=20)
    assert received == sent
    assert tunnel_rx(hub) - before <= 2, "after the shortcut, pod traffic must bypass the hub"
    # both directions: spoke2's replies hairpinned too, so spoke2 built its own shortcut to spoke1
    reverse = agents.wait_shortcut("spoke2", timeout_s=20)
    assert reverse["tunnel"] == str(spoke1.tunnel_ip)
    # spoke1 (the lower address) initiated; spoke2 routed into the SA once the data plane logged spoke1's
    # first packet over it (nftables -> NFLOG), not at the end of its bounded wait
    events = [(e["kind"], e["text"]) for e in agents.agents["spoke2"].request("show events")]
    ready = [text for kind, text in events if kind == "sa-ready"]
    assert ready and all("came in" in text and "nothing" not in text for text in ready), events[-20:]
    assert agents.agents["spoke2"].request("show counters")["agent"]["sa_first_packets"] >= 1
    # spoke1 routed into a trap policy as the hub's answer came, before its SA was up: the kernel held the
    # pings meanwhile (none lost above) while the IKE exchange initiated with the trap ran
    s1_events = [(e["kind"], e["text"]) for e in agents.agents["spoke1"].request("show events")]
    trapped = first_event(s1_events, "ike", lambda text: text.startswith(f"trapped towards {spoke2.nbma} "))
    routed = first_event(s1_events, "route-added", lambda text: text.endswith(f" via {spoke2.tunnel_ip}"))
    sa_up = first_event(s1_events, "sa-up", lambda text: text.startswith(f"{spoke2.nbma} "))
    assert trapped < routed < sa_up, s1_events[-25:]
    # ... and charon made one CHILD_SA with spoke2 (an inbound and an outbound state), not a second one from
    # the trap's acquire, which the kernel sends while the IKE_SA started with the trap is still connecting
    time.sleep(2.0)
    states = spoke1.ns.run("ip", "-o", "xfrm", "state", "list", "proto", "esp")
    with_spoke2 = [line for line in states.splitlines() if str(spoke2.nbma) in line]
    assert len(with_spoke2) == 2, states

    capture.terminate()
    out, _ = capture.communicate(timeout=30)
    clear_gre = [line for line in out.splitlines() if "GRE" in line and "ESP" not in line]
    esp = [line for line in out.splitlines() if "ESP" in line]
    assert esp and not clear_gre, f"GRE must only cross the underlay inside ESP; clear: {clear_gre[:3]}"

    # 2. kill -9 the spoke's agent and restart it: the established path keeps working, no loss
    pinger = subprocess.Popen(
        spoke1.pod.argv("ping", "-n", "-q", "-i", "0.05", "-c", "120", "-W", "2", str(spoke2.pod_ip)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    time.sleep(0.5)
    agents.agents["spoke1"].kill()
    agents.start_agent(spoke1)
    out, _ = pinger.communicate(timeout=60)
    summary = next(line for line in out.splitlines() if "packets transmitted" in line)
    sent, received = (int(part.split()[0]) for part in summary.split(",")[:2])
    assert received == sent, f"restart lost {sent - received} pings: {summary}"
    counters = agents.agents["spoke1"].request("show counters")
    assert counters["agent"]["adopted_entries"] >= 1
    print(f"\n[lab] spoke1 after restart:\n{agents.agents['spoke1'].request('show dmvpn')}")


def first_event(events: list[tuple[str, str]], kind: str, matches: Callable[[str], bool]) -> int:
    """Index of the first event of ``kind`` whose text ``matches``."""
    found = [index for index, (event_kind, text) in enumerate(events) if event_kind == kind and matches(text)]
    assert found, f"no matching {kind} event: {events[-25:]}"
    return found[0]
