"""Operator benchmark: N nodes selected by spokes, against the kmock API emulator over HTTP.

The operator runs as its own process (``python -m dmvpn.controller.main``, as in the image) so that its
RSS is its own; the emulator and the simulated agents run here. Measured: time until every selected node
has a tunnel address, time until every spoke is Ready once the agents report, the operator's peak RSS,
and the API calls the operator made (by verb) against those of the agents.

    .venv/bin/python bench/operator_bench.py [--nodes 1000] [--spokes 10]

Goals (issue 5): all allocations and Ready within 60 s, operator RSS below 150 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "controller"))

from kubeharness import (  # noqa: E402
    HUBS,
    SPOKES,
    ApiServer,
    Cluster,
    hub,
    kubeconfig,
    node,
    report,
    spoke,
)

GOAL_SECONDS = 60.0
GOAL_RSS_MB = 150.0
CONCURRENCY = 16


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000, help="spoke nodes (plus one hub node)")
    parser.add_argument("--spokes", type=int, default=10, help="DMVPNSpoke objects, each selecting nodes/spokes nodes")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    return parser.parse_args()


async def bounded(coros: list[Any], limit: int = CONCURRENCY) -> None:
    semaphore = asyncio.Semaphore(limit)

    async def one(coro: Any) -> None:
        async with semaphore:
            await coro

    await asyncio.gather(*(one(c) for c in coros))


class RssSampler:
    """Peak resident memory of a process, sampled in the background."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while True:
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return
            await asyncio.sleep(0.2)

    def start(self) -> None:
        self.task = asyncio.create_task(self.run())


def requests_by(cluster: Cluster) -> tuple[Counter[str], int]:
    """(operator requests by method, other requests) seen by the emulator."""
    operator: Counter[str] = Counter()
    others = 0
    for call, count in cluster.server.calls.items():
        if call.client == "kopf":
            operator[call.method] += count
        else:
            others += count
    return operator, others


async def wait(condition: Any, deadline: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


def allocations_done(cluster: Cluster, spokes: list[str], per_spoke: dict[str, int]) -> bool:
    return all(len(cluster.status(SPOKES, s).get("allocations") or {}) == per_spoke[s] for s in spokes)


def all_ready(cluster: Cluster, spokes: list[str], per_spoke: dict[str, int]) -> bool:
    for name in spokes:
        status = cluster.status(SPOKES, name)
        ready = cluster.condition(SPOKES, name, "Ready")
        if not ready or ready["status"] != "True" or status.get("readyNodes") != per_spoke[name]:
            return False
    return True


async def main() -> int:
    args = parse_args()
    spokes = [f"site-{i}" for i in range(args.spokes)]
    per_spoke = Counter(spokes[i % args.spokes] for i in range(args.nodes))
    network_prefix = 16 if args.nodes < 65000 else 8
    async with ApiServer(history_limit=2) as server, kmock.Server(server) as http:
        server.resources.load_bundled()
        server.serve_crds()
        url = str(http.url).rstrip("/")
        async with aiohttp.ClientSession() as session:
            cluster = Cluster(server=server, url=url, session=session)
            await cluster.create(node("hub-node", internal="192.0.2.1"))
            setup = time.monotonic()
            await bounded(
                [
                    cluster.create(
                        node(f"n{i:05d}", {"site": spokes[i % args.spokes]}, internal=f"10.{i // 250}.{i % 250}.1")
                    )
                    for i in range(args.nodes)
                ]
            )
            print(f"setup: {args.nodes} nodes created in {time.monotonic() - setup:.1f} s", flush=True)
            await cluster.create(hub("hub-1", address=f"10.255.0.1/{network_prefix}"))
            await cluster.create(node("bystander", internal="192.0.2.200"))  # selected by nobody
            return await measure(args, cluster, spokes, per_spoke, url)


async def measure(
    args: argparse.Namespace, cluster: Cluster, spokes: list[str], per_spoke: Counter[str], url: str
) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        process, log = start_operator(url, Path(tmp))
        sampler = RssSampler(process.pid)
        sampler.start()
        try:
            deadline = time.monotonic() + args.timeout
            startup = await wait(lambda: cluster.condition(HUBS, "hub-1", "Accepted"), deadline, "operator start")
            print(
                f"operator up (indexed {args.nodes + 2} nodes, wrote the hub's status) in {startup:.1f} s", flush=True
            )
            started = time.monotonic()
            await bounded([cluster.create(spoke(name, nodeSelector={"site": name})) for name in spokes])
            allocated_in = await wait(lambda: allocations_done(cluster, spokes, per_spoke), deadline, "allocations")
            calls_at_allocation, _ = requests_by(cluster)
            reporting = time.monotonic()
            await report_agents(cluster, spokes)
            reported_in = time.monotonic() - reporting
            ready_in = await wait(lambda: all_ready(cluster, spokes, per_spoke), deadline, "Ready")
            total = time.monotonic() - started - reported_in + startup
            await asyncio.sleep(1.0)  # settle: let the operator finish what it was writing
            operator_calls, other_calls = requests_by(cluster)
            check_unique(cluster, spokes)
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()
            if sampler.task is not None:
                sampler.task.cancel()
    rss_mb = sampler.peak / 2**20
    print(f"nodes {args.nodes}, spokes {args.spokes} ({max(per_spoke.values())} nodes each), 1 hub")
    so_far = sum(calls_at_allocation.values())
    print(f"all allocations:        {allocated_in:6.1f} s  (operator API calls so far: {so_far})")
    print(f"agents reporting:       {reported_in:6.1f} s  (simulated agents' writes; emulator-bound, not counted)")
    print(f"all Ready after that:   {ready_in:6.1f} s")
    print(f"total (start + above):  {total:6.1f} s   goal < {GOAL_SECONDS:.0f} s")
    print(f"operator peak RSS:      {rss_mb:6.1f} MB  goal < {GOAL_RSS_MB:.0f} MB")
    calls = ", ".join(f"{method} {count}" for method, count in sorted(operator_calls.items()))
    print(f"operator API calls:     {sum(operator_calls.values())} ({calls})")
    print(f"agents + setup calls:   {other_calls} (nodes, objects, one status report per node)")
    per_node = sum(operator_calls.values()) / max(args.nodes, 1)
    print(f"operator calls per node: {per_node:.2f}")
    ok = total < GOAL_SECONDS and rss_mb < GOAL_RSS_MB
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def start_operator(url: str, tmp: Path) -> tuple[subprocess.Popen[bytes], Any]:
    """``dmvpn-operator`` as its own process (its RSS is what the goal is about), logging to a file."""
    config = kubeconfig(url, tmp / "kubeconfig")
    env = {**os.environ, "KUBECONFIG": str(config)}
    log = (tmp / "operator.log").open("w")
    command = [sys.executable, "-m", "dmvpn.controller.main", "--metrics-port", "0", "--liveness", ""]
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log


async def report_agents(cluster: Cluster, spokes: list[str]) -> None:
    """Every node's agent reports its spoke registered (one merge patch of its own key each)."""
    await cluster.report(HUBS, "hub-1", "hub-node", report("hub", peers=0))
    writes = []
    for name in spokes:
        for node_name in cluster.status(SPOKES, name).get("allocations") or {}:
            writes.append(cluster.report(SPOKES, name, node_name, report()))
    await bounded(writes)


def check_unique(cluster: Cluster, spokes: list[str]) -> None:
    addresses = [a for s in spokes for a in (cluster.status(SPOKES, s).get("allocations") or {}).values()]
    if len(addresses) != len(set(addresses)):
        raise SystemExit("duplicate tunnel addresses")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
