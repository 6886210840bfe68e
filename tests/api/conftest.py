"""Fixtures for the API tests: minimal valid objects and a JSON Schema view of the generated CRDs."""

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from dmvpn.api import KIND_HUB, KIND_SPOKE, ValidationFailed, parse_object
from dmvpn.api.crdgen import build_crd

REPO = Path(__file__).resolve().parents[2]

HUB: dict[str, Any] = {
    "apiVersion": "dmvpn.io/v1alpha1",
    "kind": "DMVPNHub",
    "metadata": {"name": "hub-1"},
    "spec": {
        "nodeName": "hub-1",
        "tunnel": {"address": "10.255.0.1/24"},
        "ipsec": {"psk": {"secretRef": {"name": "dmvpn-psk"}}},
    },
}
SPOKE: dict[str, Any] = {
    "apiVersion": "dmvpn.io/v1alpha1",
    "kind": "DMVPNSpoke",
    "metadata": {"name": "branches"},
    "spec": {
        "nodeSelector": {"dmvpn.io/role": "spoke"},
        "ipsec": {"psk": {"secretRef": {"name": "dmvpn-psk"}}},
        "hubs": [{"name": "hub-1"}],
    },
}


@pytest.fixture
def hub() -> dict[str, Any]:
    """A fresh minimal valid DMVPNHub as the user would write it (mutate freely)."""
    return copy.deepcopy(HUB)


@pytest.fixture
def spoke() -> dict[str, Any]:
    """A fresh minimal valid DMVPNSpoke as the user would write it (mutate freely)."""
    return copy.deepcopy(SPOKE)


def problem_lines(data: Mapping[str, Any]) -> list[str]:
    """The lines of the ValidationFailed that parsing ``data`` must raise."""
    with pytest.raises(ValidationFailed) as raised:
        parse_object(data)
    return str(raised.value).splitlines()


@pytest.fixture
def problems() -> Callable[[Mapping[str, Any]], list[str]]:
    return problem_lines


def strict_json_schema(openapi: Mapping[str, Any]) -> dict[str, Any]:
    """A CRD schema as JSON Schema that, like ``kubectl apply`` (strict field validation), rejects
    unknown fields instead of pruning them."""
    schema = {key: value for key, value in openapi.items() if not key.startswith("x-kubernetes")}
    if "pattern" in schema and schema["pattern"].endswith("$"):
        # The API server matches with Go RE2, where `$` is the end of text; Python's `$` also matches
        # before a final newline, and jsonschema uses re.search.
        schema["pattern"] = schema["pattern"][:-1] + r"\Z"
    if "properties" in schema and "additionalProperties" not in schema:
        schema["additionalProperties"] = False
    if "properties" in schema:
        schema["properties"] = {name: strict_json_schema(sub) for name, sub in schema["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), Mapping):
            schema[key] = strict_json_schema(schema[key])
    return schema


_VALIDATORS = {
    kind: jsonschema.Draft7Validator(
        strict_json_schema(build_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    )
    for kind in (KIND_HUB, KIND_SPOKE)
}


def crd_schema_errors(document: Mapping[str, Any]) -> list[str]:
    """Why the generated CRD's openAPIV3Schema rejects ``document`` (empty if it accepts it)."""
    validator = _VALIDATORS[document["kind"]]
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


@pytest.fixture
def schema_errors() -> Callable[[Mapping[str, Any]], list[str]]:
    return crd_schema_errors
