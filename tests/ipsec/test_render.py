"""Pure rendering of the DMVPN protection profile into VICI messages (no charon needed)."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

import pytest
from vici.protocol import FiniteStream, Message

from dmvpn.api.spec import IpsecSpec
from dmvpn.ipsec import PSK_ID, ProtectionProfile, PskAuth, X509Auth
from dmvpn.ipsec.render import (
    render_conn,
    render_conns,
    render_credentials,
    render_initiate,
    render_shared,
    render_terminate,
)

LOCAL = IPv4Address("192.0.2.11")
PEER = IPv4Address("192.0.2.12")
PSK = b"0123456789abcdef-not-secret"
X509 = X509Auth(b"-----BEGIN CERTIFICATE-----\nleaf\n", b"-----BEGIN PRIVATE KEY-----\nkey\n", b"-----BEGIN CA-----\n")


def psk_profile(**kwargs: Any) -> ProtectionProfile:
    return ProtectionProfile(LOCAL, PskAuth(PSK), **kwargs)


def _values(tree: Any) -> list[Any]:
    if isinstance(tree, dict):
        return [value for item in tree.values() for value in _values(item)]
    if isinstance(tree, list):
        return [value for item in tree for value in _values(item)]
    return [tree]


def test_spoke_peer_connection_is_gre_transport_between_nbma_addresses() -> None:
    conn = render_conn(psk_profile(), PEER)
    assert conn == {
        "version": "2",
        "local_addrs": ["192.0.2.11"],
        "remote_addrs": ["192.0.2.12"],
        "proposals": ["aes256gcm16-prfsha256-ecp256"],
        "rekey_time": "14400",
        "reauth_time": "0",
        "dpd_delay": "30",
        "unique": "no",
        "mobike": "no",
        "keyingtries": "1",
        "local": {"auth": "psk", "id": "192.0.2.11"},
        "remote": {"auth": "psk"},
        "children": {
            "gre": {
                "mode": "transport",
                "local_ts": ["dynamic[gre]"],
                "remote_ts": ["dynamic[gre]"],
                "esp_proposals": ["aes256gcm16-ecp256"],
                "rekey_time": "14400",
                "dpd_action": "clear",
                "replay_window": "1024",
                "start_action": "none",
                "close_action": "none",
            }
        },
    }


def test_hub_answers_any_peer_and_replaces_stale_sas() -> None:
    conns = render_conns(psk_profile(role="hub"), frozenset())
    assert list(conns) == ["dmvpn"]
    assert conns["dmvpn"]["remote_addrs"] == ["%any"]
    assert conns["dmvpn"]["unique"] == "replace"


def test_spoke_loads_responder_plus_one_connection_per_ensured_peer() -> None:
    conns = render_conns(psk_profile(), {IPv4Address("192.0.2.13"), PEER})
    assert list(conns) == ["dmvpn", "dmvpn-peer-192.0.2.12", "dmvpn-peer-192.0.2.13"]
    assert conns["dmvpn"]["remote_addrs"] == ["%any"]
    assert conns["dmvpn-peer-192.0.2.13"]["remote_addrs"] == ["192.0.2.13"]


def test_proposals_keep_their_order_and_timers_come_from_the_spec() -> None:
    spec = IpsecSpec.model_validate(
        {
            "psk": {"secretRef": {"name": "psk"}},
            "ikeProposals": ["aes128gcm16-prfsha256-x25519", "aes256gcm16-prfsha384-ecp384"],
            "espProposals": ["aes128gcm16-x25519", "aes256gcm16"],
            "dpdDelay": 10,
            "rekeyTime": 3600,
        }
    )
    conn = render_conn(ProtectionProfile.from_spec(spec, LOCAL, "spoke", psk=PSK), PEER)
    assert conn["proposals"] == ["aes128gcm16-prfsha256-x25519", "aes256gcm16-prfsha384-ecp384"]
    assert conn["children"]["gre"]["esp_proposals"] == ["aes128gcm16-x25519", "aes256gcm16"]
    assert (conn["dpd_delay"], conn["rekey_time"], conn["children"]["gre"]["rekey_time"]) == ("10", "3600", "3600")


def test_from_spec_needs_the_credentials_the_spec_names() -> None:
    psk_spec = IpsecSpec.model_validate({"psk": {"secretRef": {"name": "psk"}}})
    with pytest.raises(ValueError, match="no PSK value"):
        ProtectionProfile.from_spec(psk_spec, LOCAL, "spoke")
    x509_spec = IpsecSpec.model_validate(
        {
            "x509": {
                "certificateSecretRef": {"name": "c"},
                "keySecretRef": {"name": "c"},
                "caSecretRef": {"name": "ca"},
            }
        }
    )
    assert ProtectionProfile.from_spec(x509_spec, LOCAL, "hub", x509=X509).auth == X509
    with pytest.raises(ValueError, match="no certificate"):
        ProtectionProfile.from_spec(x509_spec, LOCAL, "hub", psk=PSK)


def test_psk_is_one_shared_secret_for_any_peer_and_never_in_repr() -> None:
    profile = psk_profile()
    assert render_shared(profile) == {PSK_ID: {"id": PSK_ID, "type": "IKE", "data": PSK, "owners": []}}
    assert render_credentials(profile) == ([], [])
    assert PSK.decode() not in repr(profile)


def test_x509_uses_pubkey_with_our_cert_and_the_ca_as_constraint() -> None:
    profile = ProtectionProfile(LOCAL, X509)
    conn = render_conn(profile, None)
    assert conn["local"] == {"auth": "pubkey", "certs": [X509.certificate_pem]}
    assert conn["remote"] == {"auth": "pubkey", "cacerts": [X509.ca_pem]}
    assert render_shared(profile) == {}
    certs, keys = render_credentials(profile)
    assert certs == [
        {"type": "X509", "flag": "CA", "data": X509.ca_pem},
        {"type": "X509", "flag": "NONE", "data": X509.certificate_pem},
    ]
    assert keys == [{"type": "any", "data": X509.private_key_pem}]
    assert "PRIVATE KEY" not in repr(profile)


@pytest.mark.parametrize("profile", [psk_profile(), psk_profile(role="hub"), ProtectionProfile(LOCAL, X509)])
def test_rendered_messages_are_text_only_and_survive_the_vici_codec(profile: ProtectionProfile) -> None:
    messages: list[dict[str, Any]] = [{name: conn} for name, conn in render_conns(profile, frozenset({PEER})).items()]
    messages += list(render_shared(profile).values())
    certs, keys = render_credentials(profile)
    messages += certs + keys + [render_initiate(PEER), render_terminate(7)]
    for message in messages:
        # VICI is text: a Python bool would be sent as "True", which charon does not understand.
        assert all(isinstance(value, str | bytes) for value in _values(message)), message
        decoded = Message.deserialize(FiniteStream(Message.serialize(message)))
        assert _values(decoded) == [v if isinstance(v, bytes) else v.encode() for v in _values(message)]


def test_initiate_returns_at_once_and_terminate_names_one_ike_sa() -> None:
    assert render_initiate(PEER) == {"ike": "dmvpn-peer-192.0.2.12", "child": "gre", "timeout": "-1"}
    assert render_terminate(42) == {"ike-id": "42", "timeout": "-1"}


def test_a_trapped_peer_connection_carries_a_trap_policy_and_only_it() -> None:
    conns = render_conns(psk_profile(), {IPv4Address("192.0.2.13"), PEER}, trapped={PEER})
    actions = {name: conn["children"]["gre"]["start_action"] for name, conn in conns.items()}
    assert actions == {"dmvpn": "none", "dmvpn-peer-192.0.2.13": "none", f"dmvpn-peer-{PEER}": "trap"}
    with pytest.raises(ValueError, match="trap needs the peer"):
        render_conn(psk_profile(), None, trap=True)
