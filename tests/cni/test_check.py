"""CHECK: the delegate's CHECK plus our own look at the pod interface against prevResult."""

from __future__ import annotations

from typing import Any

import pytest
from cnitest import Node, in_netns

CHECK_MISMATCH = 101
NO_ATTACHMENT_RECORD = 100
INVALID_CONFIG = 7


def added(node: Node, cni_version: str = "1.1.0") -> tuple[str, dict[str, Any]]:
    pod = node.pod()
    conf = node.conf(cni_version=cni_version)
    return pod, node.add(pod, conf)


def check(node: Node, pod: str, result: dict[str, Any], cni_version: str = "1.1.0") -> Any:
    return node.run("CHECK", node.conf(cni_version=cni_version, prevResult=result), pod=pod)


def test_check_passes_on_an_intact_attachment(node: Node) -> None:
    pod, result = added(node)
    done = check(node, pod, result)
    assert (done.returncode, done.stdout) == (0, ""), done.stdout + done.stderr


def test_check_catches_a_deleted_address(node: Node) -> None:
    pod, result = added(node)
    in_netns(pod, "ip", "addr", "del", result["ips"][0]["address"], "dev", "eth0")
    done = check(node, pod, result)
    assert done.error_code == CHECK_MISMATCH
    assert f"lacks address {result['ips'][0]['address']}" in done.json["msg"]


def test_check_catches_a_changed_mtu(node: Node) -> None:
    pod, result = added(node)
    in_netns(pod, "ip", "link", "set", "eth0", "mtu", "1400")
    done = check(node, pod, result)
    assert done.error_code == CHECK_MISMATCH
    assert "MTU 1400, expected 1362" in done.json["msg"]


def test_check_catches_a_missing_default_route(node: Node) -> None:
    pod, result = added(node)
    in_netns(pod, "ip", "route", "del", "default")
    done = check(node, pod, result)
    assert done.error_code == CHECK_MISMATCH
    assert "route to 0.0.0.0/0" in done.json["msg"]


def test_check_catches_a_missing_interface(node: Node) -> None:
    pod, result = added(node)
    in_netns(pod, "ip", "link", "del", "eth0")
    done = check(node, pod, result)
    assert done.error_code == CHECK_MISMATCH
    assert "eth0" in done.json["msg"]


def test_check_reports_the_delegates_findings_too(node: Node) -> None:
    # Our own look passes (address, MTU, routes are right) but the host side is gone: bridge sees it.
    pod, result = added(node)
    host_veth = result["interfaces"][1]["name"]
    in_netns(node.netns, "ip", "link", "set", host_veth, "nomaster")
    done = check(node, pod, result)
    assert done.returncode != 0
    assert done.json["msg"].startswith("bridge CHECK failed:")


def test_check_needs_prev_result(node: Node) -> None:
    pod, _ = added(node)
    done = node.run("CHECK", node.conf(), pod=pod)
    assert done.error_code == INVALID_CONFIG
    assert "prevResult" in done.json["msg"]


def test_check_of_an_unknown_attachment_is_code_100(node: Node) -> None:
    pod = node.pod()
    done = check(node, pod, {"cniVersion": "1.1.0", "interfaces": [], "ips": []})
    assert done.error_code == NO_ATTACHMENT_RECORD
    assert pod in done.json["msg"]


@pytest.mark.parametrize("cni_version", ["0.4.0", "1.0.0", "1.1.0"])
def test_check_works_in_every_version_that_has_it(node: Node, cni_version: str) -> None:
    pod, result = added(node, cni_version)
    done = check(node, pod, result, cni_version)
    assert done.returncode == 0, done.stdout + done.stderr
