"""A failed ADD leaves nothing behind: no record, no IPAM allocation, no veth on either side."""

from __future__ import annotations

import json

from cnitest import Node, in_netns, ip_json


def assert_nothing_left(node: Node, pod: str) -> None:
    assert node.records() == []
    assert node.allocations() == []
    assert node.host_veths() == []
    assert [link["ifname"] for link in ip_json(pod, "link", "show")] == ["lo"]


def test_delegate_failure_after_ipam_and_veth_is_rolled_back(node: Node) -> None:
    # bridge has allocated an address and made the veth pair before this unreachable route fails
    # it; on its own it would leave the veth behind. Our rollback DEL removes it.
    pod = node.pod()
    conf = node.conf(routes=[{"dst": "192.0.2.0/24", "gw": "203.0.113.1"}])
    done = node.run("ADD", conf, pod=pod)

    assert done.returncode != 0
    assert "network is unreachable" in done.json["msg"]
    assert_nothing_left(node, pod)


def test_delegate_failure_before_anything_was_built_leaves_nothing(node: Node) -> None:
    pod = node.pod()
    in_netns(pod, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "squatter")
    done = node.run("ADD", pod=pod)

    assert done.returncode != 0
    assert "already exists" in done.json["msg"]
    assert node.records() == [] and node.allocations() == [] and node.host_veths() == []
    # Like the DEL a runtime sends after any failed ADD, the rollback removes CNI_IFNAME from the
    # pod whoever made it: asking for an interface name that is taken is the runtime's error.


def test_a_failed_add_does_not_disturb_other_pods(node: Node) -> None:
    good, bad = node.pod(), node.pod()
    kept = node.add(good)
    done = node.run("ADD", node.conf(routes=[{"dst": "192.0.2.0/24", "gw": "203.0.113.1"}]), pod=bad)
    assert done.returncode != 0

    assert node.records() == [f"{good}@eth0.json"]
    assert node.allocations() == [kept["ips"][0]["address"].split("/")[0]]
    assert len(node.host_veths()) == 1


def test_a_delegate_printing_garbage_is_rolled_back(node: Node) -> None:
    # A bridge stand-in that really adds through the real bridge but then prints garbage.
    fake_dir = node.workdir / "fakebin"
    fake_dir.mkdir()
    fake = fake_dir / "bridge"
    fake.write_text('#!/bin/sh\n/usr/lib/cni/bridge >/dev/null\necho "this is not JSON"\n')
    fake.chmod(0o755)
    (fake_dir / "host-local").symlink_to("/usr/lib/cni/host-local")
    pod = node.pod()
    env = {"CNI_PATH": f"{fake_dir}:/usr/lib/cni"}
    done = node.run("ADD", pod=pod, env=env)

    assert done.returncode != 0
    assert "not JSON" in done.json["msg"]
    assert_nothing_left(node, pod)
    assert json.loads(done.stdout)["code"] == 999
