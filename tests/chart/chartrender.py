"""Rendering the chart with Helm's Go SDK (helm-python-sdk), shared by the chart tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kube-dmvpn"
NAMESPACE = "kube-dmvpn"


def render(values: dict[str, Any]) -> dict[str, str]:
    chart = helm_python.Chart.load(str(CHART))
    rendered: dict[str, str] = chart.render(values, name="dmvpn", namespace=NAMESPACE, is_install=True)
    return rendered


def manifests(values: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for path, text in render(values).items():
        if path.endswith(".yaml"):
            found += [doc for doc in yaml.safe_load_all(text) if doc]
    return found


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    matches = [doc for doc in of_kind(docs, kind) if doc["metadata"]["name"].endswith(suffix)]
    assert len(matches) == 1, f"{kind} *{suffix}: {[d['metadata']['name'] for d in matches]}"
    return matches[0]
