"""Generate the CustomResourceDefinitions in ``crds/`` from the models.

Usage: ``python -m dmvpn.api.crdgen crds/`` (or ``dmvpn-crds crds/``; ``make crds`` runs it).
``--check`` compares instead of writing and exits 1 if ``crds/`` is stale. Output is deterministic
(sorted keys, fixed width), so the committed files can be compared byte for byte in a test.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from dmvpn.api.constants import (
    API_VERSION,
    CATEGORIES,
    GROUP,
    KIND_HUB,
    KIND_SPOKE,
    KINDS,
    PLURALS,
    SHORT_NAMES,
    SINGULARS,
    VERSION,
    crd_name,
)
from dmvpn.api.objects import MODELS
from dmvpn.api.openapi import JsonSchema, structural_schema

REGENERATE = "python -m dmvpn.api.crdgen crds/"
HEADER = f"# Generated from dmvpn.api by `{REGENERATE}` (make crds). Do not edit.\n"

_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
PRINTER_COLUMNS: dict[str, list[dict[str, str]]] = {
    KIND_HUB: [
        {"name": "NBMA", "type": "string", "jsonPath": ".status.nbma", "description": "Hub NBMA address"},
        {
            "name": "Tunnel",
            "type": "string",
            "jsonPath": ".spec.tunnel.address",
            "description": "Tunnel address",
        },
        {
            "name": "Registered",
            "type": "integer",
            "jsonPath": ".status.registeredSpokes",
            "description": "Spokes registered via NHRP",
        },
        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyNodes", "description": "Ready nodes"},
        _AGE,
    ],
    KIND_SPOKE: [
        {
            "name": "Nodes",
            "type": "integer",
            "jsonPath": ".status.selectedNodes",
            "description": "Selected nodes",
        },
        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyNodes", "description": "Ready nodes"},
        {
            "name": "HubsUp",
            "type": "integer",
            "jsonPath": ".status.hubsUp",
            "description": "Hubs registered with",
        },
        {
            "name": "Shortcuts",
            "type": "integer",
            "jsonPath": ".status.shortcuts",
            "description": "Phase 3 shortcut routes",
        },
        _AGE,
    ],
}


def openapi_schema(model: type[BaseModel]) -> JsonSchema:
    """The ``openAPIV3Schema`` of one kind: the model's schema, with the envelope Kubernetes owns."""
    schema = structural_schema(model.model_json_schema(by_alias=True, mode="validation"))
    properties = schema["properties"]
    properties["apiVersion"] = {"type": "string", "description": f"{API_VERSION}"}
    properties["kind"] = {"type": "string", "description": f"{model.__name__}"}
    # The API server validates metadata itself and forbids schemas for most of it.
    properties["metadata"] = {"type": "object"}
    schema["required"] = ["spec"]
    return schema


def build_crd(kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition of ``kind`` (DMVPNHub or DMVPNSpoke) as a dict."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": crd_name(kind),
            "labels": {"app.kubernetes.io/name": "kube-dmvpn", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Cluster",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": PLURALS[kind],
                "singular": SINGULARS[kind],
                "shortNames": list(SHORT_NAMES[kind]),
                "categories": list(CATEGORIES),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS[kind],
                    "schema": {"openAPIV3Schema": openapi_schema(MODELS[kind])},
                }
            ],
        },
    }


def render_crd(kind: str) -> str:
    """The file content of ``crds/<plural>.<group>.yaml``."""
    body = yaml.safe_dump(build_crd(kind), sort_keys=True, default_flow_style=False, width=100)
    return HEADER + body


def crd_files() -> dict[str, str]:
    """File name -> content for every kind."""
    return {f"{crd_name(kind)}.yaml": render_crd(kind) for kind in KINDS}


def stale_files(directory: Path) -> list[str]:
    """Names of files in ``directory`` that differ from what the models generate (or are missing)."""
    stale: list[str] = []
    for name, content in crd_files().items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != content:
            stale.append(name)
    return stale


def write_crds(directory: Path) -> list[Path]:
    """Write every CRD into ``directory``; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, content in crd_files().items():
        path = directory / name
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``dmvpn-crds``."""
    parser = argparse.ArgumentParser(prog="dmvpn-crds", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("directory", nargs="?", default="crds", type=Path, help="output directory (crds)")
    parser.add_argument("--check", action="store_true", help="only check that the directory is up to date")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.directory)
        for name in stale:
            print(f"{args.directory / name} is stale: run `make crds`", file=sys.stderr)
        return 1 if stale else 0
    for path in write_crds(args.directory):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
