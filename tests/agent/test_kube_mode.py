"""The agent's Kubernetes mode: the pure decision (objects + Node -> NodeConfig or why not), and the
list/watch/report loop against the API emulator (kmock over real HTTP) with a recording reconciler."""

from __future__ import annotations

import asyncio
import base64
import datetime
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "controller"))

from kubeharness import (
    HUBS,
    NODES,
    SPOKES,
    ApiServer,
    Cluster,
    Operator,
    OperatorFactory,
    eventually,
    fast_config,
    hub,
    kubeconfig,
    node,
    spoke,
)

from dmvpn.agent.config import ConfigError, HubPeer, NodeConfig, node_config
from dmvpn.agent.kube import (
    Apply,
    Hold,
    Idle,
    KubeAgent,
    KubeClient,
    NodeInfo,
    Target,
    decide,
    load_connection,
    mapping_secret_source,
    parse_objects,
)
from dmvpn.agent.plan import spoke_desired
from dmvpn.api import DMVPNHub, DMVPNSpoke, SecretKeyRef
from dmvpn.controller.access import AGENT_ACCESS, triples
from dmvpn.dataplane import Route

NOW = "2026-01-01T00:00:00Z"


def accepted(generation: int = 1, status: str = "True", reason: str = "Valid", message: str = "") -> dict[str, Any]:
    return {
        "type": "Accepted",
        "status": status,
        "observedGeneration": generation,
        "lastTransitionTime": NOW,
        "reason": reason,
        "message": message,
    }


def with_status(obj: dict[str, Any], generation: int = 1, **status: Any) -> dict[str, Any]:
    return {**obj, "metadata": {**obj["metadata"], "generation": generation}, "status": status}


def hubs_of(*objects: dict[str, Any]) -> dict[str, DMVPNHub]:
    return parse_objects(o for o in objects if o["kind"] == "DMVPNHub")


def spokes_of(*objects: dict[str, Any]) -> dict[str, DMVPNSpoke]:
    return parse_objects(o for o in objects if o["kind"] == "DMVPNSpoke")


SPOKE_NODE = NodeInfo(
    "spoke-a",
    labels={"dmvpn.io/role": "spoke"},
    addresses=({"type": "Hostname", "address": "spoke-a"}, {"type": "InternalIP", "address": "192.0.2.11"}),
    pod_cidrs=("10.244.1.0/24", "fd00::/64"),
)
HUB_NODE = NodeInfo(
    "hub-node", addresses=({"type": "InternalIP", "address": "192.0.2.1"},), pod_cidrs=("10.244.0.0/24",)
)
HUB = with_status(hub("hub-1", summaryPrefixes=["10.244.0.0/16"]), conditions=[accepted()], nbma="192.0.2.1")
SPOKE = with_status(spoke("spokes"), conditions=[accepted()], allocations={"spoke-a": "10.255.0.2/24"})
NO_SECRETS = mapping_secret_source({}, "kube-dmvpn")


def decide_for(node_info: NodeInfo, *objects: dict[str, Any], secrets: Any = NO_SECRETS) -> Any:
    return decide(node_info, hubs_of(*objects), spokes_of(*objects), secrets)


# --- the pure decision -------------------------------------------------------------------------


def test_accepted_spoke_with_allocation_becomes_the_standalone_node_config() -> None:
    decision = decide_for(SPOKE_NODE, HUB, SPOKE)
    assert isinstance(decision, Apply)
    assert decision.target == Target("DMVPNSpoke", "spokes")
    config = decision.config
    assert config == NodeConfig(
        node="spoke-a",
        object_name="spokes",
        role="spoke",
        interface=config.interface,
        nbma=IPv4Address("192.0.2.11"),  # the Node's InternalIP (spec.nbma.fromNode default)
        tunnel=IPv4Interface("10.255.0.2/24"),  # status.allocations[spoke-a]
        gre_key=42,
        ipsec=config.ipsec,  # defaults from the spec (mode disabled)
        site_prefixes=(IPv4Network("10.244.1.0/24"),),  # the Node's IPv4 podCIDRs
        hubs=(
            HubPeer(
                nbma=IPv4Address("192.0.2.1"),  # the hub's status.nbma
                tunnel_ip=IPv4Address("10.255.0.1"),
                name="hub-1",
                summary_prefixes=(IPv4Network("10.244.0.0/16"),),
            ),
        ),
    )


def test_hub_on_its_node_gets_nbma_from_the_node_and_prefixes_from_pod_cidrs() -> None:
    decision = decide_for(HUB_NODE, HUB, SPOKE)
    assert isinstance(decision, Apply)
    config = decision.config
    assert (config.role, config.nbma, config.tunnel) == (
        "hub",
        IPv4Address("192.0.2.1"),
        IPv4Interface("10.255.0.1/24"),
    )
    assert config.site_prefixes == (IPv4Network("10.244.0.0/24"),)
    assert config.summary_prefixes == (IPv4Network("10.244.0.0/16"),)


def test_same_config_as_standalone_mode_for_the_same_values() -> None:
    """With the cluster's values written into the objects, standalone mode builds the identical config."""
    decision = decide_for(SPOKE_NODE, HUB, SPOKE)
    assert isinstance(decision, Apply)
    explicit_hub = {**HUB, "spec": {**HUB["spec"], "nbma": {"address": "192.0.2.1"}}}
    explicit_spoke = {
        **SPOKE,
        "spec": {
            **SPOKE["spec"],
            "nodeName": "spoke-a",
            "nbma": {"address": "192.0.2.11"},
            "sitePrefixes": ["10.244.1.0/24"],
            "tunnel": {"greKey": 42, "address": "10.255.0.2/24"},
        },
    }
    del explicit_spoke["spec"]["nodeSelector"]
    objects = [*hubs_of(explicit_hub).values(), *spokes_of(explicit_spoke).values()]
    assert decision.config == node_config(objects, "spoke-a", NO_SECRETS)


def test_explicit_values_win_over_the_node() -> None:
    explicit = with_status(
        spoke(
            "s",
            nodeName="spoke-a",
            nbma={"address": "198.51.100.7"},
            sitePrefixes=[],
            tunnel={"greKey": 42, "address": "10.255.0.9/24"},
        ),
        conditions=[accepted()],
    )
    decision = decide_for(SPOKE_NODE, HUB, explicit)
    assert isinstance(decision, Apply)
    assert decision.config.nbma == IPv4Address("198.51.100.7")
    assert decision.config.tunnel == IPv4Interface("10.255.0.9/24")
    assert decision.config.site_prefixes == ()


def test_federated_hub_by_nbma_and_tunnel_address() -> None:
    federated = with_status(
        spoke("edge", hubs=(), nodeName="spoke-a", tunnel={"greKey": 42, "address": "10.255.0.20/24"}),
        conditions=[accepted()],
    )
    federated["spec"]["hubs"] = [
        {"nbma": "203.0.113.1", "tunnelAddress": "10.255.0.1", "summaryPrefixes": ["10.244.0.0/16"]}
    ]
    decision = decide_for(SPOKE_NODE, federated)
    assert isinstance(decision, Apply)
    hub_peer = HubPeer(
        nbma=IPv4Address("203.0.113.1"),
        tunnel_ip=IPv4Address("10.255.0.1"),
        summary_prefixes=(IPv4Network("10.244.0.0/16"),),  # what the spoke routes via the remote hub
    )
    assert decision.config.hubs == (hub_peer,)
    routes = spoke_desired(decision.config, [], {hub_peer.nbma}, set(), 0.0).routes
    assert Route(IPv4Network("10.244.0.0/16"), via=IPv4Address("10.255.0.1")) in routes


@pytest.mark.parametrize(
    ("conditions", "generation", "expected"),
    [
        ([], 1, "no Accepted condition"),
        ([accepted(status="False", reason="InvalidSpec", message="spec.tunnel.greKey: 7 differs")], 1, "InvalidSpec"),
        ([accepted(generation=1)], 2, "generation 2 not yet accepted"),
    ],
)
def test_not_accepted_for_the_current_generation_is_held(conditions: list[Any], generation: int, expected: str) -> None:
    held = with_status(
        spoke("spokes"), generation=generation, conditions=conditions, allocations={"spoke-a": "10.255.0.2/24"}
    )
    decision = decide_for(SPOKE_NODE, HUB, held)
    assert isinstance(decision, Hold)
    assert decision.target == Target("DMVPNSpoke", "spokes")
    assert expected in decision.reason


def test_not_selected_or_deleted_is_idle() -> None:
    other = NodeInfo("elsewhere", labels={"dmvpn.io/role": "edge"})
    assert isinstance(decide_for(other, HUB, SPOKE), Idle)
    deleting = {**SPOKE, "metadata": {**SPOKE["metadata"], "deletionTimestamp": NOW}}
    decision = decide_for(SPOKE_NODE, HUB, deleting)
    assert isinstance(decision, Idle) and "spoke-a" in decision.reason


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"allocations": {}}, "no tunnel address for node spoke-a yet"),
        ({"hub_nbma": None}, "DMVPNHub/hub-1 has no status.nbma yet"),
        ({"no_hub": True}, "no DMVPNHub named 'hub-1' in the cluster"),
        ({"node": NodeInfo("spoke-a", labels={"dmvpn.io/role": "spoke"})}, "no IPv4 address of type InternalIP"),
    ],
)
def test_missing_cluster_values_wait_with_a_message(change: dict[str, Any], expected: str) -> None:
    the_spoke = with_status(
        spoke("spokes"), conditions=[accepted()], allocations=change.get("allocations", {"spoke-a": "10.255.0.2/24"})
    )
    the_hub = with_status(hub("hub-1"), conditions=[accepted()], nbma=change.get("hub_nbma", "192.0.2.1"))
    objects = [the_spoke] if change.get("no_hub") else [the_hub, the_spoke]
    decision = decide_for(change.get("node", SPOKE_NODE), *objects)
    assert isinstance(decision, Hold)
    assert expected in decision.reason


def test_secrets_come_from_the_agent_namespace_and_are_validated() -> None:
    auth = {"authentication": {"secretRef": {"name": "nhrp", "key": "secret"}}}
    the_hub = with_status(hub("hub-1", nhrp=auth), conditions=[accepted()], nbma="192.0.2.1")
    the_spoke = with_status(
        spoke("spokes", nhrp=auth), conditions=[accepted()], allocations={"spoke-a": "10.255.0.2/24"}
    )
    missing = decide_for(SPOKE_NODE, the_hub, the_spoke)
    assert isinstance(missing, Hold) and "secret 'nhrp' not found in namespace kube-dmvpn" in missing.reason
    too_long = mapping_secret_source(
        {("kube-dmvpn", "nhrp"): {"secret": base64.b64encode(b"123456789").decode()}}, "kube-dmvpn"
    )
    assert isinstance(bad := decide_for(SPOKE_NODE, the_hub, the_spoke, secrets=too_long), Hold)
    assert "spec.nhrp.authentication" in bad.reason
    good = mapping_secret_source(
        {("kube-dmvpn", "nhrp"): {"secret": base64.b64encode(b"s3cret\n").decode()}}, "kube-dmvpn"
    )
    decision = decide_for(SPOKE_NODE, the_hub, the_spoke, secrets=good)
    assert isinstance(decision, Apply) and decision.config.auth_secret == b"s3cret"


def test_secret_source_names_the_missing_key() -> None:
    source = mapping_secret_source({("ns", "psk"): {"other": ""}}, "ns")
    with pytest.raises(ConfigError, match="has no key 'psk'"):
        source(SecretKeyRef(name="psk", key="psk"))


def test_a_node_runs_one_endpoint_hubs_first() -> None:
    both = with_status(
        spoke("spokes", nodeSelector={}), conditions=[accepted()], allocations={"hub-node": "10.255.0.3/24"}
    )
    decision = decide_for(HUB_NODE, HUB, both)
    assert isinstance(decision, Apply) and decision.target == Target("DMVPNHub", "hub-1")
    assert "also selected by DMVPNSpoke/spokes" in decision.note


def test_an_unaccepted_object_never_displaces_a_working_one() -> None:
    both = with_status(
        spoke("spokes", nodeSelector={}), conditions=[accepted()], allocations={"hub-node": "10.255.0.3/24"}
    )
    new_hub = with_status(hub("hub-1"), conditions=[], nbma="192.0.2.1")
    decision = decide(HUB_NODE, hubs_of(new_hub), spokes_of(both), NO_SECRETS)
    assert isinstance(decision, Apply) and decision.target == Target("DMVPNSpoke", "spokes")
    # the running object stays, also when its own newer generation is not accepted
    newer = with_status(spoke("spokes", nodeSelector={}), generation=2, conditions=[accepted()], allocations={})
    running = Target("DMVPNSpoke", "spokes")
    held = decide(HUB_NODE, hubs_of(HUB), spokes_of(newer), NO_SECRETS, running)
    assert isinstance(held, Hold) and held.target == running and "generation 2 not yet accepted" in held.reason


def test_node_info_reads_a_node_object() -> None:
    info = NodeInfo.from_object(node("n1", {"a": "b"}, internal="192.0.2.5"))
    assert info.name == "n1" and info.labels["a"] == "b" and info.pod_cidrs == ("10.244.0.0/24",)
    assert {"type": "InternalIP", "address": "192.0.2.5"} in info.addresses


# --- the loop against the emulator ---------------------------------------------------------------


@dataclass
class RecordingReconciler:
    """Stands in for the Agent: records what it is told to run."""

    applied: list[NodeConfig] = field(default_factory=list)
    teardowns: int = 0
    running: NodeConfig | None = None

    async def apply(self, config: NodeConfig) -> None:
        self.applied.append(config)
        self.running = config

    async def teardown(self) -> None:
        self.teardowns += 1
        self.running = None

    def status(self) -> dict[str, Any] | None:
        config = self.running
        if config is None:
            return None
        return {
            "role": config.role,
            "nbma": str(config.nbma),
            "tunnelAddress": str(config.tunnel),
            "nhsUp": [str(h.tunnel_ip) for h in config.hubs],
            "registered": True,
            "lastUpdate": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


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
    """The real operator (as in tests/controller), against the cluster fixture's emulator."""
    started: list[Operator] = []

    async def start(**changes: Any) -> Operator:
        running = await Operator(fast_config(**changes)).start()
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop()


@asynccontextmanager
async def running_agent(node_name: str, reconciler: RecordingReconciler) -> AsyncIterator[KubeAgent]:
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        agent = KubeAgent(
            KubeClient(load_connection(None), session), node_name, "kube-dmvpn", reconciler, poll_interval=0.1
        )
        task = asyncio.create_task(agent.run(stop))
        try:
            yield agent
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)


async def accept(cluster: Cluster, resource: str, name: str, **status: Any) -> None:
    generation = (cluster.get(resource, name) or {})["metadata"]["generation"]
    await cluster.patch(resource, name, {"status": {"conditions": [accepted(generation)], **status}}, "status")


async def setup(cluster: Cluster) -> None:
    await cluster.create(node("hub-node", internal="192.0.2.1"))
    await cluster.create(node("spoke-a", {"dmvpn.io/role": "spoke"}, internal="192.0.2.11"))
    await cluster.create(hub("hub-1"))
    await cluster.create(spoke("spokes"))
    await accept(cluster, HUBS, "hub-1", nbma="192.0.2.1")


def nodes_status(cluster: Cluster) -> dict[str, Any]:
    return dict(cluster.status(SPOKES, "spokes").get("nodes") or {})


async def test_agent_applies_the_accepted_spoke_and_reports_only_its_key(cluster: Cluster) -> None:
    await setup(cluster)
    other = {"role": "spoke", "registered": True, "lastUpdate": NOW, "message": "another node's report"}
    await cluster.report(SPOKES, "spokes", "spoke-b", other)
    await accept(cluster, SPOKES, "spokes", allocations={"spoke-a": "10.255.0.2/24", "spoke-b": "10.255.0.3/24"})
    reconciler = RecordingReconciler()
    async with running_agent("spoke-a", reconciler):
        await eventually(lambda: nodes_status(cluster).get("spoke-a"), what="spoke-a's report")
        [config] = reconciler.applied
        assert (config.role, config.nbma, config.tunnel) == (
            "spoke",
            IPv4Address("192.0.2.11"),
            IPv4Interface("10.255.0.2/24"),
        )
        assert config.hubs[0].nbma == IPv4Address("192.0.2.1") and config.site_prefixes == (
            IPv4Network("10.244.0.0/24"),
        )
        reported = nodes_status(cluster)
        assert reported["spoke-b"] == other  # another node's key is untouched
        assert reported["spoke-a"]["tunnelAddress"] == "10.255.0.2/24" and reported["spoke-a"]["registered"] is True
        assert "conditions" in cluster.status(SPOKES, "spokes")  # operator-owned fields untouched
        assert "spoke-a" not in (cluster.status(HUBS, "hub-1").get("nodes") or {})


async def test_unaccepted_generation_is_not_applied_and_the_last_one_keeps_running(cluster: Cluster) -> None:
    await setup(cluster)
    reconciler = RecordingReconciler()
    async with running_agent("spoke-a", reconciler) as agent:
        await eventually(lambda: nodes_status(cluster).get("spoke-a"), what="a waiting report")
        assert reconciler.applied == []  # generation 1 is not accepted yet
        assert "not yet accepted" in nodes_status(cluster)["spoke-a"]["message"]
        await accept(cluster, SPOKES, "spokes", allocations={"spoke-a": "10.255.0.2/24"})
        await eventually(lambda: reconciler.applied, what="the accepted generation applied")
        # a new generation (MTU change) the operator has not accepted: keep running generation 1
        await cluster.patch(SPOKES, "spokes", {"spec": {"tunnel": {"mtu": 1300}}})
        await eventually(
            lambda: "keeps running" in nodes_status(cluster)["spoke-a"].get("message", ""), what="hold message"
        )
        assert [c.mtu for c in reconciler.applied] == [1400] and reconciler.teardowns == 0
        assert isinstance(agent.decision, Hold)
        await accept(cluster, SPOKES, "spokes")
        await eventually(lambda: len(reconciler.applied) == 2, what="generation 2 applied")
        assert reconciler.applied[-1].mtu == 1300


async def test_deselected_node_tears_down_then_removes_its_key(cluster: Cluster) -> None:
    await setup(cluster)
    await accept(cluster, SPOKES, "spokes", allocations={"spoke-a": "10.255.0.2/24"})
    await cluster.report(SPOKES, "spokes", "spoke-b", {"role": "spoke", "lastUpdate": NOW})
    reconciler = RecordingReconciler()
    async with running_agent("spoke-a", reconciler):
        await eventually(lambda: nodes_status(cluster).get("spoke-a"), what="spoke-a's report")
        await cluster.patch(NODES, "spoke-a", {"metadata": {"labels": {"dmvpn.io/role": None}}})
        await eventually(lambda: "spoke-a" not in nodes_status(cluster), what="spoke-a's key removed")
        assert reconciler.teardowns == 1 and reconciler.running is None
        assert "spoke-b" in nodes_status(cluster)


async def test_deletion_tears_down_and_removes_the_key(cluster: Cluster) -> None:
    await setup(cluster)
    await accept(cluster, SPOKES, "spokes", allocations={"spoke-a": "10.255.0.2/24"})
    await cluster.patch(SPOKES, "spokes", {"metadata": {"finalizers": ["dmvpn.io/cleanup"]}})
    reconciler = RecordingReconciler()
    async with running_agent("spoke-a", reconciler):
        await eventually(lambda: nodes_status(cluster).get("spoke-a"), what="spoke-a's report")
        await cluster.delete(SPOKES, "spokes")  # held by the finalizer: deletionTimestamp set
        await eventually(lambda: "spoke-a" not in nodes_status(cluster), what="spoke-a's key removed")
        assert reconciler.teardowns == 1


@dataclass
class FailingReconciler(RecordingReconciler):
    """The first ``failures`` applies raise, as the real one does when the kernel refuses the tunnel."""

    failures: int = 1
    attempts: int = 0

    async def apply(self, config: NodeConfig) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise RuntimeError("create GRE device dmvpn0: ENOTSUP (Operation not supported)")
        await super().apply(config)


async def test_a_failed_start_is_reported_and_retried_not_fatal(cluster: Cluster) -> None:
    await setup(cluster)
    await accept(cluster, SPOKES, "spokes", allocations={"spoke-a": "10.255.0.2/24"})
    reconciler = FailingReconciler(failures=2)
    async with running_agent("spoke-a", reconciler) as agent:
        failed = await eventually(
            lambda: (
                "ENOTSUP" in (nodes_status(cluster).get("spoke-a") or {}).get("message", "")
                and nodes_status(cluster)["spoke-a"]
            ),
            what="the failure in spoke-a's report",
        )
        assert failed["registered"] is False and "starting the endpoint failed" in failed["message"], failed
        await eventually(lambda: reconciler.applied, what="a retry that succeeds")
        await eventually(lambda: nodes_status(cluster)["spoke-a"].get("registered") is True, what="the live report")
        assert reconciler.attempts == 3 and agent.running == Target("DMVPNSpoke", "spokes")
        assert "ENOTSUP" not in nodes_status(cluster)["spoke-a"].get("message", "")


async def test_missing_node_is_reported_and_waited_for(cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    await cluster.create(hub("hub-1"))
    reconciler = RecordingReconciler()
    async with running_agent("hub-node", reconciler):
        await eventually(lambda: "node hub-node not found" in caplog.text, what="a message")
        await cluster.create(node("hub-node", internal="192.0.2.1"))
        await accept(cluster, HUBS, "hub-1")
        await eventually(lambda: reconciler.applied, what="the hub applied once the Node exists")
        assert reconciler.applied[0].role == "hub"


async def test_api_unreachable_is_logged_and_retried(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig("http://127.0.0.1:9", tmp_path / "kubeconfig")))
    async with running_agent("n1", RecordingReconciler()):
        await eventually(lambda: "watching /api/v1/nodes failed" in caplog.text, what="a logged failure")


def agent_triples(calls: Counter[Any]) -> set[tuple[str, str, str]]:
    return {(call.group, call.resource, call.verb) for call in calls if call.resource}


async def test_secrets_from_the_api_and_every_call_is_declared_agent_access(cluster: Cluster) -> None:
    await cluster.request(
        "POST",
        "/api/v1/namespaces/kube-dmvpn/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "nhrp", "namespace": "kube-dmvpn"},
            "data": {"secret": base64.b64encode(b"s3cret").decode()},
        },
    )
    auth = {"authentication": {"secretRef": {"name": "nhrp", "key": "secret"}}}
    await cluster.create(node("hub-node", internal="192.0.2.1"))
    await cluster.create(hub("hub-1", nhrp=auth))
    await accept(cluster, HUBS, "hub-1", nbma="192.0.2.1")
    before = Counter(cluster.server.calls)
    reconciler = RecordingReconciler()
    async with running_agent("hub-node", reconciler):
        await eventually(lambda: reconciler.applied, what="the hub applied")
        assert reconciler.applied[0].auth_secret == b"s3cret"
        await eventually(lambda: cluster.status(HUBS, "hub-1").get("nodes", {}).get("hub-node"), what="report")
    used = agent_triples(Counter(cluster.server.calls) - before)
    assert used <= triples(AGENT_ACCESS), used - triples(AGENT_ACCESS)
    assert ("", "secrets", "get") in used and ("dmvpn.io", "dmvpnhubs/status", "patch") in used


async def test_report_is_refreshed_without_changes(cluster: Cluster) -> None:
    await setup(cluster)
    await accept(cluster, SPOKES, "spokes", allocations={"spoke-a": "10.255.0.2/24"})
    reconciler = RecordingReconciler()
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        client = KubeClient(load_connection(None), session)
        agent = KubeAgent(client, "spoke-a", "kube-dmvpn", reconciler, poll_interval=0.1, report_interval=1.0)
        task = asyncio.create_task(agent.run(stop))
        try:
            first = await eventually(lambda: nodes_status(cluster)["spoke-a"]["lastUpdate"], what="report")
            await eventually(lambda: nodes_status(cluster)["spoke-a"]["lastUpdate"] != first, within=5, what="refresh")
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    assert len(reconciler.applied) == 1


async def test_with_the_real_operator_allocation_to_ready(cluster: Cluster, operator: OperatorFactory) -> None:
    """Operator and agent together: the operator accepts and allocates, the agent applies and reports,
    the operator counts the node ready."""
    await cluster.create(node("hub-node", internal="192.0.2.1"))
    await cluster.create(node("spoke-a", {"dmvpn.io/role": "spoke"}, internal="192.0.2.11"))
    await cluster.create(hub("hub-1"))
    await cluster.create(spoke("spokes"))
    await operator()
    reconciler = RecordingReconciler()
    async with running_agent("spoke-a", reconciler):
        await eventually(lambda: reconciler.applied, within=30, what="the allocated spoke applied")
        address = cluster.status(SPOKES, "spokes")["allocations"]["spoke-a"]
        assert str(reconciler.applied[0].tunnel) == address
        await eventually(lambda: cluster.status(SPOKES, "spokes").get("readyNodes") == 1, within=30, what="Ready")
