"""kopf handlers: thin glue between the API and ``dmvpn.controller.core``.

How it fits together:

- indexes keep the Nodes, hubs and spokes the core needs in memory (kopf starts no handler before
  every index has seen its initial listing, so allocations persisted in spokes' status are known
  before anything is allocated after a restart);
- the Node index and the event handlers of hubs and spokes only bump version counters: something changed;
- one timer per hub and per spoke is the only writer of that object's operator-owned status: on each
  tick it recomputes if anything it depends on changed (or a periodic resync is due) and patches the
  difference, so bursts of events (1000 agents reporting) coalesce into one patch per tick;
- ``on.delete`` handlers (kopf adds the ``dmvpn.io/cleanup`` finalizer for them) wait until the agents
  have removed their ``status.nodes`` entries, or a timeout, then release the allocations.
"""

import asyncio
import copy
import os
import socket
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import IPv4Interface
from typing import Any

import kopf
from prometheus_client import start_http_server

from dmvpn.api.constants import API_VERSION, GROUP
from dmvpn.controller import core, metrics
from dmvpn.controller.access import HUBS, NODES, SPOKES
from dmvpn.controller.ledger import Ledger

FINALIZER = f"{GROUP}/cleanup"
"""Our own finalizer: set on every hub and spoke, removed once the agents cleaned up."""

_NODE_VERSION = "nodes"
_HUB_VERSION = "hubs"
_SPOKES_VERSION = "spokes"
"""Bumped when a spoke's spec or allocations change (what other spokes' allocations depend on)."""


@dataclass(frozen=True)
class ControllerConfig:
    """How the operator runs (command-line options of ``dmvpn-operator``)."""

    rules: core.Config = field(default_factory=core.Config)
    """Timing rules of the core: stale reports, cleanup timeout."""
    interval: float = 1.0
    """Seconds between two checks of an object for changes (the latency of reacting to one)."""
    resync: float = 60.0
    """Seconds between two full recomputations even without changes (stale agent reports)."""
    cleanup_poll: float = 2.0
    """Seconds between two checks of a deleted object's cleanup."""
    metrics_port: int | None = 8080
    """Port of the Prometheus endpoint; None: not served."""
    metrics_address: str = "0.0.0.0"
    instance: str = field(default_factory=socket.gethostname)
    """reportingInstance of our Events (the pod name in a cluster)."""


@dataclass
class ObjectMemory:
    """What the timer of one object remembers between ticks."""

    seen: tuple[int, ...] = ()
    written: dict[str, Any] | None = None
    last_full: float = float("-inf")
    conditions: dict[str, str] = field(default_factory=dict)


@dataclass
class OperatorMemory:
    """Operator-wide state, passed to every handler as kopf's ``memo`` (one per operator run)."""

    config: ControllerConfig = field(default_factory=ControllerConfig)
    ledger: Ledger = field(default_factory=Ledger)
    versions: Counter[str] = field(default_factory=Counter)
    objects: dict[str, ObjectMemory] = field(default_factory=dict)
    spoke_fingerprints: dict[str, str] = field(default_factory=dict)
    metrics_server: Any = None

    def bump(self, *keys: str) -> None:
        for key in keys:
            self.versions[key] += 1

    def object(self, key: str) -> ObjectMemory:
        return self.objects.setdefault(key, ObjectMemory())

    def forget(self, key: str) -> None:
        self.objects.pop(key, None)


@dataclass(frozen=True)
class SpokeFacts:
    """A spoke as other spokes' allocations need it: spec, metadata and persisted allocations."""

    raw: Mapping[str, Any]
    allocations: Mapping[str, IPv4Interface]


def _memory(memo: Any) -> OperatorMemory:
    if not isinstance(memo, OperatorMemory):
        raise TypeError("run the operator with memo=OperatorMemory(...) (dmvpn.controller.main does)")
    return memo


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """A private copy of a kopf body, so the core sees one consistent object."""
    return copy.deepcopy({key: body[key] for key in body})


def _one(index: "kopf.Index[str, Any]") -> dict[str, Any]:
    """An index whose keys are unique (object names) as a plain dict of the latest value."""
    found: dict[str, Any] = {}
    for key, store in index.items():
        for value in store:
            found[key] = value
    return found


# --- startup, login, cleanup -----------------------------------------------------------------------


async def configure(settings: kopf.OperatorSettings, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """Own finalizer, progress and diff-base in annotations under dmvpn.io (the status schema is
    strict: kopf's default status storage would be pruned), Events as ``dmvpn-operator``, one replica."""
    memory = _memory(memo)
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.enabled = True
    settings.posting.reporting_component = "dmvpn-operator"
    settings.posting.reporting_instance = memory.config.instance
    settings.posting.event_name_prefix = "dmvpn-"
    settings.peering.standalone = True  # one replica: the allocation ledger lives in this process
    settings.background.instant_exit_timeout = 0.1  # timers sleep between ticks: they stop at once
    settings.scanning.disabled = True  # CRDs are installed before the operator; no CRD/namespace watching
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    if memory.config.metrics_port is not None:
        server, _thread = start_http_server(memory.config.metrics_port, addr=memory.config.metrics_address)
        memory.metrics_server = server
        logger.info(f"metrics on {memory.config.metrics_address}:{server.server_port}")


async def stop_metrics(memo: Any, **_: Any) -> None:
    """Close the metrics endpoint (tests run several operators in one process)."""
    memory = _memory(memo)
    if memory.metrics_server is not None:
        await asyncio.to_thread(memory.metrics_server.shutdown)
        memory.metrics_server.server_close()
        memory.metrics_server = None


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """KUBECONFIG if set, else the pod's service account, else whatever the kubernetes client finds."""
    if os.environ.get("KUBECONFIG"):
        return kopf.login_with_kubeconfig(**kwargs)
    return kopf.login_with_service_account(**kwargs) or kopf.login_via_client(**kwargs)


# --- indexes and change tracking -------------------------------------------------------------------


async def index_nodes(body: kopf.Body, memo: Any, **_: Any) -> dict[str, core.NodeFacts]:
    """Node facts by name. Called for every change of a Node but not for its deletion: the timers
    notice deletions by the index's size (an event handler per Node event would cost more than all
    the rest of the operator with 1000 nodes)."""
    facts = core.NodeFacts.from_node(body)
    _memory(memo).bump(_NODE_VERSION)
    return {facts.name: facts}


def _without_status(body: kopf.Body) -> dict[str, Any]:
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": dict(body.metadata),
        "spec": _plain(body.spec),
    }


async def index_hubs(name: str, body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    return {name: _without_status(body)}


async def index_spokes(name: str, body: kopf.Body, **_: Any) -> dict[str, SpokeFacts]:
    return {name: SpokeFacts(raw=_without_status(body), allocations=core.persisted_allocations(body))}


async def hub_changed(name: str, memo: Any, **_: Any) -> None:
    _memory(memo).bump(_HUB_VERSION, f"hub/{name}")


async def spoke_changed(name: str, body: kopf.Body, type: str | None, memo: Any, **_: Any) -> None:
    memory = _memory(memo)
    memory.bump(f"spoke/{name}")
    status = body.get("status") or {}
    fingerprint = repr((type == "DELETED", dict(body.spec), status.get("allocations")))
    if memory.spoke_fingerprints.get(name) != fingerprint:
        memory.spoke_fingerprints[name] = fingerprint
        memory.bump(_SPOKES_VERSION)
    if type == "DELETED":
        memory.spoke_fingerprints.pop(name, None)
        memory.ledger.release(name)
        memory.forget(f"spoke/{name}")
        metrics.forget_spoke(name)


# --- reconciliation --------------------------------------------------------------------------------


def _due(memory: OperatorMemory, state: ObjectMemory, seen: tuple[int, ...]) -> bool:
    """Whether to recompute: something it depends on changed, or the periodic resync is due."""
    if time.monotonic() - state.last_full >= memory.config.resync:
        state.last_full = time.monotonic()
        state.written = None  # compare with the object itself, not with what we think we wrote
        return True
    return seen != state.seen


def _write(kind: str, body: kopf.Body, patch: kopf.Patch, state: ObjectMemory, outcome: core.Outcome) -> None:
    """Patch the operator-owned status where it differs, and post the outcome's events."""
    if outcome.status != state.written or outcome.forget_nodes:
        current = body.get("status") or {}
        changes = core.status_patch(current, outcome.status, outcome.forget_nodes)
        for key, value in changes.items():
            patch.status[key] = value
        if changes:
            metrics.STATUS_PATCHES.labels(kind).inc()
        state.written = outcome.status
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
        metrics.EVENTS.labels(kind, event.type, event.reason).inc()
    state.conditions = {c["type"]: c["status"] for c in outcome.status.get("conditions", [])}


def _publish(memory: OperatorMemory, kind: str) -> None:
    prefix = f"{kind}/"
    metrics.publish_conditions(
        kind, {key: state.conditions for key, state in memory.objects.items() if key.startswith(prefix)}
    )


async def reconcile_hub(
    name: str,
    body: kopf.Body,
    patch: kopf.Patch,
    memo: Any,
    nodes: "kopf.Index[str, core.NodeFacts]",
    **_: Any,
) -> None:
    memory = _memory(memo)
    state = memory.object(f"hub/{name}")
    seen = (memory.versions[_NODE_VERSION], len(nodes), memory.versions[f"hub/{name}"])
    if not _due(memory, state, seen):
        return
    with metrics.RECONCILE_SECONDS.labels("hub").time():
        try:
            outcome = core.reconcile_hub(
                _plain(body), _one(nodes), now=_now(), config=memory.config.rules, previous=state.written
            )
        except Exception:
            metrics.RECONCILE_ERRORS.labels("hub").inc()
            raise
    metrics.RECONCILES.labels("hub").inc()
    state.seen = seen
    _write("hub", body, patch, state, outcome)
    _publish(memory, "hub")


async def reconcile_spoke(
    name: str,
    body: kopf.Body,
    patch: kopf.Patch,
    memo: Any,
    nodes: "kopf.Index[str, core.NodeFacts]",
    hubs: "kopf.Index[str, dict[str, Any]]",
    spokes: "kopf.Index[str, SpokeFacts]",
    **_: Any,
) -> None:
    memory = _memory(memo)
    state = memory.object(f"spoke/{name}")
    seen = (
        memory.versions[_NODE_VERSION],
        len(nodes),
        memory.versions[_HUB_VERSION],
        memory.versions[_SPOKES_VERSION],
        memory.versions[f"spoke/{name}"],
    )
    if not _due(memory, state, seen):
        return
    raw = _plain(body)
    node_facts, hub_bodies, spoke_facts = _one(nodes), _one(hubs), _one(spokes)
    memory.ledger.prune(spoke_facts)
    persisted = {spoke: facts.allocations for spoke, facts in spoke_facts.items()}
    others = {spoke: facts.raw for spoke, facts in spoke_facts.items() if spoke != name}
    previous = state.written

    def decide(claims: Mapping[str, frozenset[IPv4Interface]]) -> core.Outcome:
        neighbours = core.Neighbours(hubs=hub_bodies, spokes=others, claims=claims)
        return core.reconcile_spoke(
            raw, node_facts, neighbours, now=_now(), config=memory.config.rules, previous=previous
        )

    with metrics.RECONCILE_SECONDS.labels("spoke").time():
        try:
            outcome = memory.ledger.decide(name, persisted, decide, lambda o: o.allocations)
        except Exception:
            metrics.RECONCILE_ERRORS.labels("spoke").inc()
            raise
    metrics.RECONCILES.labels("spoke").inc()
    state.seen = seen
    _write("spoke", body, patch, state, outcome)
    metrics.ALLOCATIONS.labels(name).set(len(outcome.allocations))
    metrics.UNALLOCATED.labels(name).set(outcome.status["selectedNodes"] - len(outcome.allocations))
    _publish(memory, "spoke")


# --- deletion --------------------------------------------------------------------------------------


def _finalize(kind: str, name: str, body: kopf.Body, patch: kopf.Patch, memory: OperatorMemory, nodes: Any) -> None:
    """Raise TemporaryError until the agents cleaned up (or the timeout passed); then return."""
    state = memory.object(f"{kind}/{name}")
    outcome = core.finalize(_plain(body), _one(nodes), now=_now(), config=memory.config.rules, previous=state.written)
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
        metrics.EVENTS.labels(kind, event.type, event.reason).inc()
    if not outcome.done:
        current = body.get("status") or {}
        for key, value in core.status_patch(current, outcome.status).items():
            patch.status[key] = value
        state.written = {**(state.written or {}), **outcome.status}
        raise kopf.TemporaryError(
            f"waiting for agents on {', '.join(outcome.waiting)} to clean up", delay=memory.config.cleanup_poll
        )
    if outcome.timed_out:
        metrics.CLEANUP_TIMEOUTS.labels(kind).inc()
    memory.forget(f"{kind}/{name}")


async def finalize_hub(name: str, body: kopf.Body, patch: kopf.Patch, memo: Any, nodes: Any, **_: Any) -> None:
    memory = _memory(memo)
    _finalize("hub", name, body, patch, memory, nodes)
    _publish(memory, "hub")


async def finalize_spoke(name: str, body: kopf.Body, patch: kopf.Patch, memo: Any, nodes: Any, **_: Any) -> None:
    memory = _memory(memo)
    _finalize("spoke", name, body, patch, memory, nodes)
    memory.ledger.release(name)
    memory.bump(_SPOKES_VERSION)
    metrics.forget_spoke(name)
    _publish(memory, "spoke")


# --- registration ----------------------------------------------------------------------------------


def _with_indexes(fn: Any) -> Any:
    """kopf passes indexes as extra keyword arguments (``nodes=...``), which its callback protocols
    cannot express; the handlers that take them are registered through this."""
    return fn


def build_registry(config: ControllerConfig | None = None) -> kopf.OperatorRegistry:
    """A fresh kopf registry with every handler of the operator (a new one per operator run)."""
    config = config or ControllerConfig()
    registry = kopf.OperatorRegistry()
    group, version = API_VERSION.split("/")
    kopf.on.startup(registry=registry)(configure)
    kopf.on.cleanup(registry=registry)(stop_metrics)
    kopf.on.login(registry=registry)(login)
    kopf.index("", "v1", NODES, id="nodes", registry=registry)(index_nodes)
    kopf.index(group, version, HUBS, id="hubs", registry=registry)(index_hubs)
    kopf.index(group, version, SPOKES, id="spokes", registry=registry)(index_spokes)
    kopf.on.event(group, version, HUBS, id="hub-changed", registry=registry)(hub_changed)
    kopf.on.event(group, version, SPOKES, id="spoke-changed", registry=registry)(spoke_changed)
    backoff = max(config.interval, 1.0)
    kopf.timer(group, version, HUBS, id="reconcile", interval=config.interval, backoff=backoff, registry=registry)(
        _with_indexes(reconcile_hub)
    )
    kopf.timer(group, version, SPOKES, id="reconcile", interval=config.interval, backoff=backoff, registry=registry)(
        _with_indexes(reconcile_spoke)
    )
    kopf.on.delete(group, version, HUBS, id="cleanup", registry=registry)(_with_indexes(finalize_hub))
    kopf.on.delete(group, version, SPOKES, id="cleanup", registry=registry)(_with_indexes(finalize_spoke))
    return registry
