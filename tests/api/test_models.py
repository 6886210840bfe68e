"""Parsing DMVPNHub/DMVPNSpoke: documented defaults, and one readable message per mistake."""

from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

import pytest

from dmvpn.api import (
    API_VERSION,
    GROUP,
    KIND_HUB,
    KIND_SPOKE,
    PLURALS,
    SPEC_VERSION,
    VERSION,
    DMVPNHub,
    DMVPNSpoke,
    ValidationFailed,
    dump_object,
    parse_object,
)

Problems = Callable[[dict[str, Any]], list[str]]


def test_constants_agree_with_the_models() -> None:
    assert f"{GROUP}/{VERSION}" == API_VERSION == SPEC_VERSION == "dmvpn.io/v1alpha1"
    assert DMVPNHub.model_fields["api_version"].default == API_VERSION
    assert DMVPNHub.model_fields["kind"].default == KIND_HUB
    assert DMVPNSpoke.model_fields["kind"].default == KIND_SPOKE
    assert PLURALS == {"DMVPNHub": "dmvpnhubs", "DMVPNSpoke": "dmvpnspokes"}


def test_hub_defaults(hub: dict[str, Any]) -> None:
    parsed = parse_object(hub)
    assert isinstance(parsed, DMVPNHub)
    spec = parsed.spec
    assert spec.node_name == "hub-1" and spec.node_selector is None
    assert spec.nbma.address is None and spec.nbma.from_node == "InternalIP"
    tunnel = spec.tunnel
    assert tunnel.address == IPv4Interface("10.255.0.1/24")
    assert (tunnel.interface, tunnel.gre_key, tunnel.network_id, tunnel.mtu, tunnel.ttl) == (
        "dmvpn0",
        None,
        1,
        1400,
        64,
    )
    nhrp = spec.nhrp
    assert (nhrp.hold_time, nhrp.phase, nhrp.shortcut_idle_timeout, nhrp.authentication) == (
        7200,
        3,
        300,
        None,
    )
    ipsec = spec.ipsec
    assert ipsec.mode == "required"
    assert ipsec.ike_proposals == ["aes256gcm16-prfsha256-ecp256"]
    assert ipsec.esp_proposals == ["aes256gcm16-ecp256"]
    assert ipsec.psk is not None and ipsec.psk.secret_ref.key == "psk"
    assert ipsec.psk.secret_ref.namespace is None
    assert ipsec.psk.secret_ref.namespace_or("kube-dmvpn") == "kube-dmvpn"
    assert ipsec.x509 is None and (ipsec.dpd_delay, ipsec.rekey_time) == (30, 14400)
    assert spec.site_prefixes is None and spec.summary_prefixes == []
    assert parsed.status.conditions == [] and parsed.status.nodes == {} and parsed.status.registered_spokes == 0


def test_spoke_defaults(spoke: dict[str, Any]) -> None:
    parsed = parse_object(spoke)
    assert isinstance(parsed, DMVPNSpoke)
    assert parsed.spec.tunnel.address is None
    assert parsed.spec.tunnel.interface == "dmvpn0"
    assert parsed.spec.node_selector == {"dmvpn.io/role": "spoke"}
    assert [h.name for h in parsed.spec.hubs] == ["hub-1"] and parsed.spec.hubs[0].is_local
    assert parsed.status.allocations == {}


def test_secret_ref_defaults(hub: dict[str, Any]) -> None:
    hub["spec"]["nhrp"] = {"authentication": {"secretRef": {"name": "nhrp", "namespace": "other"}}}
    hub["spec"]["ipsec"] = {
        "x509": {
            "certificateSecretRef": {"name": "hub-tls"},
            "keySecretRef": {"name": "hub-tls"},
            "caSecretRef": {"name": "dmvpn-ca"},
        }
    }
    spec = parse_object(hub).spec
    assert spec.nhrp.authentication is not None
    assert spec.nhrp.authentication.secret_ref.key == "password"
    assert spec.nhrp.authentication.secret_ref.namespace_or("kube-dmvpn") == "other"
    x509 = spec.ipsec.x509
    assert x509 is not None
    assert (x509.certificate_secret_ref.key, x509.key_secret_ref.key, x509.ca_secret_ref.key) == (
        "tls.crt",
        "tls.key",
        "ca.crt",
    )


def test_federated_spoke(spoke: dict[str, Any]) -> None:
    spoke["spec"] = {
        "nodeName": "edge-2",
        "tunnel": {"address": "10.255.0.12/24", "greKey": 0},
        "ipsec": {"mode": "disabled"},
        "sitePrefixes": ["10.20.0.0/24", "10.21.0.0/24"],
        "hubs": [
            {"name": "hub-1"},
            {"nbma": "203.0.113.10", "tunnelAddress": "10.255.0.2", "summaryPrefixes": ["10.0.0.0/8"]},
        ],
    }
    parsed = parse_object(spoke)
    assert isinstance(parsed, DMVPNSpoke)
    remote = parsed.spec.hubs[1]
    assert not remote.is_local
    assert remote.summary_prefixes == [IPv4Network("10.0.0.0/8")] and parsed.spec.hubs[0].summary_prefixes == []
    assert (remote.nbma, remote.tunnel_address) == (IPv4Address("203.0.113.10"), IPv4Address("10.255.0.2"))
    assert parsed.spec.site_prefixes == [IPv4Network("10.20.0.0/24"), IPv4Network("10.21.0.0/24")]
    assert parsed.spec.tunnel.gre_key == 0


def test_python_names_are_accepted_too(hub: dict[str, Any]) -> None:
    hub["spec"]["tunnel"] = {"address": "10.255.0.1/24", "gre_key": 7}
    parsed = parse_object(hub)
    assert isinstance(parsed, DMVPNHub) and parsed.spec.tunnel.gre_key == 7


def test_objects_are_immutable(hub: dict[str, Any]) -> None:
    parsed = parse_object(hub)
    with pytest.raises(ValueError, match="frozen"):
        parsed.spec.tunnel.mtu = 1500  # type: ignore[misc]


def test_dump_is_the_wire_form(hub: dict[str, Any]) -> None:
    dumped = dump_object(parse_object(hub), include_status=False)
    assert dumped["apiVersion"] == API_VERSION and "status" not in dumped
    assert dumped["spec"]["tunnel"] == {
        "interface": "dmvpn0",
        "networkId": 1,
        "mtu": 1400,
        "ttl": 64,
        "address": "10.255.0.1/24",
    }
    assert "nodeSelector" not in dumped["spec"] and "sitePrefixes" not in dumped["spec"]
    assert parse_object(dumped) == parse_object(hub)


# --- one mistake, one message ----------------------------------------------------------------------


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``spec.tunnel.greKey``-style paths, creating mappings on the way; a value of DELETE removes."""
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    if value is DELETE:
        node.pop(last, None)
    else:
        node[last] = value


DELETE = object()

HUB_CASES = [
    ("spec.tunnel.greKey", 5_000_000_000, "spec.tunnel.greKey: must be 0..4294967295, got 5000000000"),
    ("spec.tunnel.greKey", -1, "spec.tunnel.greKey: must be 0..4294967295, got -1"),
    ("spec.tunnel.greKey", "42", 'spec.tunnel.greKey: must be a valid integer, got "42"'),
    ("spec.tunnel.greKey", True, "spec.tunnel.greKey: must be a valid integer, got true"),
    ("spec.tunnel.networkId", 0, "spec.tunnel.networkId: must be 1..4294967295, got 0"),
    ("spec.tunnel.mtu", 100, "spec.tunnel.mtu: must be 576..9000 bytes, got 100"),
    ("spec.tunnel.ttl", 256, "spec.tunnel.ttl: must be 1..255, got 256"),
    ("spec.nhrp.holdTime", 0, "spec.nhrp.holdTime: must be 1..65535 seconds, got 0"),
    ("spec.nhrp.holdTime", 65536, "spec.nhrp.holdTime: must be 1..65535 seconds, got 65536"),
    ("spec.nhrp.phase", 4, "spec.nhrp.phase: must be 1, 2 or 3, got 4"),
    (
        "spec.nbma.fromNode",
        "Internal",
        "spec.nbma.fromNode: must be 'InternalIP' or 'ExternalIP', got \"Internal\"",
    ),
    ("spec.ipsec.mode", "off", "spec.ipsec.mode: must be 'required' or 'disabled', got \"off\""),
    ("spec.ipsec.dpdDelay", -5, "spec.ipsec.dpdDelay: must be 0..86400 seconds, got -5"),
    (
        "spec.tunnel.interface",
        "dmvpn-tunnel-interface",
        'spec.tunnel.interface: must be at most 15 characters (has 22), got "dmvpn-tunnel-interface"',
    ),
    ("spec.tunnel.interface", "eth 0", "spec.tunnel.interface: must be a Linux interface name"),
    (
        "spec.tunnel.address",
        "10.255.0.300/24",
        "spec.tunnel.address: must be an IPv4 address with its prefix length such as 10.255.0.1/24",
    ),
    (
        "spec.tunnel.address",
        "10.255.0.1",
        "spec.tunnel.address: must be an IPv4 address with its prefix length",
    ),
    (
        "spec.tunnel.address",
        "10.255.0.0/24",
        "spec.tunnel.address: 10.255.0.0/24 is the network address of 10.255.0.0/24; "
        "give a host address such as 10.255.0.1/24",
    ),
    (
        "spec.tunnel.address",
        "10.255.0.255/24",
        "spec.tunnel.address: 10.255.0.255/24 is the broadcast address",
    ),
    ("spec.tunnel.address", "10.255.0.1/31", "spec.tunnel.address: must have a prefix length of at most /30"),
    ("spec.tunnel.address", "224.0.0.1/24", "spec.tunnel.address: must be a unicast address of a host"),
    ("spec.tunnel.address", DELETE, "spec.tunnel.address: required field is missing"),
    (
        "spec.nbma.address",
        "192.0.2",
        'spec.nbma.address: must be an IPv4 address such as 192.0.2.1, got "192.0.2"',
    ),
    (
        "spec.nbma.address",
        "127.0.0.1",
        "spec.nbma.address: must be a unicast address of a host, not a loopback",
    ),
    (
        "spec.nbma.address",
        "0.0.0.0",
        "spec.nbma.address: must be a unicast address of a host, not the unspecified",
    ),
    (
        "spec.summaryPrefixes",
        ["10.0.0.1/8"],
        "spec.summaryPrefixes[0]: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?",
    ),
    (
        "spec.summaryPrefixes",
        ["10.0.0.0/8", "10.1.0.0/16"],
        "spec.summaryPrefixes[1]: 10.1.0.0/16 overlaps summaryPrefixes[0] 10.0.0.0/8",
    ),
    (
        "spec.sitePrefixes",
        ["10.255.0.0/16"],
        "spec.sitePrefixes[0]: 10.255.0.0/16 overlaps the tunnel subnet 10.255.0.0/24",
    ),
    (
        "spec.sitePrefixes",
        ["10.1.0.0/24", "10.1.0.0/24"],
        "spec.sitePrefixes[1]: 10.1.0.0/24 repeats sitePrefixes[0] 10.1.0.0/24",
    ),
    ("spec.sitePrefixes", ["fd00::/64"], "spec.sitePrefixes[0]: must be an IPv4 prefix such as 10.1.0.0/24"),
    (
        "spec.nodeSelector",
        {"role": "hub"},
        "spec.nodeSelector: set either nodeName or nodeSelector, not both",
    ),
    ("spec.nodeName", DELETE, "spec.nodeName: set nodeName (one node) or nodeSelector (nodes by label)"),
    ("spec.nodeName", "Hub_1", "spec.nodeName: must be a Kubernetes object name"),
    ("spec.ipsec", {}, "spec.ipsec: mode is required but no credentials are given: set psk or x509"),
    ("spec.ipsec", DELETE, "spec.ipsec: required field is missing"),
    (
        "spec.ipsec.x509",
        {"certificateSecretRef": {"name": "a"}, "keySecretRef": {"name": "a"}, "caSecretRef": {"name": "b"}},
        "spec.ipsec.x509: set either psk or x509, not both",
    ),
    (
        "spec.ipsec.x509",
        {"certificateSecretRef": {"name": "a"}},
        "spec.ipsec.x509.keySecretRef: required field is missing",
    ),
    (
        "spec.ipsec.ikeProposals",
        ["3des-sha1-modp2048"],
        "spec.ipsec.ikeProposals[0]: '3des' is not allowed: 3DES has a 64-bit block",
    ),
    (
        "spec.ipsec.ikeProposals",
        ["aes256-md5-modp2048"],
        "spec.ipsec.ikeProposals[0]: 'md5' is not allowed: MD5 is broken",
    ),
    (
        "spec.ipsec.ikeProposals",
        ["aes256-sha256-modp1024"],
        "spec.ipsec.ikeProposals[0]: 'modp1024' is not allowed",
    ),
    (
        "spec.ipsec.espProposals",
        ["null-sha256"],
        "spec.ipsec.espProposals[0]: 'null' is not allowed: it disables encryption",
    ),
    ("spec.ipsec.espProposals", ["des-sha256"], "spec.ipsec.espProposals[0]: 'des' is not allowed"),
    (
        "spec.ipsec.espProposals",
        ["aes256gcm-ecp256"],
        "spec.ipsec.espProposals[0]: unknown algorithm 'aes256gcm'; did you mean 'aes256gcm16'?",
    ),
    (
        "spec.ipsec.ikeProposals",
        ["aes256gcm16-ecp256"],
        "spec.ipsec.ikeProposals[0]: AEAD cipher 'aes256gcm16' in IKE needs a PRF",
    ),
    ("spec.ipsec.ikeProposals", [], "spec.ipsec.ikeProposals: must have at least 1 item"),
    (
        "spec.nhrp.authentication",
        {"secretRef": {}},
        "spec.nhrp.authentication.secretRef.name: required field is missing",
    ),
    (
        "spec.nhrp.authentication",
        {"secretRef": {"name": "x", "namespace": "Bad_NS"}},
        "spec.nhrp.authentication.secretRef.namespace: must be a namespace name",
    ),
    ("spec.tunnel.greKye", 42, "spec.tunnel.greKye: unknown field; did you mean 'greKey'?"),
    (
        "spec.bogus",
        1,
        "spec.bogus: unknown field; allowed here: ipsec, nbma, nhrp, nodeName, nodeSelector, sitePrefixes, "
        "summaryPrefixes, tunnel",
    ),
    ("spec.hubs", [{"name": "hub-2"}], "spec.hubs: unknown field"),
    ("spec.nhrp.phase", 2, None),  # valid alone; see the phase-2 summarisation case below
    ("metadata.name", "Hub 1", "DMVPNHub/Hub 1: metadata.name: must be a Kubernetes object name"),
]


@pytest.mark.parametrize(("path", "value", "expected"), HUB_CASES, ids=[f"{c[0]}={c[1]!r}"[:60] for c in HUB_CASES])
def test_hub_mistakes(hub: dict[str, Any], problems: Problems, path: str, value: Any, expected: str | None) -> None:
    _set(hub, path, value)
    if expected is None:
        parse_object(hub)
        return
    lines = problems(hub)
    assert any(expected in line for line in lines), lines
    assert all(line.startswith("DMVPNHub/") for line in lines), lines


SPOKE_CASES = [
    ("spec.hubs", [], "spec.hubs: must have at least 1 item"),
    ("spec.hubs", DELETE, "spec.hubs: required field is missing"),
    (
        "spec.hubs",
        [{"name": "hub-1"}, {"name": "hub-1"}],
        "spec.hubs[1].name: duplicate of hubs[0].name hub-1",
    ),
    (
        "spec.hubs",
        [
            {"nbma": "192.0.2.1", "tunnelAddress": "10.255.0.1"},
            {"nbma": "192.0.2.1", "tunnelAddress": "10.255.0.2"},
        ],
        "spec.hubs[1].nbma: duplicate of hubs[0].nbma 192.0.2.1",
    ),
    (
        "spec.hubs",
        [{"name": "hub-1", "nbma": "192.0.2.1", "tunnelAddress": "10.255.0.1"}],
        "spec.hubs[0]: use either name (a DMVPNHub here) or nbma + tunnelAddress (elsewhere), not both",
    ),
    (
        "spec.hubs",
        [{"nbma": "192.0.2.1"}],
        "spec.hubs[0].tunnelAddress: a hub outside the cluster needs both",
    ),
    (
        "spec.hubs",
        [{"tunnelAddress": "10.255.0.1"}],
        "spec.hubs[0].nbma: a hub outside the cluster needs both",
    ),
    (
        "spec.hubs",
        [{"name": "hub-1", "summaryPrefixes": ["10.0.0.0/8"]}],
        "spec.hubs[0].summaryPrefixes: only for a hub outside the cluster",
    ),
    (
        "spec.hubs",
        [{"nbma": "192.0.2.1", "tunnelAddress": "10.255.0.1", "summaryPrefixes": ["10.0.0.0/8", "10.1.0.0/16"]}],
        "spec.hubs[0].summaryPrefixes[1]: 10.1.0.0/16 overlaps summaryPrefixes[0] 10.0.0.0/8",
    ),
    ("spec.hubs", [{}], "spec.hubs[0]: set name (a DMVPNHub here) or nbma + tunnelAddress"),
    ("spec.hubs", [{"name": "hub-1", "nmae": "x"}], "spec.hubs[0].nmae: unknown field; did you mean 'name'?"),
    (
        "spec.tunnel",
        {"address": "10.255.0.11/24"},
        "spec.tunnel.address: an explicit tunnel address needs nodeName",
    ),
    ("spec.nbma", {"address": "192.0.2.11"}, "spec.nbma.address: an explicit NBMA address needs nodeName"),
    ("spec.nodeSelector", {"bad key!": "x"}, "spec.nodeSelector: label key 'bad key!'"),
    (
        "spec.nodeSelector",
        {"role": "-bad"},
        "spec.nodeSelector: label 'role': value '-bad' must be empty or 1..63",
    ),
    ("spec.summaryPrefixes", ["10.0.0.0/8"], "spec.summaryPrefixes: unknown field"),
    ("spec.nodeSelector", {}, None),  # {} selects every node, as in a DaemonSet
]


@pytest.mark.parametrize(("path", "value", "expected"), SPOKE_CASES, ids=[f"{c[0]}={c[1]!r}"[:60] for c in SPOKE_CASES])
def test_spoke_mistakes(spoke: dict[str, Any], problems: Problems, path: str, value: Any, expected: str | None) -> None:
    _set(spoke, path, value)
    if expected is None:
        parse_object(spoke)
        return
    lines = problems(spoke)
    assert any(expected in line for line in lines), lines


def test_explicit_spoke_addresses_are_checked_against_federated_hubs(spoke: dict[str, Any], problems: Problems) -> None:
    spoke["spec"] = {
        "nodeName": "edge-1",
        "tunnel": {"address": "10.255.0.11/24"},
        "ipsec": {"mode": "disabled"},
        "sitePrefixes": ["10.255.0.128/25"],
        "hubs": [
            {"nbma": "192.0.2.1", "tunnelAddress": "10.254.0.1"},
            {"nbma": "192.0.2.2", "tunnelAddress": "10.255.0.11"},
        ],
    }
    lines = problems(spoke)
    assert (
        "DMVPNSpoke/branches: spec.hubs[0].tunnelAddress: "
        "10.254.0.1 is outside this spoke's tunnel subnet 10.255.0.0/24" in lines
    )
    assert "DMVPNSpoke/branches: spec.hubs[1].tunnelAddress: 10.255.0.11 is this spoke's own tunnel.address" in lines
    assert (
        "DMVPNSpoke/branches: spec.sitePrefixes[0]: "
        "10.255.0.128/25 overlaps the tunnel subnet 10.255.0.0/24 (tunnel.address)" in lines
    )


def test_phase_2_cannot_summarise(hub: dict[str, Any], problems: Problems) -> None:
    hub["spec"]["nhrp"] = {"phase": 2}
    hub["spec"]["summaryPrefixes"] = ["10.0.0.0/8"]
    assert any("spec.summaryPrefixes: Phase 2 spokes need the specific routes" in line for line in problems(hub))


def test_every_problem_is_listed_at_once(hub: dict[str, Any], problems: Problems) -> None:
    hub["spec"]["nodeSelector"] = {"role": "hub"}
    hub["spec"]["ipsec"] = {}
    hub["spec"]["sitePrefixes"] = ["10.255.0.0/16"]
    lines = problems(hub)
    assert lines == [
        "DMVPNHub/hub-1: spec.ipsec: "
        "mode is required but no credentials are given: set psk or x509 (or mode: disabled)",
        "DMVPNHub/hub-1: spec.nodeSelector: set either nodeName or nodeSelector, not both",
        "DMVPNHub/hub-1: spec.sitePrefixes[0]: 10.255.0.0/16 overlaps the tunnel subnet 10.255.0.0/24 (tunnel.address)",
    ]


def test_field_errors_of_different_parts_are_listed_together(hub: dict[str, Any], problems: Problems) -> None:
    hub["spec"]["tunnel"]["greKey"] = 5_000_000_000
    hub["spec"]["nhrp"] = {"holdTime": 0}
    hub["metadata"]["name"] = "UPPER"
    lines = problems(hub)
    assert len(lines) == 3, lines


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"kind": "DMVPNHubb"}, 'kind: must be DMVPNHub or DMVPNSpoke, got "DMVPNHubb"'),
        (
            {"apiVersion": "dmvpn.io/v1"},
            'apiVersion: version not supported by this build, which reads dmvpn.io/v1alpha1, got "dmvpn.io/v1"',
        ),
        ({"apiVersion": "v1"}, 'apiVersion: must be dmvpn.io/v1alpha1, got "v1"'),
        ({"spec": "nope"}, "spec: must be a valid dictionary or instance of DMVPNHubSpec"),
        ({"metadata": {}}, "metadata.name: required field is missing"),
        ({"extra": 1}, "extra: unknown field"),
    ],
)
def test_envelope_mistakes(hub: dict[str, Any], problems: Problems, patch: dict[str, Any], expected: str) -> None:
    hub.update(patch)
    assert any(expected in line for line in problems(hub)), problems(hub)


def test_not_a_mapping() -> None:
    with pytest.raises(ValidationFailed, match="must be a mapping"):
        parse_object(["a", "list"])


def test_validation_failed_carries_structured_problems(hub: dict[str, Any]) -> None:
    hub["spec"]["tunnel"]["greKey"] = -1
    with pytest.raises(ValidationFailed) as raised:
        parse_object(hub)
    (problem,) = raised.value.problems
    assert (problem.source, problem.path) == ("DMVPNHub/hub-1", "spec.tunnel.greKey")
    assert problem.message == "must be 0..4294967295, got -1"
    assert isinstance(raised.value, ValueError)


def test_metadata_from_the_api_server_is_kept(hub: dict[str, Any]) -> None:
    hub["metadata"].update(
        {
            "generation": 3,
            "uid": "0b7c",
            "resourceVersion": "42",
            "creationTimestamp": "2024-05-01T12:00:00Z",
            "finalizers": ["dmvpn.io/cleanup"],
            "managedFields": [{"manager": "kubectl"}],
        }
    )
    parsed = parse_object(hub)
    assert parsed.metadata.generation == 3 and parsed.metadata.resource_version == "42"
    assert dump_object(parsed)["metadata"]["finalizers"] == ["dmvpn.io/cleanup"]
