"""Each supported spec version gets its own result format, and VERSION says what we speak."""

from __future__ import annotations

import json

import pytest
from cnitest import Node

SUPPORTED = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]


@pytest.mark.parametrize("cni_version", SUPPORTED)
def test_version_reports_every_supported_version(node: Node, cni_version: str) -> None:
    done = node.run("VERSION", stdin=json.dumps({"cniVersion": cni_version}).encode())
    assert done.returncode == 0
    assert done.json == {"cniVersion": cni_version, "supportedVersions": SUPPORTED}


def test_version_without_input_answers_in_the_latest_version(node: Node) -> None:
    done = node.run("VERSION", stdin=b"")
    assert done.json == {"cniVersion": "1.1.0", "supportedVersions": SUPPORTED}


@pytest.mark.parametrize("cni_version", SUPPORTED)
def test_add_result_has_the_format_of_the_requested_version(node: Node, cni_version: str) -> None:
    pod = node.pod()
    result = node.add(pod, node.conf(cni_version=cni_version))

    assert result["cniVersion"] == cni_version
    assert set(result) <= {"cniVersion", "interfaces", "ips", "routes", "dns"}
    (ip,) = result["ips"]
    if cni_version.startswith("0."):
        assert ip["version"] == "4"  # 0.3.x/0.4.0 label each IP with its family
    else:
        assert "version" not in ip  # removed in 1.0.0
    sandbox = result["interfaces"][ip["interface"]]
    assert sandbox["name"] == "eth0" and sandbox["sandbox"] == f"/run/netns/{pod}"
    if cni_version == "1.1.0":
        assert sandbox["mtu"] == 1362  # interface MTU exists from 1.1.0 on
    else:
        assert all("mtu" not in entry for entry in result["interfaces"])

    # The result comes back as prevResult on CHECK (0.4.0+) and DEL: both must accept it.
    if cni_version != "0.3.1":
        done = node.run("CHECK", node.conf(cni_version=cni_version, prevResult=result), pod=pod)
        assert done.returncode == 0, done.stdout + done.stderr
    node.delete(pod, node.conf(cni_version=cni_version, prevResult=result))
    assert node.allocations() == []


def test_a_1_1_0_request_is_served_by_an_older_bridge_through_1_0_0(node: Node) -> None:
    pod = node.pod()
    node.add(pod, node.conf(cni_version="1.1.0"))
    record = json.loads((node.data_dir / node.network / f"{pod}@eth0.json").read_text())
    assert record["cniVersion"] == "1.1.0"
    assert record["delegate"]["cniVersion"] in SUPPORTED
    cache = json.loads((node.data_dir / "delegate-versions.json").read_text())
    assert "/usr/lib/cni/bridge" in cache


def test_the_delegate_version_cache_follows_the_binary(node: Node) -> None:
    cache_file = node.data_dir / "delegate-versions.json"
    node.add(node.pod())
    cache = json.loads(cache_file.read_text())
    cache["/usr/lib/cni/bridge"]["stamp"] = [0, 0, 0]  # as if the binary had been replaced
    cache["/usr/lib/cni/bridge"]["versions"] = ["0.1.0"]
    cache_file.write_text(json.dumps(cache))

    node.add(node.pod())
    assert json.loads(cache_file.read_text())["/usr/lib/cni/bridge"]["versions"] != ["0.1.0"]
