"""The real kubectl against the emulator and the real operator: install as a user would.

kubectl is not a Python package: the test needs it on PATH (``/usr/bin/kubectl`` here; Debian ships one
in the ``kubernetes-client`` package, which ``tools/bootstrap.sh`` installs when no kubectl is on PATH).
Without it the test fails: a missing kubectl is a missing install step, not a reason to skip.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubeharness import HUBS, ROOT, SPOKES, ApiServer, OperatorFactory, eventually, node

KUBECTL = shutil.which("kubectl")
MISSING = "kubectl is not on PATH: run tools/bootstrap.sh (it installs Debian's kubernetes-client)"


async def kubectl(*args: str, cache: Path) -> str:
    if KUBECTL is None:
        pytest.fail(MISSING)
    process = await asyncio.create_subprocess_exec(
        KUBECTL,
        *args,
        f"--cache-dir={cache}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HOME": str(cache)},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, f"kubectl {' '.join(args)}: {err.decode()}"
    return out.decode()


async def test_kubectl_apply_crds_and_the_example_then_delete(
    cluster_without_crds: ApiServer, operator: OperatorFactory, tmp_path: Path
) -> None:
    server = cluster_without_crds
    cache = tmp_path / "kube"
    cache.mkdir()
    await kubectl("apply", "--validate=false", "-f", str(ROOT / "crds"), cache=cache)  # no OpenAPI served
    assert server.stored("apiextensions.k8s.io/v1/customresourcedefinitions", "dmvpnspokes.dmvpn.io")

    nodes = [
        node("hub-1", internal="192.0.2.1", external="203.0.113.1"),
        node("edge-1", internal="198.51.100.1"),
        node("edge-2", internal="198.51.100.2"),
        node("branch-a", {"dmvpn.io/role": "spoke"}, internal="198.51.100.11"),
        node("branch-b", {"dmvpn.io/role": "spoke"}, internal="198.51.100.12"),
    ]
    (tmp_path / "nodes.yaml").write_text(yaml.safe_dump_all(nodes))
    await kubectl("apply", "--validate=false", "-f", str(tmp_path / "nodes.yaml"), cache=cache)
    await operator()
    # kmock 0.8 cannot serve /api/v1/namespaces (its path parser takes "namespaces" for the namespace
    # prefix of a namespaced URL), and namespaces are not checked anyway: apply the rest of the example.
    documents = yaml.safe_load_all((ROOT / "examples" / "hub-and-spokes.yaml").read_text())
    example = tmp_path / "hub-and-spokes.yaml"
    example.write_text(yaml.safe_dump_all([d for d in documents if d and d["kind"] != "Namespace"]))
    await kubectl("apply", "--validate=false", "-f", str(example), cache=cache)

    def status(resource: str, name: str) -> dict[str, Any]:
        return dict((server.stored(resource, name) or {}).get("status") or {})

    await eventually(lambda: status(HUBS, "hub-1").get("nbma") == "203.0.113.1", what="hub NBMA from ExternalIP")
    allocations = await eventually(
        lambda: (
            len(status(SPOKES, "branches").get("allocations") or {}) == 2 and status(SPOKES, "branches")["allocations"]
        )
    )
    assert set(allocations) == {"branch-a", "branch-b"}
    assert "10.255.0.11/24" not in allocations.values() and "10.255.0.12/24" not in allocations.values()
    for name in ("branches", "branch-edge", "branch-federated"):
        accepted = await eventually(
            lambda name=name: next(
                (c for c in status(SPOKES, name).get("conditions", []) if c["type"] == "Accepted"), None
            )
        )
        assert accepted["status"] == "True", (name, accepted)

    listed = json.loads(await kubectl("get", "dmvpnspokes", "-o", "json", cache=cache))
    assert {item["metadata"]["name"] for item in listed["items"]} == {"branches", "branch-edge", "branch-federated"}
    short = await kubectl("get", "dms", "-o", "name", cache=cache)
    assert "dmvpnspoke.dmvpn.io/branches" in short

    await kubectl("delete", "dmvpnspoke", "branches", "--wait=false", cache=cache)
    await eventually(lambda: server.stored(SPOKES, "branches") is None, what="finalized deletion")
