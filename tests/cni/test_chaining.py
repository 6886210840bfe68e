"""The shipped conflist: dmvpn first, then portmap and bandwidth fed our result as prevResult."""

from __future__ import annotations

import copy
import json
from typing import Any

from cnitest import CNI_DIR, REFERENCE_PLUGINS, Node, in_netns

CONFLIST = CNI_DIR / "10-dmvpn.conflist"
# Older portmap (Debian's 1.1.1) fails CHECK of IPv4-only pods looking for IPv6 rules it never made.
PORTMAP_IPV6_CHECK_BUG = "could not check ipv6 dnat"
RUNTIME_CONFIG = {
    "portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}],
    "bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 80_000, "egressRate": 8_000_000, "egressBurst": 80_000},
}


def plugin_configs(node: Node, cni_version: str | None = None) -> list[dict[str, Any]]:
    """What a runtime derives from the conflist: name/cniVersion copied in, capabilities resolved."""
    conflist = json.loads(CONFLIST.read_text())
    version = cni_version or conflist["cniVersion"]
    configs = []
    for plugin in conflist["plugins"]:
        conf = copy.deepcopy(plugin)
        conf["cniVersion"] = version
        conf["name"] = node.network
        if conf["type"] == "dmvpn":
            conf.update({key: value for key, value in node.conf().items() if key not in ("cniVersion", "name")})
        capabilities = conf.pop("capabilities", {})
        runtime = {key: value for key, value in RUNTIME_CONFIG.items() if capabilities.get(key)}
        if runtime:
            conf["runtimeConfig"] = runtime
        configs.append(conf)
    return configs


def run_chain(node: Node, command: str, pod: str, configs: list[dict[str, Any]], result: Any = None) -> Any:
    ordered = list(reversed(configs)) if command == "DEL" else configs
    for plugin_conf in ordered:
        conf = plugin_conf if result is None else {**plugin_conf, "prevResult": result}
        plugin = CNI_DIR / "dmvpn" if conf["type"] == "dmvpn" else REFERENCE_PLUGINS / conf["type"]
        done = node.run(command, conf, pod=pod, plugin=plugin)
        if command == "CHECK" and conf["type"] == "portmap" and PORTMAP_IPV6_CHECK_BUG in done.stdout:
            continue  # containernetworking/plugins#819, in Debian's portmap 1.1.1: not ours to judge
        assert done.returncode == 0, f"{conf['type']} {command}: {done.stdout} {done.stderr}"
        if command == "ADD":
            result = done.json
    return result


def test_the_shipped_conflist_runs_dmvpn_then_portmap_and_bandwidth(node: Node) -> None:
    pod = node.pod()
    configs = plugin_configs(node)
    assert [conf["type"] for conf in configs] == ["dmvpn", "portmap", "bandwidth"]

    result = run_chain(node, "ADD", pod, configs)
    assert result["cniVersion"] == configs[0]["cniVersion"]
    address = result["ips"][0]["address"].split("/")[0]
    nat = in_netns(node.netns, "iptables", "-t", "nat", "-S").stdout
    assert "--dport 18080" in nat and f"{address}:80" in nat
    host_veth = next(entry["name"] for entry in result["interfaces"] if entry["name"].startswith("veth"))
    qdiscs = in_netns(node.netns, "tc", "qdisc", "show", "dev", host_veth).stdout
    assert "tbf" in qdiscs

    run_chain(node, "CHECK", pod, configs, result)
    run_chain(node, "DEL", pod, configs, result)

    nat = in_netns(node.netns, "iptables", "-t", "nat", "-S").stdout
    assert "--dport 18080" not in nat
    assert node.host_veths() == [] and node.allocations() == [] and node.records() == []
    links = in_netns(node.netns, "ip", "-br", "link").stdout
    assert "bwp" not in links  # bandwidth's ifb device for egress shaping is gone


def test_the_chain_works_in_every_version_portmap_and_bandwidth_speak(node: Node) -> None:
    for cni_version in ("0.3.1", "0.4.0", "1.0.0"):
        pod = node.pod()
        configs = plugin_configs(node, cni_version)
        result = run_chain(node, "ADD", pod, configs)
        assert result["cniVersion"] == cni_version
        if cni_version != "0.3.1":
            run_chain(node, "CHECK", pod, configs, result)
        run_chain(node, "DEL", pod, configs, result)
    assert node.allocations() == []
