"""Helpers other layers use: node selection, NBMA and prefixes per node, spoke/hub consistency, secrets."""

from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

import pytest

from dmvpn.api import (
    DMVPNHub,
    DMVPNSpoke,
    Problem,
    SecretValueError,
    hub_tunnel_address,
    nbma_for_node,
    parse_object,
    proposal_problems,
    selects_node,
    site_prefixes_for_node,
    spoke_hub_problems,
    spoke_tunnel_address,
    tunnel_network,
    validate_ipsec_psk,
    validate_nhrp_secret,
)

NODE_ADDRESSES = [
    {"type": "Hostname", "address": "edge-1"},
    {"type": "InternalIP", "address": "fd00::11"},
    {"type": "InternalIP", "address": "192.0.2.11"},
    {"type": "ExternalIP", "address": "203.0.113.11"},
]


def _hub(data: dict[str, Any]) -> DMVPNHub:
    parsed = parse_object(data)
    assert isinstance(parsed, DMVPNHub)
    return parsed


def _spoke(data: dict[str, Any]) -> DMVPNSpoke:
    parsed = parse_object(data)
    assert isinstance(parsed, DMVPNSpoke)
    return parsed


def test_tunnel_network_and_address(hub: dict[str, Any]) -> None:
    parsed = _hub(hub)
    assert tunnel_network(parsed) == tunnel_network(parsed.spec) == IPv4Network("10.255.0.0/24")
    assert hub_tunnel_address(parsed) == IPv4Address("10.255.0.1")


def test_selects_node(hub: dict[str, Any], spoke: dict[str, Any]) -> None:
    assert selects_node(_hub(hub).spec, "hub-1", {})
    assert not selects_node(_hub(hub).spec, "hub-2", {})
    spec = _spoke(spoke).spec
    assert selects_node(spec, "n1", {"dmvpn.io/role": "spoke", "zone": "a"})
    assert not selects_node(spec, "n1", {"dmvpn.io/role": "hub"})
    assert not selects_node(spec, "n1", {})
    spoke["spec"]["nodeSelector"] = {}
    assert selects_node(_spoke(spoke).spec, "any", {})


def test_nbma_for_node(hub: dict[str, Any]) -> None:
    spec = _hub(hub).spec
    assert nbma_for_node(spec.nbma, NODE_ADDRESSES) == IPv4Address("192.0.2.11")
    hub["spec"]["nbma"] = {"fromNode": "ExternalIP"}
    assert nbma_for_node(_hub(hub).spec.nbma, NODE_ADDRESSES) == IPv4Address("203.0.113.11")
    assert nbma_for_node(_hub(hub).spec.nbma, NODE_ADDRESSES[:3]) is None
    hub["spec"]["nbma"] = {"address": "198.51.100.1", "fromNode": "ExternalIP"}
    assert nbma_for_node(_hub(hub).spec.nbma, NODE_ADDRESSES) == IPv4Address("198.51.100.1")


def test_site_prefixes_for_node(spoke: dict[str, Any]) -> None:
    pod_cidrs = ["10.244.3.0/24", "fd00:10:244:3::/64"]
    assert site_prefixes_for_node(_spoke(spoke).spec, pod_cidrs) == [IPv4Network("10.244.3.0/24")]
    spoke["spec"]["sitePrefixes"] = []
    assert site_prefixes_for_node(_spoke(spoke).spec, pod_cidrs) == []
    spoke["spec"]["sitePrefixes"] = ["10.20.0.0/24"]
    assert site_prefixes_for_node(_spoke(spoke).spec, pod_cidrs) == [IPv4Network("10.20.0.0/24")]


def test_spoke_tunnel_address(spoke: dict[str, Any]) -> None:
    spoke["status"] = {"allocations": {"n1": "10.255.0.11/24"}}
    allocated = _spoke(spoke)
    assert spoke_tunnel_address(allocated, "n1") == IPv4Interface("10.255.0.11/24")
    assert spoke_tunnel_address(allocated, "n2") is None
    spoke["spec"] = {**spoke["spec"], "nodeName": "n9", "tunnel": {"address": "10.255.0.99/24"}}
    del spoke["spec"]["nodeSelector"]
    assert spoke_tunnel_address(_spoke(spoke), "n9") == IPv4Interface("10.255.0.99/24")


def test_spoke_hub_consistency(hub: dict[str, Any], spoke: dict[str, Any]) -> None:
    hubs = {"hub-1": _hub(hub)}
    assert spoke_hub_problems(_spoke(spoke), hubs) == []
    del spoke["spec"]["nodeSelector"]
    spoke["spec"].update(
        {
            "nodeName": "edge-1",
            "tunnel": {"address": "10.254.0.11/24", "greKey": 7},
            "ipsec": {"mode": "disabled"},
            "nhrp": {"authentication": {"secretRef": {"name": "nhrp"}}},
            "sitePrefixes": ["10.255.0.0/16"],
            "hubs": [
                {"name": "hub-1"},
                {"name": "hub-2"},
                {"nbma": "192.0.2.9", "tunnelAddress": "10.254.0.1"},
            ],
        }
    )
    assert [str(p) for p in spoke_hub_problems(_spoke(spoke), hubs)] == [
        "spec.tunnel.greKey: 7 differs from hub hub-1's None; GRE keys must match",
        "spec.ipsec.mode: disabled differs from hub hub-1's required",
        "spec.nhrp.authentication: must be set on both or neither of this spoke and hub hub-1",
        "spec.tunnel.address: 10.254.0.11/24 is not in hub hub-1's tunnel subnet 10.255.0.0/24",
        "spec.sitePrefixes[0]: 10.255.0.0/16 overlaps hub hub-1's tunnel subnet 10.255.0.0/24",
        "spec.hubs[1].name: no DMVPNHub named 'hub-2'",
    ]


def test_spoke_cannot_take_the_hub_address(hub: dict[str, Any], spoke: dict[str, Any]) -> None:
    del spoke["spec"]["nodeSelector"]
    spoke["spec"].update({"nodeName": "edge-1", "tunnel": {"address": "10.255.0.1/24"}})
    assert spoke_hub_problems(_spoke(spoke), {"hub-1": _hub(hub)}) == [
        Problem("spec.tunnel.address", "10.255.0.1 is hub hub-1's own tunnel address")
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"dmvpn42", b"dmvpn42"),
        (b"12345678\n", b"12345678"),
        (b"secret\r\n", b"secret"),
        (b"\x00\xff", b"\x00\xff"),
    ],
)
def test_nhrp_secret_accepted(value: bytes, expected: bytes) -> None:
    assert validate_nhrp_secret(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"123456789", "NHRP authentication secret is 9 bytes; NHRP carries at most 8"),
        (b"", "NHRP authentication secret is empty"),
        (b"\n", "NHRP authentication secret is empty"),
    ],
)
def test_nhrp_secret_refused(value: bytes, message: str) -> None:
    with pytest.raises(SecretValueError, match=message) as raised:
        validate_nhrp_secret(value)
    assert value.strip().decode() not in str(raised.value) or not value.strip()


def test_ipsec_psk() -> None:
    assert validate_ipsec_psk(b"0123456789abcdef\n") == b"0123456789abcdef"
    with pytest.raises(SecretValueError, match="IPsec pre-shared key is 6 bytes; use at least 16"):
        validate_ipsec_psk(b"secret")


@pytest.mark.parametrize(
    "proposal",
    [
        "aes256gcm16-prfsha256-ecp256",
        "aes128gcm16-prfsha256-x25519",
        "chacha20poly1305-prfsha512-curve25519",
        "aes256-sha384-modp3072",
        "aes256gcm16-prfsha384-ecp384-ke1_mlkem768",
        "aes128ctr-aescmac-ecp256bp",
    ],
)
def test_good_ike_proposals(proposal: str) -> None:
    assert proposal_problems(proposal, "ike") == []


@pytest.mark.parametrize(
    "proposal",
    ["aes256gcm16-ecp256", "aes256gcm16", "aes256-sha256", "aes256-sha256-ecp256-esn", "chacha20poly1305"],
)
def test_good_esp_proposals(proposal: str) -> None:
    assert proposal_problems(proposal, "esp") == []


@pytest.mark.parametrize(
    ("proposal", "protocol", "expected"),
    [
        ("aes256-sha256", "ike", "IKE needs a key exchange (Diffie-Hellman group) such as ecp256 or x25519"),
        ("aes256-ecp256", "esp", "non-AEAD cipher 'aes256' needs an integrity algorithm such as sha256"),
        ("aes256gcm16-sha256", "esp", "AEAD cipher 'aes256gcm16' authenticates by itself; remove 'sha256'"),
        ("aes256gcm16-aes256-sha256", "esp", "mixes AEAD 'aes256gcm16' with non-AEAD 'aes256'"),
        ("sha256-ecp256", "esp", "needs a cipher such as aes256gcm16 or aes256"),
        ("aes256gcm16-prfsha256", "esp", "'prfsha256' is a PRF, which only IKE proposals take"),
        (
            "aes256-sha256-modp2048-esn",
            "ike",
            "'esn' (extended sequence numbers) only applies to ESP proposals",
        ),
        ("aes256-sha265", "esp", "unknown algorithm 'sha265'; did you mean 'sha256'?"),
        ("aes256--sha256", "esp", "empty algorithm between dashes"),
        (
            "aes256-sha256-modp1536",
            "esp",
            "'modp1536' is not allowed: 1536-bit MODP is below the 2048-bit minimum",
        ),
        ("aes128gmac", "esp", "'aes128gmac' is not allowed: GMAC authenticates only, it does not encrypt"),
        ("default", "ike", "unknown algorithm 'default'"),
    ],
)
def test_bad_proposals(proposal: str, protocol: Any, expected: str) -> None:
    problems = proposal_problems(proposal, protocol)
    assert any(problem.startswith(expected) for problem in problems), problems
