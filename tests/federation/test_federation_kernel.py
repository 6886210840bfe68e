"""Federation end to end in the kernel lab: two clusters, each with its own API server (kmock emulator),
its own operator and Kubernetes-mode agents doing the real data plane in the lab's namespaces.

- hub cluster: Node ``hub`` (InternalIP 192.0.2.1, podCIDR = the hub's LAN), a DMVPNHub on it (tunnel
  10.255.0.254/24, summaryPrefixes 10.1.0.0/16, IPsec required with a PSK Secret, Phase 3), its operator
  and ``dmvpn-agent --node hub --kubeconfig ...``; nothing in it describes the other cluster's spokes;
- edge cluster: Nodes ``spoke1``, ``spoke2``, one DMVPNSpoke each naming the hub only by
  ``{nbma: 192.0.2.1, tunnelAddress: 10.255.0.254, summaryPrefixes: [10.1.0.0/16]}``, explicit tunnel
  addresses, its operator and an agent per node.

The API servers listen on 192.0.2.200 in the lab's underlay namespace (setns is per thread: a thread of
this process enters it and serves both emulators); the operators are forked children of this process in
that namespace, the agents forked children in their sites' namespaces (dmvpn.lab.agents: imports take
minutes in an emulated guest, so children reuse the parent's). IPsec required, 10 ms one-way delay.
spoke2's agent starts once spoke1 is counted, so the hub cluster's count is seen to follow registrations.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import kmock
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "controller"))

from kubeharness import HUBS, NODES, SPOKES, ApiServer, Cluster, fast_config, hub, kubeconfig, node, spoke

from dmvpn.controller import core
from dmvpn.controller.main import run as run_operator
from dmvpn.lab.agents import PSK, AgentProcess, enter_netns, fork_in_netns, launch_kube_agent, wait_started
from dmvpn.lab.charon import start_charon
from dmvpn.lab.topology import Lab, Site, hub_and_spokes, ping

pytestmark = pytest.mark.kernel

T = TypeVar("T")
DELAY_MS = 10.0
API_ADDRESS = "192.0.2.200"  # on the underlay bridge, in the lab's own namespace
NAMESPACE = "kube-dmvpn"
SUMMARY = "10.1.0.0/16"
IPSEC = {"mode": "required", "psk": {"secretRef": {"name": "dmvpn-psk"}}}
NHRP = {"phase": 3}
START_TIMEOUT_S = 420.0  # imports are done, but kopf's start and the first IKE exchanges crawl under TCG
MAX_LOST = 2


class ControlPlane:
    """API emulators served by one thread of this process inside a lab namespace (until ``close``)."""

    def __init__(self, netns: str, address: str, names: Sequence[str]) -> None:
        self.netns = netns
        self.address = address
        self.names = list(names)
        self.clusters: dict[str, Cluster] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.failure: BaseException | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="control-plane", daemon=True)

    def start(self, timeout_s: float = 120.0) -> ControlPlane:
        self._thread.start()
        if not self._ready.wait(timeout_s) or self.failure is not None or self.loop is None:
            raise AssertionError(f"the API servers did not start within {timeout_s} s: {self.failure!r}")
        return self

    def _main(self) -> None:
        try:
            enter_netns(self.netns)  # this thread only: the test's own thread stays where it is
            asyncio.run(self._serve())
        except BaseException as error:  # reported by start() and close()
            self.failure = error
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            session = await stack.enter_async_context(aiohttp.ClientSession())
            for name in self.names:
                server = await stack.enter_async_context(ApiServer())
                http = await stack.enter_async_context(kmock.Server(server, host=self.address))
                server.resources.load_bundled()
                server.serve_crds()
                self.clusters[name] = Cluster(server=server, url=str(http.url).rstrip("/"), session=session)
            self.loop = asyncio.get_running_loop()
            self._ready.set()
            await self._stop.wait()

    def call(self, make: Callable[[], Awaitable[T]], timeout_s: float = 60.0) -> T:
        """Run ``make()`` (an API request) on the control plane's loop and return its result."""
        assert self.loop is not None

        async def wrapped() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout_s)

    def read(self, get: Callable[[], T]) -> T:
        """Read the emulators' state on their own thread (never while a request changes it)."""

        async def wrapped() -> T:
            return get()

        return self.call(wrapped, 30.0)

    def close(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the API servers did not stop within 30 s"


def fork_operator(netns: str, config_file: Path, log: Path) -> int:
    """The real operator (``dmvpn.controller.main.run``) in a child process, logged in with
    ``config_file`` (KUBECONFIG) as in a pod; short timer interval, the product's stale-after."""
    config = fast_config(
        interval=1.0,
        resync=10.0,
        rules=core.Config(stale_after=timedelta(seconds=180), cleanup_timeout=timedelta(seconds=30)),
    )

    def operator_main() -> int:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True, format="%(asctime)s %(message)s")
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # not every timer tick
        asyncio.run(run_operator(config))
        return 0

    return fork_in_netns(netns, log, operator_main, env={"KUBECONFIG": str(config_file)})


@contextlib.contextmanager
def children(pids: list[int]) -> Iterator[list[int]]:
    """Forked children (operators, agents) killed and reaped at the end, whatever the outcome."""
    try:
        yield pids
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def wait_for(check: Callable[[], T | None], timeout_s: float, what: str, logs: Callable[[], str]) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s\n{logs()}")
        time.sleep(0.5)


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def node_of(site: Site) -> dict[str, Any]:
    """The site as a Kubernetes Node: InternalIP = its NBMA address, podCIDR = its LAN."""
    body = node(site.name, internal=str(site.nbma))
    body["spec"] = {"podCIDRs": [str(site.lan)]}
    return body


def federated_spoke(site: Site, hub_site: Site) -> dict[str, Any]:
    """A DMVPNSpoke on the site's node that names the hub of the other cluster by its addresses only."""
    body = spoke(site.name, hubs=(), nodeName=site.name, ipsec=IPSEC, nhrp=NHRP,
                 tunnel={"greKey": 42, "address": f"{site.tunnel_ip}/24"})  # fmt: skip
    body["spec"]["hubs"] = [
        {"nbma": str(hub_site.nbma), "tunnelAddress": str(hub_site.tunnel_ip), "summaryPrefixes": [SUMMARY]}
    ]
    return body


def ready(status: dict[str, Any]) -> dict[str, Any] | None:
    return status if condition(status, "Ready").get("status") == "True" else None


def psk_secret() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "dmvpn-psk", "namespace": NAMESPACE},
        "data": {"psk": base64.b64encode(PSK.encode()).decode()},
    }


def gre_rx(site: Site) -> int:
    return site.ns.link_stats("dmvpn0")["rx"]


def shortcut_up(agent: AgentProcess) -> dict[str, Any] | None:
    for peer in agent.request("show dmvpn")["peers"]:
        if peer["kind"] == "shortcut" and peer["state"] == "up":
            return dict(peer)
    return None


def test_spoke_cluster_joins_hub_cluster_pods_reach_hub_and_other_spoke_directly(lab: Lab) -> None:
    hub_site, spoke1, spoke2 = hub_and_spokes(lab, spokes=2, delay_ms=DELAY_MS)
    assert hub_site.pod is not None and spoke1.pod is not None and spoke2.pod is not None
    inet = lab.underlay()
    inet.run("ip", "addr", "add", f"{API_ADDRESS}/24", "dev", "br0")
    plane = ControlPlane(inet.name, API_ADDRESS, ["hub", "edge"]).start()
    logs: dict[str, Path] = {}

    def tails() -> str:
        return "\n".join(
            f"--- {name} ({path})\n{path.read_text(errors='replace')[-2500:] if path.exists() else ''}"
            for name, path in logs.items()
        )

    try:
        hub_cluster, edge = plane.clusters["hub"], plane.clusters["edge"]
        rundir = lab.rundir / "clusters"
        rundir.mkdir(parents=True, exist_ok=True)
        configs = {name: kubeconfig(plane.clusters[name].url, rundir / f"{name}.kubeconfig") for name in plane.names}

        # hub cluster: its node, the hub, the PSK. Edge cluster: its nodes, a spoke per node naming the hub
        # by addresses only, the same PSK.
        hub_object = hub("hub", f"{hub_site.tunnel_ip}/24", nodeName="hub", ipsec=IPSEC, nhrp=NHRP,
                         summaryPrefixes=[SUMMARY])  # fmt: skip
        spoke_objects = [federated_spoke(site, hub_site) for site in (spoke1, spoke2)]
        for cluster, objects in ((hub_cluster, [node_of(hub_site), hub_object]),
                                 (edge, [node_of(spoke1), node_of(spoke2), *spoke_objects])):  # fmt: skip
            plane.call(lambda c=cluster: c.request("POST", f"/api/v1/namespaces/{NAMESPACE}/secrets", psk_secret()))
            for body in objects:
                plane.call(lambda c=cluster, b=body: c.create(b))

        vici = {site.name: start_charon(lab, site) for site in (hub_site, spoke1, spoke2)}
        with children([]) as pids:
            started = time.monotonic()
            for name in plane.names:
                logs[f"operator-{name}"] = rundir / f"operator-{name}.log"
                pids.append(fork_operator(inet.name, configs[name], logs[f"operator-{name}"]))
            agents: dict[str, AgentProcess] = {}

            def launch(site: Site, cluster_name: str) -> AgentProcess:
                agent = launch_kube_agent(lab, site, configs[cluster_name], namespace=NAMESPACE, vici=vici[site.name])
                agents[site.name] = agent
                logs[f"agent-{site.name}"] = agent.log
                pids.append(agent.pid)
                return agent

            def edge_status(name: str) -> dict[str, Any]:
                return plane.read(lambda: edge.status(SPOKES, name))

            def hub_status() -> dict[str, Any]:
                return plane.read(lambda: hub_cluster.status(HUBS, "hub"))

            def spoke_ready(site: Site) -> None:
                """The edge cluster's DMVPNSpoke accepted and Ready: registered with the remote hub."""
                status = wait_for(
                    lambda: ready(edge_status(site.name)),
                    START_TIMEOUT_S, f"DMVPNSpoke/{site.name} Ready in the edge cluster", tails,
                )  # fmt: skip
                assert condition(status, "Accepted")["status"] == "True", status
                assert status["readyNodes"] == 1 and status["hubsUp"] == 1, status
                entry = status["nodes"][site.name]
                assert entry["nhsUp"] == [str(hub_site.tunnel_ip)] and entry["nbma"] == str(site.nbma), entry

            def registered(count: int) -> dict[str, Any]:
                return wait_for(
                    lambda: (s := hub_status()) and int(s.get("registeredSpokes") or 0) == count and s,
                    120.0, f"registeredSpokes {count} on the hub cluster's DMVPNHub", tails,
                )  # fmt: skip

            # 1. The hub and spoke1 come up; the hub cluster counts one remote spoke.
            for agent in (launch(hub_site, "hub"), launch(spoke1, "edge")):
                wait_started(agent, START_TIMEOUT_S)
            print(f"\n[fed] hub and spoke1 agents running endpoints after {time.monotonic() - started:.1f} s")
            spoke_ready(spoke1)
            first = registered(1)
            assert first["nodes"]["hub"]["peers"] == 1, first
            print(f"[fed] spoke1 Ready after {time.monotonic() - started:.1f} s; hub: registeredSpokes 1")

            # 2. spoke2 joins: Ready in its cluster, counted by the hub's, with no object there describing it.
            wait_started(launch(spoke2, "edge"), START_TIMEOUT_S)
            spoke_ready(spoke2)
            status = registered(2)
            assert condition(status, "Ready")["status"] == "True", status
            assert status["nodes"]["hub"]["peers"] == 2 and status["nodes"]["hub"]["role"] == "hub", status
            assert plane.read(lambda: hub_cluster.server.stored_items(SPOKES)) == []
            hub_nodes = plane.read(lambda: hub_cluster.server.stored_items(NODES))
            assert [n["metadata"]["name"] for n in hub_nodes] == ["hub"]
            print(f"[fed] spoke2 Ready after {time.monotonic() - started:.1f} s; hub status.nodes: {status['nodes']}")

            # 3. A pod of the edge cluster reaches the pod behind the hub, through the hub.
            before = gre_rx(hub_site)
            sent, received = ping(spoke1.pod, str(hub_site.pod_ip), count=20, interval=0.1)
            assert sent - received <= MAX_LOST, f"lost {sent - received} of {sent} pings to the hub's pod"
            assert gre_rx(hub_site) - before >= received, "pings to the hub's pod must arrive over the tunnel"
            print(f"[fed] spoke1 pod -> hub pod: {received}/{sent}")

            # 4. ... and the pod at the other spoke: via the hub first, then directly once the shortcut is up.
            before = gre_rx(hub_site)
            sent, received = ping(spoke1.pod, str(spoke2.pod_ip), count=60, interval=0.05)
            via_hub = gre_rx(hub_site) - before
            assert sent - received <= MAX_LOST, f"lost {sent - received} of {sent} pings while the shortcut formed"
            assert via_hub > 0, "the first packets to the other spoke must go via the hub"
            shortcut = wait_for(lambda: shortcut_up(agents["spoke1"]), 60.0, "a shortcut at spoke1", tails)
            assert shortcut["tunnel"] == str(spoke2.tunnel_ip) and shortcut["ipsec"] == "up", shortcut
            print(f"[fed] spoke1 pod -> spoke2 pod: {received}/{sent}, {via_hub} packets at the hub; {shortcut}")

            before = gre_rx(hub_site)
            sent, received = ping(spoke1.pod, str(spoke2.pod_ip), count=20, interval=0.05)
            at_hub = gre_rx(hub_site) - before
            assert sent - received <= MAX_LOST, f"lost {sent - received} of {sent} pings on the direct path"
            assert at_hub <= 2, f"after the shortcut, pod traffic must bypass the hub ({at_hub} packets there)"
            print(f"[fed] direct: {received}/{sent}, {at_hub} packets at the hub")

            # 5. The edge cluster's status shows the shortcut (agent report, operator aggregate).
            spoke_status = wait_for(
                lambda: (s := edge_status("spoke1")) and int(s.get("shortcuts") or 0) >= 1 and s,
                60.0, "shortcuts >= 1 in DMVPNSpoke/spoke1's status", tails,
            )  # fmt: skip
            print(f"[fed] edge DMVPNSpoke/spoke1 status.nodes: {spoke_status['nodes']}")
            print(f"[fed] total {time.monotonic() - started:.1f} s from the first fork")
    finally:
        plane.close()
