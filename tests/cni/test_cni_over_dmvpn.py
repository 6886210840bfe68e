"""Pods made by the dmvpn CNI plugin on two DMVPN spokes reach each other across the overlay.

Hub + 2 spokes, each run by a real charon and a real ``dmvpn-agent --standalone`` (IPsec required, 10 ms
one-way underlay delay). The agent publishes the node-state file; the plugin runs exactly as a container
runtime runs it (``CNI_*`` environment, config on stdin, the reference ``bridge`` + ``host-local`` on
``CNI_PATH``) inside the spoke's namespace, so the bridge and the gateway address live there, with a fresh
namespace as the pod. Full-size packets (the advertised MTU) cross GRE+ESP via the hub and then directly,
with no fragmentation anywhere.
"""

from __future__ import annotations

import ipaddress
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cnitest import Node, ip_json, need_host_prerequisites

from dmvpn.lab.agents import AgentLab
from dmvpn.lab.topology import Lab, Netns, Site, hub_and_spokes, ping, tunnel_rx

pytestmark = pytest.mark.kernel

DELAY_MS = 10.0
ICMP_IPV4_OVERHEAD = 28  # 20 B IPv4 header + 8 B ICMP header


def wait_node_state(path: Path, timeout_s: float = 60.0) -> dict[str, Any]:
    """The agent writes the file right after it has started; wait (bounded) until it is there."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            state: dict[str, Any] = json.loads(path.read_text())
            return state
        time.sleep(0.2)
    raise AssertionError(f"the agent published no node state at {path} within {timeout_s} s")


def cni_node(lab: Lab, site: Site) -> Node:
    """The spoke as a CNI node: its namespace, the agent's node-state file, plugin dirs in its rundir."""
    return Node(
        netns=site.ns.name,
        workdir=lab.site_rundir(site),
        subnet=str(site.lan),
        bridge="dmvpn-br0",
        network="dmvpn",
        tag=site.name,
    )


def fragmentation_counters(ns: Netns) -> dict[str, int]:
    """IPv4 fragments made and reassemblies asked for in one namespace (/proc/net/snmp is per netns)."""
    lines = [line.split() for line in ns.run("cat", "/proc/net/snmp").splitlines() if line.startswith("Ip:")]
    header, values = lines[0][1:], lines[1][1:]
    counters = dict(zip(header, (int(value) for value in values), strict=True))
    return {name: counters[name] for name in ("FragCreates", "FragFails", "ReasmReqds")}


def test_cni_pods_on_two_spokes_reach_each_other_at_full_mtu_via_hub_then_direct(lab: Lab) -> None:
    need_host_prerequisites()
    hub, spoke1, spoke2 = hub_and_spokes(lab, spokes=2, delay_ms=DELAY_MS, with_pods=False)
    agents = AgentLab(lab, [hub, spoke1, spoke2], ipsec=True)
    agents.start_all()
    agents.wait_registered()

    # 1. ADD, as a runtime does it, on each spoke: the pod gets the site's prefix and the advertised MTU
    nodes = {site.name: cni_node(lab, site) for site in (spoke1, spoke2)}
    pods: dict[str, Netns] = {}
    addresses: dict[str, str] = {}
    mtus = set()
    for site in (spoke1, spoke2):
        node = nodes[site.name]
        state = wait_node_state(node.state_file)
        assert state["podCIDRs"] == [str(site.lan)], state
        mtus.add(int(state["mtu"]))
        tunnel_mtu = ip_json(site.ns.name, "link", "show", "dev", "dmvpn0")[0]["mtu"]
        assert state["mtu"] == tunnel_mtu, f"advertised MTU {state['mtu']} != tunnel MTU {tunnel_mtu}"
        pods[site.name] = lab.netns(f"cpod-{site.name}")
        result = node.add(pods[site.name].name, node.conf(cni_version="1.1.0"))
        address = ipaddress.ip_interface(result["ips"][0]["address"])
        assert address.ip in site.lan, result
        assert result["ips"][0]["gateway"] == str(site.lan_gw), result
        (link,) = ip_json(pods[site.name].name, "link", "show", "dev", "eth0")
        assert link["mtu"] == state["mtu"], link
        addresses[site.name] = str(address.ip)
    (mtu,) = mtus
    full_size = mtu - ICMP_IPV4_OVERHEAD
    pod1, dst = pods["spoke1"], addresses["spoke2"]
    print(f"\n[cni] pods {addresses}, advertised MTU {mtu}, ping payload {full_size}")

    fragments_before = {site.name: fragmentation_counters(site.ns) for site in (hub, spoke1, spoke2)}

    # 2. full-size packets, first via the hub (its GRE counter moves) while the shortcut forms, nothing lost
    before = tunnel_rx(hub)
    sent, received = ping(pod1, dst, count=40, interval=0.05, size=full_size)
    via_hub = tunnel_rx(hub) - before
    assert received == sent, f"lost {sent - received} of {sent} full-size pings via the hub / while switching"
    assert via_hub > 0, "the first packets must go via the hub"
    shortcut = agents.wait_shortcut("spoke1")
    assert shortcut["tunnel"] == str(spoke2.tunnel_ip) and shortcut["ipsec"] == "up", shortcut

    # 3. then directly: the hub sees (almost) nothing of 20 full-size pings in each direction
    before = tunnel_rx(hub)
    sent, received = ping(pod1, dst, count=20, interval=0.05, size=full_size)
    sent_back, received_back = ping(pods["spoke2"], addresses["spoke1"], count=20, interval=0.05, size=full_size)
    assert (received, received_back) == (sent, sent_back), "full-size pings lost on the direct path"
    assert tunnel_rx(hub) - before <= 2, "after the shortcut, pod traffic must bypass the hub"

    # 4. no fragment made or reassembled anywhere, and one byte more is refused at the pod (DF, MTU)
    for site in (hub, spoke1, spoke2):
        assert fragmentation_counters(site.ns) == fragments_before[site.name], f"{site.name} fragmented"
    sent, received = ping(pod1, dst, count=1, size=full_size + 1)
    assert (sent, received) == (1, 0), "a packet above the advertised MTU must not pass with DF set"

    # 5. DEL cleans up: no record, no allocation, no host veth, no pod interface; repeated DEL succeeds
    for site in (spoke1, spoke2):
        node, pod = nodes[site.name], pods[site.name]
        for _ in range(2):
            node.delete(pod.name, node.conf(cni_version="1.1.0"))
        assert node.records() == [] and node.allocations() == []
        assert ip_json(site.ns.name, "link", "show", "master", node.bridge) == [], "a pod veth is left on the bridge"
        # (the kernel puts its fallback tunnel devices gre0, gretap0... in every namespace: not ours)
        assert "eth0" not in [link["ifname"] for link in ip_json(pod.name, "link", "show")]
