"""ADD and DEL through the real bridge and host-local plugins, as a runtime drives them."""

from __future__ import annotations

import ipaddress
import json

from cnitest import Node, address_of, in_netns, ip_json, netns_del


def test_add_gives_the_pod_an_address_in_the_pod_cidr_with_the_node_mtu_and_a_default_route(
    node: Node,
) -> None:
    pod = node.pod()
    result = node.add(pod)

    address = ipaddress.ip_interface(result["ips"][0]["address"])
    assert address.ip in ipaddress.ip_network(node.subnet)
    assert result["ips"][0]["gateway"] == str(next(ipaddress.ip_network(node.subnet).hosts()))
    assert result["routes"] == [{"dst": "0.0.0.0/0"}]
    sandbox = [entry for entry in result["interfaces"] if entry.get("sandbox")]
    assert sandbox == [{"name": "eth0", "mac": sandbox[0]["mac"], "sandbox": f"/run/netns/{pod}", "mtu": 1362}]
    (link,) = ip_json(pod, "addr", "show", "dev", "eth0")
    assert link["mtu"] == 1362
    assert f"{address.ip}/{address.network.prefixlen}" in [
        f"{info['local']}/{info['prefixlen']}" for info in link["addr_info"]
    ]
    routes = ip_json(pod, "route", "show")
    assert {"dst": "default", "gateway": result["ips"][0]["gateway"]}.items() <= routes[0].items()
    (bridge,) = ip_json(node.netns, "addr", "show", "dev", node.bridge)
    assert bridge["mtu"] == 1362
    assert node.records() == [f"{pod}@eth0.json"]
    assert node.allocations() == [str(address.ip)]


def test_two_pods_on_one_node_reach_each_other_through_the_bridge(node: Node) -> None:
    first, second = node.pod(), node.pod()
    first_address = address_of(node.add(first))
    second_address = address_of(node.add(second))
    assert first_address != second_address

    for pod, peer in ((first, second_address), (second, first_address)):
        done = in_netns(pod, "ping", "-c", "2", "-W", "2", "-i", "0.2", peer, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
    # And at the advertised MTU without fragmentation (1362 - 20 IPv4 - 8 ICMP).
    done = in_netns(first, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1334", second_address, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_stored_record_holds_the_delegate_config_and_is_private(node: Node) -> None:
    pod = node.pod()
    node.add(pod)
    record_path = node.data_dir / node.network / f"{pod}@eth0.json"
    record = json.loads(record_path.read_text())
    assert record["containerID"] == pod and record["ifname"] == "eth0"
    assert record["delegate"]["type"] == "bridge"
    assert record["delegate"]["bridge"] == node.bridge
    assert record["delegate"]["isGateway"] is True and record["delegate"]["ipMasq"] is False
    assert record["delegate"]["hairpinMode"] is True
    assert record["delegate"]["ipam"]["ranges"] == [[{"subnet": node.subnet}]]
    assert record_path.stat().st_mode & 0o777 == 0o600
    assert [name for name in record_path.parent.iterdir() if name.suffix == ".tmp"] == []


def test_del_removes_everything_and_repeated_del_succeeds(node: Node) -> None:
    pod = node.pod()
    node.add(pod)
    for _ in range(3):
        node.delete(pod)
    assert node.records() == []
    assert node.allocations() == []
    assert node.host_veths() == []
    assert ip_json(pod, "link", "show", "dev", "lo") and "eth0" not in [
        link["ifname"] for link in ip_json(pod, "link", "show")
    ]


def test_del_after_the_netns_vanished_releases_the_address(node: Node) -> None:
    pod = node.pod()
    node.add(pod)
    netns_del(pod)  # the sandbox is gone; the veth died with it

    node.delete(pod)
    node.delete(pod, drop=("CNI_NETNS",))  # spec 1.1: DEL may come without a netns at all
    assert node.allocations() == []
    assert node.records() == []
    # The kernel destroys the vanished netns (and the host end of its veth) asynchronously.
    assert node.host_veths_once_settled() == []


def test_del_works_without_the_agent_and_its_node_state(node: Node) -> None:
    pod = node.pod()
    node.add(pod)
    node.state_file.unlink()

    node.delete(pod)
    assert node.allocations() == []
    assert node.host_veths() == []


def test_del_without_a_record_still_releases_ipam_from_the_node_state(node: Node) -> None:
    pod = node.pod()
    node.add(pod)
    (node.data_dir / node.network / f"{pod}@eth0.json").unlink()

    node.delete(pod)
    assert node.allocations() == []
    assert node.host_veths() == []


def test_del_without_record_or_node_state_learns_the_ipam_config_from_another_record(node: Node) -> None:
    lost, other = node.pod(), node.pod()
    node.add(lost)
    node.add(other)
    (node.data_dir / node.network / f"{lost}@eth0.json").unlink()
    node.state_file.unlink()

    node.delete(lost)
    assert len(node.allocations()) == 1
    assert node.records() == [f"{other}@eth0.json"]


def test_del_of_something_never_added_succeeds_even_with_nothing_to_go_on(node: Node) -> None:
    node.state_file.unlink()
    done = node.run("DEL", container_id="never-added")
    assert done.returncode == 0, done.stdout
    assert done.stdout == ""
    assert "nothing to release" in done.stderr


def test_a_corrupt_record_does_not_block_del(node: Node) -> None:
    pod = node.pod()
    node.add(pod)
    (node.data_dir / node.network / f"{pod}@eth0.json").write_text("{not json")

    node.delete(pod)
    assert node.allocations() == []
    assert node.records() == []


def test_second_interface_of_the_same_pod_is_an_independent_attachment(node: Node) -> None:
    pod = node.pod()
    first = node.add(pod, ifname="eth0")
    second = node.add(pod, ifname="net1")
    assert address_of(first) != address_of(second)
    assert node.records() == [f"{pod}@eth0.json", f"{pod}@net1.json"]

    node.delete(pod, ifname="net1")
    assert node.records() == [f"{pod}@eth0.json"]
    assert node.allocations() == [address_of(first)]


def test_dual_stack_node_gets_one_address_per_family_and_both_default_routes(node: Node) -> None:
    node.write_state(podCIDRs=[node.subnet, "fd00:10:244:1::/64"])
    pod = node.pod()
    result = node.add(pod)

    families = sorted(ipaddress.ip_interface(ip["address"]).version for ip in result["ips"])
    assert families == [4, 6]
    assert sorted(route["dst"] for route in result["routes"]) == ["0.0.0.0/0", "::/0"]
    node.delete(pod)
    assert node.allocations() == []


def test_custom_routes_replace_the_default_route(node: Node) -> None:
    pod = node.pod()
    result = node.add(pod, node.conf(routes=[{"dst": "10.244.0.0/16"}]))
    assert result["routes"] == [{"dst": "10.244.0.0/16"}]
    destinations = [route["dst"] for route in ip_json(pod, "route", "show")]
    assert "10.244.0.0/16" in destinations and "default" not in destinations
