"""Every error code the plugin reports, in the spec's JSON shape, with a message a person can act on."""

from __future__ import annotations

import json

import pytest
from cnitest import Node, in_netns

INCOMPATIBLE_VERSION = 1
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
NOT_AVAILABLE_LIMITED = 51


def test_unsupported_cni_version_is_code_1_naming_the_supported_ones(node: Node) -> None:
    done = node.run("ADD", node.conf(cni_version="0.2.0"), pod=node.pod())
    assert done.error_code == INCOMPATIBLE_VERSION
    assert "0.3.1, 0.4.0, 1.0.0, 1.1.0" in done.json["details"]
    assert node.records() == []


@pytest.mark.parametrize(("command", "minimum"), [("CHECK", "0.4.0"), ("STATUS", "1.1.0"), ("GC", "1.1.0")])
def test_commands_newer_than_the_config_version_are_code_1(node: Node, command: str, minimum: str) -> None:
    pod = node.pod()
    conf = node.conf(cni_version="0.3.1", prevResult={"cniVersion": "0.3.1"})
    conf["cni.dev/valid-attachments"] = []
    done = node.run(command, conf, pod=pod)
    assert done.error_code == INCOMPATIBLE_VERSION
    assert minimum in done.json["details"]
    assert done.json["cniVersion"] == "0.3.1"


@pytest.mark.parametrize(
    ("drop", "env", "variable"),
    [
        (("CNI_COMMAND",), {}, "CNI_COMMAND"),
        ((), {"CNI_COMMAND": "FROB"}, "CNI_COMMAND"),
        (("CNI_CONTAINERID",), {}, "CNI_CONTAINERID"),
        ((), {"CNI_CONTAINERID": "-starts-with-dash"}, "CNI_CONTAINERID"),
        ((), {"CNI_CONTAINERID": "has/slash"}, "CNI_CONTAINERID"),
        (("CNI_IFNAME",), {}, "CNI_IFNAME"),
        ((), {"CNI_IFNAME": "a-name-longer-than-15"}, "CNI_IFNAME"),
        ((), {"CNI_IFNAME": "eth:0"}, "CNI_IFNAME"),
        (("CNI_NETNS",), {}, "CNI_NETNS"),
        (("CNI_PATH",), {}, "CNI_PATH"),
        ((), {"CNI_PATH": "/nonexistent"}, "CNI_PATH"),
    ],
)
def test_missing_or_invalid_environment_is_code_4_naming_the_variable(
    node: Node, drop: tuple[str, ...], env: dict[str, str], variable: str
) -> None:
    done = node.run("ADD", pod=node.pod(), drop=drop, env=env)
    assert done.error_code == INVALID_ENVIRONMENT
    assert variable in done.json["msg"]
    assert node.records() == []
    assert node.allocations() == []


def test_missing_delegate_plugin_names_where_it_looked(node: Node) -> None:
    done = node.run("ADD", pod=node.pod(), env={"CNI_PATH": "/nonexistent"})
    assert "host-local" in done.json["msg"] or "bridge" in done.json["msg"]
    assert "/nonexistent" in done.json["details"]
    assert "containernetworking-plugins" in done.json["details"]


@pytest.mark.parametrize("stdin", [b"", b"{", b"not json", b'{"a": NaN}', b"\xff\xfe"])
def test_undecodable_config_is_code_6(node: Node, stdin: bytes) -> None:
    done = node.run("ADD", pod=node.pod(), stdin=stdin)
    assert done.error_code == DECODE_FAILURE
    assert "network configuration" in done.json["msg"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"cniVersion": None}, "cniVersion"),
        ({"name": None}, "name"),
        ({"name": "bad name"}, "name"),
        ({"bridge": "a-bridge-name-too-long"}, "bridge"),
        ({"bridge": 7}, "bridge"),
        ({"nodeStateFile": "relative/path"}, "nodeStateFile"),
        ({"dataDir": ""}, "dataDir"),
        ({"hairpinMode": "yes"}, "hairpinMode"),
        ({"routes": [{"gw": "10.0.0.1"}]}, "routes"),
        ({"routes": [{"dst": "nonsense"}]}, "nonsense"),
        ({"runtimeConfig": []}, "runtimeConfig"),
        ({"gcGraceSeconds": -1}, "gcGraceSeconds"),
    ],
)
def test_invalid_network_config_is_code_7_naming_the_field(node: Node, change: dict[str, object], field: str) -> None:
    conf = node.conf()
    for key, value in change.items():
        if value is None:
            del conf[key]
        else:
            conf[key] = value
    done = node.run("ADD", conf, pod=node.pod())
    assert done.error_code == INVALID_CONFIG
    assert field in done.json["msg"]
    assert node.records() == []


def test_non_object_config_is_code_7(node: Node) -> None:
    done = node.run("ADD", pod=node.pod(), stdin=b"[1, 2]")
    assert done.error_code == INVALID_CONFIG


def test_add_before_the_agent_published_node_state_is_code_11(node: Node) -> None:
    node.state_file.unlink()
    done = node.run("ADD", pod=node.pod())
    assert done.error_code == TRY_AGAIN_LATER
    assert str(node.state_file) in done.json["details"]
    assert node.records() == [] and node.allocations() == []


@pytest.mark.parametrize(
    "state",
    [
        "{truncated",
        json.dumps({"version": 2, "podCIDRs": ["10.244.1.0/24"], "mtu": 1400}),
        json.dumps({"version": 1, "podCIDRs": [], "mtu": 1400}),
        json.dumps({"version": 1, "podCIDRs": ["10.244.1.0/33"], "mtu": 1400}),
        json.dumps({"version": 1, "podCIDRs": ["10.244.1.0/24"], "mtu": 100}),
        json.dumps({"version": 1, "podCIDRs": ["fd00::/64"], "mtu": 1200}),
    ],
)
def test_add_with_unusable_node_state_is_code_11_explaining_why(node: Node, state: str) -> None:
    node.state_file.write_text(state)
    done = node.run("ADD", pod=node.pod())
    assert done.error_code == TRY_AGAIN_LATER
    assert "unusable" in done.json["details"]


def test_status_is_ok_once_the_agent_published_node_state(node: Node) -> None:
    done = node.run("STATUS")
    assert (done.returncode, done.stdout) == (0, "")


def test_status_is_50_while_the_agent_has_not_published_node_state(node: Node) -> None:
    node.state_file.unlink()
    done = node.run("STATUS")
    assert done.error_code == NOT_AVAILABLE
    assert "has not published" in done.json["details"]


def test_status_is_51_when_the_node_state_is_unusable(node: Node) -> None:
    node.state_file.write_text('{"version": 1, "podCIDRs": []}')
    done = node.run("STATUS")
    assert done.error_code == NOT_AVAILABLE_LIMITED
    assert "podCIDRs is empty" in done.json["details"]


def test_status_is_50_when_the_delegate_plugins_are_missing(node: Node) -> None:
    done = node.run("STATUS", env={"CNI_PATH": "/nonexistent"})
    assert done.error_code == NOT_AVAILABLE


def test_delegate_errors_are_passed_through_with_their_code(node: Node) -> None:
    # A non-bridge device squatting the bridge name: bridge refuses with its own code (999).
    in_netns(node.netns, "ip", "link", "add", node.bridge, "type", "veth", "peer", "name", f"{node.tag}p")
    done = node.run("ADD", pod=node.pod())
    assert done.error_code == 999
    assert done.json["msg"].startswith("bridge ADD failed:")
    assert "is not a bridge" in done.json["msg"]
    assert node.records() == [] and node.allocations() == []


def test_unwritable_data_dir_is_code_5_and_nothing_is_built(node: Node) -> None:
    blocker = node.workdir / "blocker"
    blocker.write_text("a file where a directory should be")
    pod = node.pod()
    done = node.run("ADD", node.conf(dataDir=str(blocker)), pod=pod)
    assert done.error_code == IO_FAILURE
    assert "dataDir" in done.json["details"]
    assert node.allocations() == []
    assert node.host_veths() == []


def test_errors_use_the_config_version_when_it_is_supported(node: Node) -> None:
    node.state_file.unlink()
    done = node.run("ADD", node.conf(cni_version="0.4.0"), pod=node.pod())
    assert done.json["cniVersion"] == "0.4.0"


def test_a_netns_that_does_not_exist_fails_add_cleanly(node: Node) -> None:
    pod = f"{node.tag}-missing"
    done = node.run("ADD", pod=pod)
    assert done.returncode != 0
    assert done.json["msg"].startswith("bridge ADD failed:")
    assert node.records() == [] and node.allocations() == [] and node.host_veths() == []
