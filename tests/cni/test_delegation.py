"""What dmvpn hands on to its delegates: per-call arguments, and 1.1 commands to a bridge that knows them."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from cnitest import REFERENCE_PLUGINS, Node, in_netns

RECORDING_PLUGIN = """#!/bin/sh
# A stand-in delegate that speaks CNI 1.1.0: it records what it was asked and succeeds.
cat > "$DELEGATE_LOG/$CNI_COMMAND.json"
if [ "$CNI_COMMAND" = VERSION ]; then
  echo '{"cniVersion":"1.1.0","supportedVersions":["0.3.1","0.4.0","1.0.0","1.1.0"]}'
fi
"""


def recording_bin(node: Node, fake: str = "bridge") -> tuple[Path, Path]:
    """A CNI bin dir where ``fake`` is the recording 1.1.0 stand-in and the other is the real one."""
    bin_dir, log_dir = node.workdir / "fakebin", node.workdir / "delegate-log"
    bin_dir.mkdir()
    log_dir.mkdir()
    for name in ("bridge", "host-local"):
        if name == fake:
            (bin_dir / name).write_text(RECORDING_PLUGIN)
            (bin_dir / name).chmod(0o755)
        else:
            (bin_dir / name).symlink_to(REFERENCE_PLUGINS / name)
    return bin_dir, log_dir


def test_cni_args_reach_host_local(node: Node) -> None:
    wanted = str(list(ipaddress.ip_network(node.subnet).hosts())[49])
    args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;IP={wanted}"
    result = node.add(node.pod(), env={"CNI_ARGS": args})
    assert result["ips"][0]["address"].split("/")[0] == wanted


def test_runtime_config_reaches_host_local(node: Node) -> None:
    wanted = f"{list(ipaddress.ip_network(node.subnet).hosts())[59]}/24"
    conf = node.conf(runtimeConfig={"ips": [wanted]})
    result = node.add(node.pod(), conf)
    assert result["ips"][0]["address"] == wanted
    # Per-call fields are not part of the record: DEL must not depend on them.
    (record,) = (node.data_dir / node.network).iterdir()
    assert "runtimeConfig" not in json.loads(record.read_text())["delegate"]


def test_gc_is_forwarded_to_a_bridge_that_speaks_1_1_0(node: Node) -> None:
    bin_dir, log_dir = recording_bin(node)
    body = node.conf(gcGraceSeconds=0)
    body["cni.dev/valid-attachments"] = [{"containerID": "c1", "ifname": "eth0"}]
    done = node.run("GC", body, env={"CNI_PATH": str(bin_dir), "DELEGATE_LOG": str(log_dir)})

    assert done.returncode == 0, done.stdout + done.stderr
    forwarded = json.loads((log_dir / "GC.json").read_text())
    assert forwarded["cniVersion"] == "1.1.0"
    assert forwarded["cni.dev/valid-attachments"] == [{"containerID": "c1", "ifname": "eth0"}]
    assert forwarded["ipam"]["ranges"] == [[{"subnet": node.subnet}]]


def test_gc_goes_to_host_local_when_only_it_speaks_1_1_0(node: Node) -> None:
    bin_dir, log_dir = recording_bin(node, fake="host-local")
    body = node.conf(gcGraceSeconds=0)
    body["cni.dev/valid-attachments"] = []
    done = node.run("GC", body, env={"CNI_PATH": str(bin_dir), "DELEGATE_LOG": str(log_dir)})

    assert done.returncode == 0, done.stdout + done.stderr
    forwarded = json.loads((log_dir / "GC.json").read_text())
    assert forwarded == {
        "name": node.network,
        "ipam": forwarded["ipam"],
        "cniVersion": "1.1.0",
        "cni.dev/valid-attachments": [],
    }
    assert forwarded["ipam"]["type"] == "host-local"


def test_status_is_forwarded_to_a_bridge_that_speaks_1_1_0(node: Node) -> None:
    bin_dir, log_dir = recording_bin(node)
    done = node.run("STATUS", env={"CNI_PATH": str(bin_dir), "DELEGATE_LOG": str(log_dir)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((log_dir / "STATUS.json").read_text())["type"] == "bridge"


def test_status_and_gc_are_not_sent_to_a_bridge_that_predates_them(node: Node) -> None:
    # Debian's bridge answers GC/STATUS with "unknown CNI_COMMAND"; we must not ask it.
    assert node.run("STATUS").returncode == 0
    body = node.conf()
    body["cni.dev/valid-attachments"] = []
    assert node.run("GC", body).returncode == 0


@pytest.mark.parametrize(("conf", "expected"), [({}, "1"), ({"hairpinMode": False}, "0")])
def test_hairpin_mode_is_on_by_default_and_can_be_turned_off(node: Node, conf: dict[str, bool], expected: str) -> None:
    pod = node.pod()
    result = node.add(pod, node.conf(**conf))
    host_veth = result["interfaces"][1]["name"]
    flags = in_netns(node.netns, "cat", f"/sys/class/net/{host_veth}/brport/hairpin_mode").stdout
    assert flags.strip() == expected
