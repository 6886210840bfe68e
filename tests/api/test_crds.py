"""The committed CRDs are what the models generate, and they are valid, structural CRDs."""

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from dmvpn.api import CATEGORIES, KINDS, PLURALS, SHORT_NAMES, crd_name
from dmvpn.api.crdgen import build_crd, crd_files, main, render_crd, stale_files
from dmvpn.api.openapi import SchemaError, structural_problems, structural_schema

CRDS = Path(__file__).resolve().parents[2] / "crds"


def _schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = build_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _walk(schema: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), Mapping):
            yield from _walk(schema[key], f"{path}[{key}]")


def test_committed_crds_match_the_models() -> None:
    stale = stale_files(CRDS)
    assert not stale, f"crds/ is out of date with dmvpn.api ({', '.join(stale)}): run `make crds`"


def test_no_unexpected_files_in_crds() -> None:
    assert sorted(p.name for p in CRDS.glob("*.yaml")) == sorted(crd_files())


def test_generation_is_deterministic() -> None:
    assert [render_crd(kind) for kind in KINDS] == [render_crd(kind) for kind in KINDS]


@pytest.mark.parametrize("kind", KINDS)
def test_crd_is_a_valid_customresourcedefinition(kind: str) -> None:
    document = yaml.safe_load((CRDS / f"{crd_name(kind)}.yaml").read_text())
    kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("kind", KINDS)
def test_crd_names(kind: str) -> None:
    crd = build_crd(kind)
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{PLURALS[kind]}.dmvpn.io"
    assert spec["scope"] == "Cluster" and spec["group"] == "dmvpn.io"
    assert spec["names"]["categories"] == list(CATEGORIES) == ["dmvpn"]
    assert spec["names"]["shortNames"] == list(SHORT_NAMES[kind])
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_short_names_are_unique_and_avoid_builtin_ones() -> None:
    names = [n for kind in KINDS for n in SHORT_NAMES[kind]]
    assert len(set(names)) == len(names)
    assert not set(names) & {"ds", "deploy", "svc", "sa", "cm", "no", "ns", "po", "ep", "pv", "pvc", "rs"}


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_structural(kind: str) -> None:
    schema = _schema(kind)
    assert structural_problems(schema) == []
    for path, node in _walk(schema):
        assert not {"$ref", "$defs", "anyOf", "allOf", "oneOf", "default", "title", "const"} & set(node), path
        if "properties" in node:
            assert "additionalProperties" not in node, path
    assert schema["required"] == ["spec"]
    assert schema["properties"]["metadata"] == {"type": "object"}


@pytest.mark.parametrize("kind", KINDS)
def test_every_field_is_described(kind: str) -> None:
    undocumented = [
        path
        for path, node in _walk(_schema(kind)["properties"]["spec"], "spec")
        if "[" not in path.rsplit(".", 1)[-1] and not node.get("description")
    ]
    assert undocumented == []


@pytest.mark.parametrize("kind", KINDS)
def test_defaults_are_documented_not_applied_by_the_server(kind: str) -> None:
    tunnel = _schema(kind)["properties"]["spec"]["properties"]["tunnel"]["properties"]
    assert tunnel["mtu"]["description"].endswith("Default: 1400.")
    assert tunnel["interface"]["description"].endswith("Default: dmvpn0.")


@pytest.mark.parametrize("kind", KINDS)
def test_conditions_are_a_map_keyed_by_type(kind: str) -> None:
    conditions = _schema(kind)["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["required"]) == {"type", "status", "lastTransitionTime", "reason", "message"}
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert item["properties"]["lastTransitionTime"]["format"] == "date-time"


@pytest.mark.parametrize("kind", KINDS)
def test_printer_columns_point_at_fields_that_exist(kind: str) -> None:
    version = build_crd(kind)["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    expected = {"DMVPNHub": ["NBMA", "Tunnel", "Registered", "Ready", "Age"]}
    expected["DMVPNSpoke"] = ["Nodes", "Ready", "HubsUp", "Shortcuts", "Age"]
    columns = version["additionalPrinterColumns"]
    assert [c["name"] for c in columns] == expected[kind]
    for column in columns:
        node: Mapping[str, Any] = schema
        *parents, leaf = column["jsonPath"].lstrip(".").split(".")
        if parents == ["metadata"]:
            continue  # metadata belongs to the API server
        for name in parents:
            node = node["properties"][name]
        field = node["properties"][leaf]
        assert field["type"] == {"date": "string"}.get(column["type"], column["type"]), column


def test_cel_rules_are_attached_where_the_models_check_the_same() -> None:
    spoke = _schema("DMVPNSpoke")["properties"]["spec"]
    rules = [r["rule"] for r in spoke["x-kubernetes-validations"]]
    assert "has(self.nodeName) != has(self.nodeSelector)" in rules
    assert any("tunnel.address" in r for r in rules)
    hub_rules = [r["rule"] for r in _schema("DMVPNHub")["properties"]["spec"]["x-kubernetes-validations"]]
    assert hub_rules == ["has(self.nodeName) != has(self.nodeSelector)"]
    assert spoke["properties"]["hubs"]["items"]["x-kubernetes-validations"]


def test_a_non_structural_model_is_refused() -> None:
    with pytest.raises(SchemaError, match="anyOf over 2 types"):
        structural_schema({"type": "object", "properties": {"x": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}})
    assert structural_problems({"properties": {"a": {}}}) == ["<root>: no type", ".a: no type"]


def test_cli_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path), "--check"]) == 1
    assert "run `make crds`" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(crd_files())
    assert main([str(tmp_path), "--check"]) == 0
    (tmp_path / "dmvpnhubs.dmvpn.io.yaml").write_text("edited\n")
    assert main([str(tmp_path), "--check"]) == 1
