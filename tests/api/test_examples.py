"""Every example is accepted by the models and by the CRD schema, and says what the docs say it does."""

from collections.abc import Callable, Mapping
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from dmvpn.api import (
    DMVPNHub,
    DMVPNSpoke,
    is_dmvpn_document,
    load_documents,
    parse_object,
    spoke_hub_problems,
    validate_ipsec_psk,
    validate_nhrp_secret,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FILES = sorted(EXAMPLES.rglob("*.yaml"))
SchemaErrors = Callable[[Mapping[str, Any]], list[str]]


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def test_examples_exist() -> None:
    names = {p.relative_to(EXAMPLES).as_posix() for p in FILES}
    assert {"hub-and-spokes.yaml", "standalone/lab.yaml"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(EXAMPLES).as_posix())
def test_example_passes_models_and_crd_schema(path: Path, schema_errors: SchemaErrors) -> None:
    objects = load_documents(path.read_text(), source=str(path))
    dmvpn_documents = [d for d in _documents(path) if is_dmvpn_document(d)]
    assert len(objects) == len(dmvpn_documents) > 0
    for document in dmvpn_documents:
        assert schema_errors(document) == [], document["metadata"]["name"]
        parse_object(document)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(EXAMPLES).as_posix())
def test_other_documents_are_valid_kubernetes_objects(path: Path) -> None:
    for document in _documents(path):
        if not is_dmvpn_document(document):
            kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(EXAMPLES).as_posix())
def test_spokes_agree_with_the_hubs_they_name(path: Path) -> None:
    objects = load_documents(path.read_text())
    hubs = {o.name: o for o in objects if isinstance(o, DMVPNHub)}
    for spoke in (o for o in objects if isinstance(o, DMVPNSpoke)):
        assert spoke_hub_problems(spoke, hubs) == [], spoke.name


def test_hub_and_spokes() -> None:
    path = EXAMPLES / "hub-and-spokes.yaml"
    objects = {o.name: o for o in load_documents(path.read_text())}
    hub = objects["hub-1"]
    assert isinstance(hub, DMVPNHub)
    assert hub.spec.node_name == "hub-1"
    assert hub.spec.tunnel.address == IPv4Interface("10.255.0.1/24") and hub.spec.tunnel.gre_key == 42
    assert hub.spec.summary_prefixes == [IPv4Network("10.0.0.0/8")]
    assert hub.spec.ipsec.psk is not None
    by_label, pinned, federated = objects["branches"], objects["branch-edge"], objects["branch-federated"]
    assert isinstance(by_label, DMVPNSpoke) and isinstance(pinned, DMVPNSpoke) and isinstance(federated, DMVPNSpoke)
    assert by_label.spec.node_selector and by_label.spec.tunnel.address is None
    assert pinned.spec.node_name and pinned.spec.tunnel.address is not None
    assert any(not ref.is_local for ref in federated.spec.hubs)

    secrets = {d["metadata"]["name"]: d for d in _documents(path) if d["kind"] == "Secret"}
    referenced = {hub.spec.ipsec.psk.secret_ref.name}
    assert hub.spec.nhrp.authentication is not None
    referenced.add(hub.spec.nhrp.authentication.secret_ref.name)
    assert referenced <= set(secrets)
    validate_ipsec_psk(secrets["dmvpn-psk"]["stringData"]["psk"].encode())
    validate_nhrp_secret(secrets["dmvpn-nhrp"]["stringData"]["password"].encode())


def test_standalone_lab() -> None:
    objects = load_documents((EXAMPLES / "standalone" / "lab.yaml").read_text())
    summary = [
        (
            type(o).__name__,
            o.spec.nbma.address,
            o.spec.tunnel.address,
            o.spec.site_prefixes,
        )
        for o in objects
    ]
    assert summary == [
        (
            "DMVPNHub",
            IPv4Address("192.0.2.1"),
            IPv4Interface("10.255.0.254/24"),
            [IPv4Network("10.1.0.0/24")],
        ),
        (
            "DMVPNSpoke",
            IPv4Address("192.0.2.11"),
            IPv4Interface("10.255.0.1/24"),
            [IPv4Network("10.1.1.0/24")],
        ),
        (
            "DMVPNSpoke",
            IPv4Address("192.0.2.12"),
            IPv4Interface("10.255.0.2/24"),
            [IPv4Network("10.1.2.0/24")],
        ),
        (
            "DMVPNSpoke",
            IPv4Address("192.0.2.13"),
            IPv4Interface("10.255.0.3/24"),
            [IPv4Network("10.1.3.0/24")],
        ),
    ]
    hub = objects[0]
    assert isinstance(hub, DMVPNHub) and hub.spec.summary_prefixes == [IPv4Network("10.1.0.0/16")]
    for obj in objects:
        assert obj.spec.ipsec.psk is not None and obj.spec.ipsec.psk.secret_ref.name == "dmvpn-psk"
