"""``dmvpn-agent --node NAME`` without ``--standalone``: the agent fed from the Kubernetes API.

The contract with the operator is docs/operator.md ("The operator <-> agent contract"). This module has
three parts:

- :func:`decide`, pure: (its Node, the hubs and spokes, the Secrets) -> :class:`Apply` a ``NodeConfig``,
  :class:`Hold` (selected, but not usable now: keep what runs, say why) or :class:`Idle` (nothing
  selects the node: tear down). The ``NodeConfig`` is built by the same code as in standalone mode
  (``dmvpn.agent.config``), from copies of the objects with the values the cluster provides filled in.
- :class:`KubeClient`, :class:`Watcher`: list+watch over aiohttp, retried with backoff and logged.
- :class:`KubeAgent`: the loop that decides on every change (and every few seconds), drives a
  :class:`Reconciler` and merge-patches ``status.nodes.<node>`` only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Literal, Protocol

import aiohttp

from dmvpn.agent.agent import Agent
from dmvpn.agent.config import (
    ConfigError,
    NodeConfig,
    SecretSource,
    endpoint_config,
    hub_peers_of,
    peer_spokes_of,
)
from dmvpn.agent.control import ControlServer
from dmvpn.agent.metrics import Metrics, MetricsObserver
from dmvpn.agent.nodestate import node_state, write_node_state
from dmvpn.agent.views import COMMANDS, node_status
from dmvpn.api import (
    CONDITION_ACCEPTED,
    DMVPNHub,
    DMVPNObject,
    DMVPNSpoke,
    NodeStatus,
    SecretKeyRef,
    ValidationFailed,
    nbma_for_node,
    parse_object,
    selects_node,
    site_prefixes_for_node,
    spoke_tunnel_address,
)

log = logging.getLogger("dmvpn.agent.kube")

HUBS = "/apis/dmvpn.io/v1alpha1/dmvpnhubs"
SPOKES = "/apis/dmvpn.io/v1alpha1/dmvpnspokes"
NODES = "/api/v1/nodes"
REPORT_INTERVAL = 60.0  # docs/operator.md: lastUpdate at least every --stale-after/3 = 60 s by default
POLL_INTERVAL = 2.0  # how often the running endpoint's live state is compared with the last report
MAX_BACKOFF = 30.0
SECRET_RETRY = 10.0  # a missing Secret is looked for again this often

Kind = Literal["DMVPNHub", "DMVPNSpoke"]


# --- the pure decision ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeInfo:
    """What the agent reads from its own Node."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    addresses: tuple[Mapping[str, str], ...] = ()
    pod_cidrs: tuple[str, ...] = ()

    @classmethod
    def from_object(cls, raw: Mapping[str, Any]) -> NodeInfo:
        metadata = raw.get("metadata") or {}
        spec = raw.get("spec") or {}
        pod_cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
        return cls(
            name=str(metadata.get("name", "")),
            labels=dict(metadata.get("labels") or {}),
            addresses=tuple((raw.get("status") or {}).get("addresses") or ()),
            pod_cidrs=tuple(pod_cidrs),
        )


@dataclass(frozen=True)
class Target:
    """One object, as the agent names it in logs and status patches."""

    kind: Kind
    name: str

    @property
    def path(self) -> str:
        return f"{HUBS if self.kind == 'DMVPNHub' else SPOKES}/{self.name}"

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class Apply:
    """Run ``config`` for ``target``."""

    target: Target
    config: NodeConfig
    note: str = ""


@dataclass(frozen=True)
class Hold:
    """``target`` selects the node but cannot be applied now: keep what runs, report ``reason``."""

    target: Target
    role: Literal["hub", "spoke"]
    reason: str


@dataclass(frozen=True)
class Idle:
    """Nothing to run on this node: tear down whatever runs."""

    reason: str


Decision = Apply | Hold | Idle


def target_of(obj: DMVPNObject) -> Target:
    return Target(obj.kind, obj.name)


def is_deleting(obj: DMVPNObject) -> bool:
    extra = obj.metadata.model_extra or {}
    return bool(extra.get("deletionTimestamp") or extra.get("deletion_timestamp"))


def acceptance_problem(obj: DMVPNObject) -> str | None:
    """None if the operator accepted the object's current generation, else why it may not be applied."""
    condition = obj.status.condition(CONDITION_ACCEPTED)
    generation = obj.metadata.generation
    if condition is None:
        return f"{obj.kind}/{obj.name}: not yet accepted by the operator (no Accepted condition)"
    if condition.status != "True":
        return f"{obj.kind}/{obj.name}: generation {generation} not accepted: {condition.reason}: {condition.message}"
    if condition.observed_generation != generation:
        return (
            f"{obj.kind}/{obj.name}: generation {generation} not yet accepted "
            f"(Accepted is for generation {condition.observed_generation})"
        )
    return None


def secret_refs(obj: DMVPNObject) -> list[SecretKeyRef]:
    """Every Secret key the object refers to."""
    refs: list[SecretKeyRef] = []
    ipsec = obj.spec.ipsec
    if ipsec.mode == "required" and ipsec.psk is not None:
        refs.append(ipsec.psk.secret_ref)
    if ipsec.mode == "required" and ipsec.x509 is not None:
        refs += [ipsec.x509.certificate_secret_ref, ipsec.x509.key_secret_ref, ipsec.x509.ca_secret_ref]
    if obj.spec.nhrp.authentication is not None:
        refs.append(obj.spec.nhrp.authentication.secret_ref)
    return refs


def selecting(node: NodeInfo, objects: Iterable[DMVPNObject]) -> list[DMVPNObject]:
    """Objects that select the node and are not being deleted: hubs first, then by name."""
    mine = [o for o in objects if not is_deleting(o) and selects_node(o.spec, node.name, node.labels)]
    return sorted(mine, key=lambda o: (o.kind != "DMVPNHub", o.name))


def _with_cluster_values(obj: DMVPNObject, nbma: IPv4Address, prefixes: list[IPv4Network]) -> DMVPNObject:
    """A copy with what standalone mode needs explicit filled in from the cluster."""
    spec = obj.spec.model_copy(
        update={"nbma": obj.spec.nbma.model_copy(update={"address": nbma}), "site_prefixes": prefixes}
    )
    return obj.model_copy(update={"spec": spec})


def _in_cluster_hubs(spoke: DMVPNSpoke, hubs: Mapping[str, DMVPNHub]) -> dict[str, DMVPNHub]:
    """The spoke's named hubs, with their NBMA from ``status.nbma`` (what their agents use)."""
    resolved: dict[str, DMVPNHub] = {}
    for index, ref in enumerate(spoke.spec.hubs):
        if ref.name is None:
            continue
        hub = hubs.get(ref.name)
        where = f"DMVPNSpoke/{spoke.name}: spec.hubs[{index}].name"
        if hub is None:
            raise ConfigError(f"{where}: no DMVPNHub named {ref.name!r} in the cluster")
        nbma = hub.spec.nbma.address or hub.status.nbma
        if nbma is None:
            raise ConfigError(f"{where}: DMVPNHub/{hub.name} has no status.nbma yet (waiting for the operator)")
        # a hub's sitePrefixes default to its node's podCIDRs, which only its own agent reads
        resolved[hub.name] = _with_cluster_values(hub, nbma, list(hub.spec.site_prefixes or ()))  # type: ignore[assignment]
    return resolved


def node_config_for(
    obj: DMVPNObject, node: NodeInfo, hubs: Mapping[str, DMVPNHub], spokes: Iterable[DMVPNSpoke], secrets: SecretSource
) -> NodeConfig:
    """The NodeConfig of ``obj`` on ``node`` (Kubernetes rules); ConfigError says what is missing."""
    nbma = nbma_for_node(obj.spec.nbma, node.addresses)
    if nbma is None:
        raise ConfigError(
            f"{obj.kind}/{obj.name}: node {node.name} has no IPv4 address of type {obj.spec.nbma.from_node} "
            "(spec.nbma.fromNode); set spec.nbma.address or give the node one"
        )
    filled = _with_cluster_values(obj, nbma, site_prefixes_for_node(obj.spec, node.pod_cidrs))
    if isinstance(filled, DMVPNHub):
        config = endpoint_config(filled, node.name, filled.spec.tunnel.address, secrets)
        return replace(config, summary_prefixes=tuple(filled.spec.summary_prefixes))
    address = spoke_tunnel_address(filled, node.name)
    if address is None:
        raise ConfigError(
            f"DMVPNSpoke/{obj.name}: no tunnel address for node {node.name} yet "
            "(waiting for the operator's status.allocations)"
        )
    config = endpoint_config(filled, node.name, address, secrets)
    peers = hub_peers_of(filled, _in_cluster_hubs(filled, hubs))
    return replace(config, hubs=peers, peer_spokes=peer_spokes_of(filled, spokes))


def decide(
    node: NodeInfo,
    hubs: Mapping[str, DMVPNHub],
    spokes: Mapping[str, DMVPNSpoke],
    secrets: SecretSource,
    running: Target | None = None,
) -> Decision:
    """What this node should run now, by the contract in docs/operator.md.

    A node runs one endpoint: the object it is ``running`` while that still selects it (a newer generation
    the operator has not accepted keeps the last applied one running), else the first accepted of the
    selecting objects (hubs first, then by name), so an object not (yet) accepted never displaces one
    that works.
    """
    candidates = selecting(node, [*hubs.values(), *spokes.values()])
    if not candidates:
        return Idle(f"no DMVPNHub or DMVPNSpoke selects node {node.name}")
    current = [o for o in candidates if target_of(o) == running]
    usable = [o for o in candidates if acceptance_problem(o) is None]
    obj = (current or usable or candidates)[0]
    target = target_of(obj)
    role: Literal["hub", "spoke"] = "hub" if isinstance(obj, DMVPNHub) else "spoke"
    note = ""
    if len(candidates) > 1:
        others = ", ".join(str(target_of(o)) for o in candidates if o is not obj)
        note = f"node {node.name} runs one endpoint: {target} (also selected by {others}, ignored)"
    problem = acceptance_problem(obj)
    if problem is not None:
        return Hold(target, role, "; ".join(m for m in (problem, note) if m))
    try:
        config = node_config_for(obj, node, hubs, spokes.values(), secrets)
    except ConfigError as error:
        return Hold(target, role, "; ".join(m for m in (str(error), note) if m))
    return Apply(target, config, note)


def mapping_secret_source(values: Mapping[tuple[str, str], Mapping[str, str]], namespace: str) -> SecretSource:
    """Secrets as fetched from the API: ``{(namespace, name): data}`` with base64 values."""

    def read(ref: SecretKeyRef) -> bytes:
        where = ref.namespace_or(namespace)
        data = values.get((where, ref.name))
        if data is None:
            raise ConfigError(f"secret {ref.name!r} not found in namespace {where}")
        if ref.key not in data:
            raise ConfigError(f"secret {ref.name!r} in namespace {where} has no key {ref.key!r}")
        return base64.b64decode(data[ref.key])

    return read


def node_status_entry(status: Mapping[str, Any]) -> dict[str, Any]:
    """``status.nodes.<node>`` as the API model writes it (validated)."""
    return NodeStatus.model_validate(status).model_dump(mode="json", by_alias=True, exclude_none=True)


def waiting_status(role: str, message: str, now: str) -> dict[str, Any]:
    return {"role": role, "registered": False, "lastUpdate": now, "message": message}


# --- the reconciler the loop drives ---------------------------------------------------------------


class Reconciler(Protocol):
    """Runs at most one endpoint on the node (the real one builds and replaces :class:`Agent`)."""

    async def apply(self, config: NodeConfig) -> None:
        """Run ``config``; a different config replaces the running endpoint (restart adoption keeps paths)."""

    async def teardown(self) -> None:
        """Remove the running endpoint's tunnel, routes, NHRP state and SAs from the node."""

    def status(self) -> dict[str, Any] | None:
        """The running endpoint's ``status.nodes`` entry (``views.node_status``), None if none runs."""


# --- API access --------------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, method: str, path: str, text: str) -> None:
        self.status = status
        hint = {401: " (not authenticated)", 403: " (forbidden: check the agent's RBAC, chart ClusterRole/Role)"}
        super().__init__(f"{method} {path}: HTTP {status}{hint.get(status, '')}: {text[:300]}")


@dataclass(frozen=True)
class Connection:
    host: str
    headers: Mapping[str, str]
    ssl: ssl.SSLContext | bool


def load_connection(kubeconfig: Path | None) -> Connection:
    """In-cluster service account, else ``--kubeconfig`` / ``KUBECONFIG`` / ``~/.kube/config``."""
    from kubernetes import client, config  # the official client only parses the configuration

    configuration = client.Configuration()
    if kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        # the client reads KUBECONFIG once at import; read it now (tests and restarts change it)
        path = kubeconfig or Path(os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0]).expanduser()
        config.load_kube_config(config_file=str(path), client_configuration=configuration)  # type: ignore[no-untyped-call]
    headers = {"User-Agent": "dmvpn-agent"}
    token = (configuration.api_key or {}).get("authorization")
    if token:
        headers["Authorization"] = token if token.startswith("Bearer ") else f"Bearer {token}"
    context: ssl.SSLContext | bool = False
    if str(configuration.host).startswith("https"):
        context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
        if configuration.cert_file:
            context.load_cert_chain(configuration.cert_file, configuration.key_file)
        if not configuration.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    return Connection(str(configuration.host).rstrip("/"), headers, context)


class KubeClient:
    """The few requests the agent makes (declared in ``dmvpn.controller.access.AGENT_ACCESS``)."""

    def __init__(self, connection: Connection, session: aiohttp.ClientSession) -> None:
        self.connection = connection
        self.session = session

    async def request(self, method: str, path: str, body: Any = None, **params: str) -> Any:
        headers = dict(self.connection.headers)
        if body is not None:
            headers["Content-Type"] = "application/merge-patch+json"
        async with self.session.request(
            method, self.connection.host + path, json=body, params=params, headers=headers, ssl=self.connection.ssl
        ) as response:
            if response.status >= 400:
                raise ApiError(response.status, method, path, await response.text())
            return await response.json()

    async def get(self, path: str, **params: str) -> Any:
        return await self.request("GET", path, **params)

    async def patch_status(self, target: Target, node: str, entry: dict[str, Any] | None) -> None:
        """The agent's only write: its own key of ``status.nodes`` on the /status subresource."""
        await self.request("PATCH", f"{target.path}/status", {"status": {"nodes": {node: entry}}})

    async def watch(self, path: str, **params: str) -> Any:
        """Yields watch events (dicts) until the server ends the stream."""
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with self.session.get(
            self.connection.host + path,
            params={**params, "watch": "true"},
            headers=dict(self.connection.headers),
            ssl=self.connection.ssl,
            timeout=timeout,
        ) as response:
            if response.status >= 400:
                raise ApiError(response.status, "GET", path + "?watch", await response.text())
            async for line in response.content:
                if line.strip():
                    yield json.loads(line)


class Watcher:
    """One resource kept in memory by list+watch; reconnects with backoff, logging why."""

    def __init__(
        self, client: KubeClient, path: str, changed: asyncio.Event, *, field_selector: str | None = None
    ) -> None:
        self.client = client
        self.path = path
        self.changed = changed
        self.params = {"fieldSelector": field_selector} if field_selector else {}
        self.items: dict[str, dict[str, Any]] = {}
        self.synced = asyncio.Event()
        self.last_error: str | None = None
        self._name = field_selector.split("=", 1)[1] if field_selector else None

    def _keep(self, raw: Mapping[str, Any]) -> bool:
        return self._name is None or raw.get("metadata", {}).get("name") == self._name  # fieldSelector may be ignored

    async def run(self) -> None:
        backoff = 1.0
        while True:
            try:
                listing = await self.client.get(self.path, **self.params)
                self.items = {i["metadata"]["name"]: i for i in listing.get("items") or [] if self._keep(i)}
                self.synced.set()
                self.last_error = None
                self.changed.set()
                backoff = 1.0
                async for event in self.client.watch(self.path, **self.params):
                    self._on_event(event)
                log.info("watch of %s ended; listing again", self.path)
            except asyncio.CancelledError:
                raise
            except (ApiError, aiohttp.ClientError, OSError, ValueError) as error:
                self.last_error = str(error) or type(error).__name__
                log.warning("watching %s failed: %s; retrying in %.0f s", self.path, self.last_error, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _on_event(self, event: Mapping[str, Any]) -> None:
        raw = event.get("object") or {}
        if event.get("type") == "ERROR" or not isinstance(raw, Mapping) or not self._keep(raw):
            return
        name = raw.get("metadata", {}).get("name")
        if not name:
            return
        if event.get("type") == "DELETED":
            self.items.pop(name, None)
        else:
            self.items[name] = dict(raw)
        self.changed.set()


def parse_objects(raws: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Objects by name; one that does not parse is skipped (the operator will not accept it either)."""
    objects: dict[str, Any] = {}
    for raw in raws:
        try:
            obj = parse_object(dict(raw))
        except ValidationFailed as error:
            log.debug("skipping %s: %s", raw.get("metadata", {}).get("name"), error)
            continue
        objects[obj.name] = obj
    return objects


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the loop ----------------------------------------------------------------------------------


class KubeAgent:
    """Watches, decides, drives the reconciler and reports, until ``stop`` is set."""

    def __init__(
        self,
        client: KubeClient,
        node: str,
        namespace: str,
        reconciler: Reconciler,
        *,
        report_interval: float = REPORT_INTERVAL,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.client = client
        self.node = node
        self.namespace = namespace
        self.reconciler = reconciler
        self.report_interval = report_interval
        self.poll_interval = poll_interval
        self.changed = asyncio.Event()
        self.hubs = Watcher(client, HUBS, self.changed)
        self.spokes = Watcher(client, SPOKES, self.changed)
        self.nodes = Watcher(client, NODES, self.changed, field_selector=f"metadata.name={node}")
        self.running: Target | None = None
        self.config: NodeConfig | None = None
        self.decision: Decision | None = None
        self._reported: dict[Target, tuple[dict[str, Any], float]] = {}  # last entry (without lastUpdate), when
        self._complaint: str | None = None
        self._apply_failure: str | None = None
        self.secret_refresh = report_interval
        self.secret_retry = SECRET_RETRY
        self._secret_cache: dict[tuple[str, str], tuple[Mapping[str, str] | None, float]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        watchers = [self.hubs, self.spokes, self.nodes]
        tasks = [asyncio.create_task(w.run(), name=f"watch {w.path}") for w in watchers]
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):  # timeout(), not wait_for: see Agent._timer_loop
                    async with asyncio.timeout(self.poll_interval):
                        await self._wake(stop)
                if stop.is_set():
                    break
                self.changed.clear()
                if all(w.synced.is_set() for w in watchers):
                    await self._step_logged()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _wake(self, stop: asyncio.Event) -> None:
        waits = [asyncio.create_task(self.changed.wait()), asyncio.create_task(stop.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()

    async def _step_logged(self) -> None:
        try:
            await self.step()
        except (ApiError, aiohttp.ClientError, OSError) as error:
            self._complain(f"API request failed: {error}; retrying")
        except ConfigError as error:
            self._complain(str(error))

    async def _fetch_secret(self, namespace: str, name: str) -> Mapping[str, str] | None:
        try:
            secret = await self.client.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        except ApiError as error:
            if error.status != 404:
                raise
            return None  # the decision reports it as a missing Secret
        return dict(secret.get("data") or {})

    def _complain(self, message: str) -> None:
        if message != self._complaint:  # once per change, not every poll
            log.warning("%s", message)
        self._complaint = message

    async def _secrets(self, objects: Iterable[DMVPNObject]) -> SecretSource:
        """The Secrets the objects name, each re-read at most every ``secret_refresh`` s (a missing one
        every ``secret_retry`` s): steps run every poll, and 1000 agents must not GET Secrets that often."""
        now = asyncio.get_running_loop().time()
        values: dict[tuple[str, str], Mapping[str, str]] = {}
        for obj in objects:
            for ref in secret_refs(obj):
                key = (ref.namespace_or(self.namespace), ref.name)
                cached = self._secret_cache.get(key)
                if cached is None or now - cached[1] > (
                    self.secret_refresh if cached[0] is not None else self.secret_retry
                ):
                    cached = (await self._fetch_secret(*key), now)
                    self._secret_cache[key] = cached
                if cached[0] is not None:
                    values[key] = cached[0]
        return mapping_secret_source(values, self.namespace)

    async def step(self) -> None:
        """One pass: decide, apply, report (and remove reports of objects no longer run here)."""
        raw_node = self.nodes.items.get(self.node)
        if raw_node is None:
            self._complain(f"node {self.node} not found in the API (check --node / NODE_NAME); waiting")
            return
        node = NodeInfo.from_object(raw_node)
        hubs = parse_objects(self.hubs.items.values())
        spokes = parse_objects(self.spokes.items.values())
        secrets = await self._secrets(selecting(node, [*hubs.values(), *spokes.values()]))
        decision = decide(node, hubs, spokes, secrets, self.running)
        if decision != self.decision:
            log.info("decision for node %s: %s", self.node, _describe(decision))
        self.decision = decision
        current = await self._carry_out(decision)
        await self._remove_stale_reports(current, [*hubs.values(), *spokes.values()])
        self._complaint = None

    async def _carry_out(self, decision: Decision) -> Target | None:
        if isinstance(decision, Idle):
            await self._stop_running()
            return None
        if self.running is not None and self.running != decision.target:
            await self._stop_running()
        if isinstance(decision, Apply):
            if decision.config != self.config:
                try:
                    await self.reconciler.apply(decision.config)
                except Exception as error:  # the kernel or charon refused: report it, retry on the next step
                    self.running, self.config = None, None  # the reconciler runs nothing now
                    reason = f"{decision.target}: starting the endpoint failed: {error}; retrying"
                    if reason != self._apply_failure:  # once per change, not every poll
                        log.error("%s", reason)
                    self._apply_failure = reason
                    await self._report(decision.target, waiting_status(decision.config.role, reason, _now()))
                    return decision.target
                self.config = decision.config
                self._apply_failure = None
            self.running = decision.target
            await self._report(decision.target, self._live_status(decision.note))
        elif self.running == decision.target:  # a newer generation is not usable: keep running the last one
            await self._report(decision.target, self._live_status(f"keeps running the last applied: {decision.reason}"))
        else:
            await self._report(decision.target, waiting_status(decision.role, decision.reason, _now()))
        return decision.target

    def _live_status(self, message: str) -> dict[str, Any]:
        status = dict(self.reconciler.status() or {})
        if message:
            status["message"] = "; ".join(m for m in (status.get("message"), message) if m)
        status.setdefault("lastUpdate", _now())
        return status

    async def _stop_running(self) -> None:
        if self.running is None:
            return
        log.info("tearing down %s on node %s", self.running, self.node)
        await self.reconciler.teardown()
        self.running = None
        self.config = None

    async def _report(self, target: Target, status: dict[str, Any]) -> None:
        entry = node_status_entry(status)
        compared = {k: v for k, v in entry.items() if k != "lastUpdate"}
        last = self._reported.get(target)
        loop = asyncio.get_running_loop()
        if last is not None and last[0] == compared and loop.time() - last[1] < self.report_interval:
            return
        try:
            await self.client.patch_status(target, self.node, entry)
        except ApiError as error:
            if error.status != 404:  # the object is gone: nothing to report on
                raise
        self._reported[target] = (compared, loop.time())

    async def _remove_stale_reports(self, current: Target | None, objects: Iterable[DMVPNObject]) -> None:
        """Delete our key from every object we do not run (after the teardown): the cleanup signal."""
        for obj in objects:
            target = target_of(obj)
            if target == current or self.node not in obj.status.nodes:
                continue
            log.info("removing status.nodes.%s of %s", self.node, target)
            try:
                await self.client.patch_status(target, self.node, None)
            except ApiError as error:
                if error.status != 404:
                    raise
            self._reported.pop(target, None)


def _describe(decision: Decision) -> str:
    if isinstance(decision, Apply):
        config = decision.config
        return f"run {decision.target} ({config.role}, nbma {config.nbma}, tunnel {config.tunnel})"
    if isinstance(decision, Hold):
        return f"hold {decision.target}: {decision.reason}"
    return f"idle: {decision.reason}"


async def run_with(
    connection: Connection,
    node: str,
    namespace: str,
    reconciler: Reconciler,
    stop: asyncio.Event,
    **options: float,
) -> KubeAgent:
    """Run the loop until ``stop``; returns the agent (tests read its state)."""
    async with aiohttp.ClientSession() as session:
        agent = KubeAgent(KubeClient(connection, session), node, namespace, reconciler, **options)
        await agent.run(stop)
    return agent


def default_namespace(given: str | None) -> str:
    if given:
        return given
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    with contextlib.suppress(OSError):
        return path.read_text().strip()
    return "default"


class AgentReconciler:
    """The real reconciler: the standalone mode's :class:`Agent`, replaced when the config changes.

    A new config closes the running Agent (which leaves kernel state and SAs in place) and starts a new
    one, whose restart adoption takes over what is still wanted. Teardown removes the SAs to every known
    peer and the tunnel device (its neighbours and routes go with it).
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.agent: Agent | None = None
        self.metrics: Metrics | None = Metrics() if args.metrics_port is not None else None
        self._metrics_served = False

    async def apply(self, config: NodeConfig) -> None:
        from dmvpn.agent.main import build_agent  # main dispatches here: import at call time

        if self.agent is not None:
            await self.agent.close()
            self.agent = None
        observer = MetricsObserver(self.metrics) if self.metrics is not None else None
        agent = build_agent(config, self.args, observer)
        try:
            await agent.start()
        except BaseException:
            await agent.close()  # a half-started agent leaves no task or socket behind
            raise
        self.agent = agent
        write_node_state(self.args.node_state, node_state(config))
        if self.metrics is not None:
            self.metrics.attach(agent)
            if not self._metrics_served:
                self.metrics.serve(self.args.metrics_port)
                self._metrics_served = True

    async def teardown(self) -> None:
        agent = self.agent
        if agent is None:
            return
        self.agent = None
        if agent.ipsec is not None:
            for peer in sorted(agent.sa_up_peers):
                try:
                    await agent.ipsec.remove_peer(peer)
                except Exception as error:  # teardown goes on: the tunnel must go whatever charon says
                    log.warning("teardown: removing the SA to %s failed: %s", peer, error)
        await agent.remove_kernel_helpers()
        try:
            removed = await agent.dataplane.remove_tunnel()
            log.info("teardown: tunnel %s", "removed" if removed else "was already gone")
        except Exception as error:
            log.warning("teardown: removing the tunnel failed: %s", error)
        await agent.close()

    def status(self) -> dict[str, Any] | None:
        return node_status(self.agent) if self.agent is not None else None

    def command(self, name: str) -> Any:
        if self.agent is None:
            raise ConfigError(f"no endpoint runs on this node ({name})")
        return COMMANDS[name](self.agent)


async def run_agent(args: argparse.Namespace) -> int:
    """``dmvpn-agent --node NAME`` (Kubernetes mode) until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    connection = await _connect(args.kubeconfig, stop)
    if connection is None:
        return 0
    reconciler = AgentReconciler(args)
    control = ControlServer(args.socket, reconciler.command)
    await control.start()
    namespace = default_namespace(args.namespace)
    log.info("Kubernetes mode: node %s, API %s, secrets from namespace %s", args.node, connection.host, namespace)
    try:
        await run_with(connection, args.node, namespace, reconciler, stop)
    finally:
        await control.close()
        if reconciler.agent is not None:
            await reconciler.agent.close()  # on exit the kernel state stays: a restarted agent adopts it
    return 0


async def _connect(kubeconfig: Path | None, stop: asyncio.Event) -> Connection | None:
    """The API connection, retried with backoff while the configuration cannot be loaded."""
    backoff = 1.0
    while not stop.is_set():
        try:
            return load_connection(kubeconfig)
        except Exception as error:  # the kubernetes client raises assorted types for a bad config
            log.error("cannot load the Kubernetes configuration: %s; retrying in %.0f s", error, backoff)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await stop.wait()
            backoff = min(backoff * 2, MAX_BACKOFF)
    return None
