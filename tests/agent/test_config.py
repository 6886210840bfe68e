"""Standalone config loading: the lab example resolves, missing fields and secrets are named."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from dmvpn.agent.config import ConfigError, load_standalone, node_config
from dmvpn.agent.nodestate import node_state, write_node_state
from dmvpn.api import load_documents

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "standalone" / "lab.yaml"
PSK = b"lab-secret-not-for-production\n"


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    (tmp_path / "dmvpn-psk").mkdir()
    (tmp_path / "dmvpn-psk" / "psk").write_bytes(PSK)
    return tmp_path


def test_lab_example_spoke_resolves(secrets: Path) -> None:
    config = load_standalone(EXAMPLE, "spoke-1", secrets)
    assert config.role == "spoke"
    assert config.nbma == IPv4Address("192.0.2.11")
    assert config.tunnel == IPv4Interface("10.255.0.1/24")
    assert config.ipsec.required and config.ipsec.psk == PSK.strip()
    assert [(hub.nbma, hub.tunnel_ip) for hub in config.hubs] == [
        (IPv4Address("192.0.2.1"), IPv4Address("10.255.0.254"))
    ]
    assert config.hubs[0].summary_prefixes == (IPv4Network("10.1.0.0/16"),)
    assert sorted(peer.name for peer in config.peer_spokes) == ["spoke-2", "spoke-3"]


def test_lab_example_hub_resolves(secrets: Path) -> None:
    config = load_standalone(EXAMPLE, "hub", secrets)
    assert config.is_hub and config.summary_prefixes == (IPv4Network("10.1.0.0/16"),)
    assert config.tunnel_network == IPv4Network("10.255.0.0/24")


def test_unknown_node_lists_what_exists(secrets: Path) -> None:
    with pytest.raises(ConfigError, match=r"spec.nodeName 'nope'.*hub, spoke-1"):
        load_standalone(EXAMPLE, "nope", secrets)


def test_missing_secret_file_names_field_and_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"DMVPNSpoke/spoke-1: spec.ipsec.psk.secretRef: .*dmvpn-psk/psk"):
        load_standalone(EXAMPLE, "spoke-1", tmp_path)


def test_short_psk_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dmvpn-psk").mkdir()
    (tmp_path / "dmvpn-psk" / "psk").write_bytes(b"short")
    with pytest.raises(ConfigError, match=r"spec.ipsec"):
        load_standalone(EXAMPLE, "spoke-1", tmp_path)


def _spoke(
    extra: str,
    tunnel: str = "  tunnel:\n    address: 10.255.0.1/24\n",
    nbma: str = "  nbma:\n    address: 192.0.2.11\n",
) -> str:
    return f"""
apiVersion: dmvpn.io/v1alpha1
kind: DMVPNSpoke
metadata: {{name: s1}}
spec:
  nodeName: n1
{nbma}{tunnel}  ipsec: {{mode: disabled}}
  hubs: [{{nbma: 192.0.2.1, tunnelAddress: 10.255.0.254}}]
{extra}"""


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (_spoke("  sitePrefixes: [10.1.1.0/24]\n", tunnel=""), "spec.tunnel.address"),
        (_spoke("  sitePrefixes: [10.1.1.0/24]\n", nbma=""), "spec.nbma.address"),
        (_spoke(""), "spec.sitePrefixes"),
    ],
)
def test_missing_operator_fields_are_named(text: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        node_config(load_documents(text), "n1", lambda ref: b"")


def test_federated_hub_and_disabled_ipsec() -> None:
    config = node_config(load_documents(_spoke("  sitePrefixes: [10.1.1.0/24]\n")), "n1", lambda ref: b"")
    assert not config.ipsec.required
    assert config.hubs[0].name is None and config.hubs[0].tunnel_ip == IPv4Address("10.255.0.254")
    assert config.unique_registration, "registrations are unique unless the spec says otherwise (as IOS)"


def test_non_unique_registration_reaches_the_engine() -> None:
    from dmvpn.agent.agent import engine_config

    text = _spoke("  sitePrefixes: [10.1.1.0/24]\n  nhrp: {uniqueRegistration: false}\n")
    config = node_config(load_documents(text), "n1", lambda ref: b"")
    assert not config.unique_registration and not engine_config(config).unique


def test_node_state_file_matches_cni_schema(secrets: Path, tmp_path: Path) -> None:
    from dmvpn_cni.config import load_node_state

    config = load_standalone(EXAMPLE, "spoke-1", secrets)
    path = tmp_path / "run" / "node-state.json"
    assert write_node_state(path, node_state(config))
    assert not write_node_state(path, node_state(config))  # unchanged: nothing written
    state = load_node_state(str(path))
    assert state.pod_cidrs == ["10.1.1.0/24"] and state.mtu == 1400
    assert "10.1.0.0/16" in state.overlay_prefixes and state.tunnel_interface == "dmvpn0"


def test_the_agents_log_records_skip_what_its_format_never_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    """No stack walk for the caller's file and line, no thread or process names: the format shows the
    time, logger, level and message only, and every event on a shortcut's path is logged."""
    import logging

    from dmvpn.agent.main import lean_log_records

    for name in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, name, getattr(logging, name))  # restored after the test
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("dmvpn.test.lean")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        lean_log_records()
        logger.warning("shortcut %s", "up")
    finally:
        logger.removeHandler(handler)
    (record,) = records
    assert record.getMessage() == "shortcut up"
    assert (record.pathname, record.lineno) == ("(unknown file)", 0)
    assert record.threadName is None and record.processName is None
