"""Fixtures of the operator tests; the harness itself is in ``kubeharness``."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kubeharness import ApiServer, Cluster, Operator, OperatorFactory, fast_config, kubeconfig


@pytest.fixture
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    async with ApiServer() as server, kmock.Server(server) as http:
        server.resources.load_bundled()
        server.serve_crds()
        url = str(http.url).rstrip("/")
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig(url, tmp_path / "kubeconfig")))
        async with aiohttp.ClientSession() as session:
            yield Cluster(server=server, url=url, session=session)


@pytest.fixture
async def operator() -> AsyncIterator[OperatorFactory]:
    """``await operator(**config changes)`` starts the real operator against the emulator of the test's
    cluster fixture (via KUBECONFIG); request that fixture first so that it outlives the operator."""
    started: list[Operator] = []

    async def start(**changes: Any) -> Operator:
        running = await Operator(fast_config(**changes)).start()
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop()


@pytest.fixture
async def cluster_without_crds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ApiServer]:
    """An emulator serving only Kubernetes' own resources: the CRDs come with ``kubectl apply``."""
    async with ApiServer() as server, kmock.Server(server) as http:
        server.resources.load_bundled()
        url = str(http.url).rstrip("/")
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig(url, tmp_path / "kubeconfig")))
        yield server
