"""Test harness of the operator: an API emulator (kmock, over real HTTP) that behaves a little more like
a real API server, a client that plays users and agents, and the real operator run as a task.

The emulator: kmock's KubernetesEmulator stores objects and serves list/watch/patch/delete, but leaves
the API server's bookkeeping to its users ("inherit and implement for your cases"). kopf and kubectl
need some of it, so ``ApiServer`` adds, on the server side only (clients are never patched):

- ``metadata.resourceVersion`` on every write (kopf's JSON patches ``test`` it), ``uid``,
  ``creationTimestamp``, ``generation`` (bumped on spec changes) and ``generateName`` (Events);
- the status subresource: a PATCH of the object ignores ``status``, a PATCH of ``/status`` changes
  only ``status`` (what lets the operator and the agents write without trampling each other);
- ``kind``/``apiVersion`` on list responses and ``groupVersion: v1`` for the core group (kubectl);
- CustomResourceDefinitions created through the API become served resources (``kubectl apply -f crds/``);
- a bounded per-object history (long benchmarks would otherwise keep every version of every object).
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import attrs
import jsonpatch
import jsonpointer
import kmock
import yaml
from kmock._internal import enums, rendering

from dmvpn.controller import core
from dmvpn.controller.handlers import ControllerConfig
from dmvpn.controller.main import run

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"


VERBS = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}


@dataclass(frozen=True)
class Call:
    """One API request as RBAC sees it, and who made it (``kopf`` or anyone else)."""

    client: str
    method: str
    group: str
    resource: str
    verb: str


def call_of(request: rendering.Request) -> Call:
    agent = str(request.headers.get("User-Agent", ""))
    client = "kopf" if agent.startswith("kopf/") else "other"
    method = str(request.method.value).upper()
    target = request.resource
    if target is None or target.plural is None:  # discovery (/api, /apis/<group>/<version>) or non-API
        return Call(client, method, "", "", "")
    resource = target.plural + (f"/{request.subresource}" if request.subresource else "")
    if method == "GET":
        verb = "watch" if request.params.get("watch") in ("true", "1") else "get" if request.name else "list"
    else:
        verb = VERBS.get(method, method.lower())
    return Call(client, method, target.group or "", resource, verb)


def resource_info(crd: Mapping[str, Any]) -> tuple[list[str], kmock.ResourceInfo]:
    """The discovery keys (``group/version/plural``) and info a CRD serves."""
    spec = crd["spec"]
    names = spec["names"]
    versions = [v for v in spec["versions"] if v.get("served", True)]
    subresources = {sub for v in versions for sub in (v.get("subresources") or {})}
    info = kmock.ResourceInfo(
        kind=names["kind"],
        singular=names.get("singular"),
        namespaced=spec.get("scope") == "Namespaced",
        verbs={"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"},
        shortnames=set(names.get("shortNames") or ()),
        categories=set(names.get("categories") or ()),
        subresources=subresources,
    )
    return [f"{spec['group']}/{v['name']}/{names['plural']}" for v in versions], info


def crds() -> list[dict[str, Any]]:
    """The project's CRDs as generated into ``crds/``."""
    return [yaml.safe_load(path.read_text()) for path in sorted(CRD_DIR.glob("*.yaml"))]


def _now() -> str:
    return datetime.datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator with the API server bookkeeping kopf and kubectl rely on."""

    history_limit: int = 4
    calls: Counter[Call] = attrs.field(factory=Counter, init=False)
    """Every request as RBAC sees it. kmock itself keeps only the requests in flight here: it finds the
    reaction to a request by scanning the requests it keeps, which is quadratic over a long run."""
    _in_flight: set[int] = attrs.field(factory=set, init=False)
    _versions: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), init=False)

    def serve_crds(self, documents: list[dict[str, Any]] | None = None) -> None:
        """Serve the resources of these CRDs (default: the project's)."""
        for crd in documents if documents is not None else crds():
            keys, info = resource_info(crd)
            for key in keys:
                self.resources[key] = info

    def _status_subresource(self, request: rendering.Request) -> bool:
        resource = request.resource
        return bool(
            resource is not None and resource in self.resources and "status" in self.resources[resource].subresources
        )

    def _current(self, request: rendering.Request) -> Mapping[str, Any] | None:
        key = (request.resource, request.namespace, request.name)
        if key in self.objects and not self.objects[key].deleted:
            return self.objects[key].raw
        return None

    def _prepare_create(self, request: rendering.Request, version: str) -> None:
        meta = request.data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(4)
        if request.namespace and not meta.get("namespace"):
            meta["namespace"] = request.namespace
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        meta["resourceVersion"] = version
        meta["generation"] = 1
        resource = request.resource
        if self._status_subresource(request) and resource is not None and resource.group:
            request.data.pop("status", None)  # custom resources: status is not set on create (Nodes: it is)
        if resource is not None and resource.plural == "customresourcedefinitions":
            self.serve_crds([request.data])

    def _prepare_merge_patch(self, request: rendering.Request, version: str) -> None:
        data: dict[str, Any] = request.data
        if self._status_subresource(request):
            if request.subresource == "status":
                for key in [k for k in data if k != "status"]:
                    del data[key]
            else:
                data.pop("status", None)
        meta = data.setdefault("metadata", {})
        meta["resourceVersion"] = version
        current = self._current(request)
        if "spec" in data and current is not None and request.subresource != "status":
            meta["generation"] = int((current.get("metadata") or {}).get("generation") or 0) + 1

    def _prepare_json_patch(self, request: rendering.Request, version: str) -> None:
        ops: list[dict[str, Any]] = request.data
        if self._status_subresource(request):
            in_status = request.subresource == "status"
            ops[:] = [
                op for op in ops if op.get("op") == "test" or str(op.get("path", "")).startswith("/status") == in_status
            ]
        ops.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
        current = self._current(request)
        if current is not None and any(str(op.get("path", "")).startswith("/spec") for op in ops):
            generation = int((current.get("metadata") or {}).get("generation") or 0) + 1
            ops.append({"op": "add", "path": "/metadata/generation", "value": generation})

    async def _handle(self, request: rendering.Request) -> Any:
        self.calls[call_of(request)] += 1
        self._in_flight.add(id(request))
        self._requests[:] = [r for r in self._requests if id(r) in self._in_flight]
        if request.resource is not None:
            version = str(next(self._versions))
            if request.action == enums.action.CREATE and isinstance(request.data, dict):
                self._prepare_create(request, version)
            elif request.action == enums.action.UPDATE and isinstance(request.data, dict):
                self._prepare_merge_patch(request, version)
            elif request.action == enums.action.UPDATE and isinstance(request.data, list):
                self._prepare_json_patch(request, version)
        try:
            return await super()._handle(request)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as error:
            # The API server answers a failed JSON patch (e.g. kopf's resourceVersion test) with 422.
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(error)) from None
        finally:
            self._in_flight.discard(id(request))
            self._trim(request)

    def _trim(self, request: rendering.Request) -> None:
        key = (request.resource, request.namespace, request.name)
        if request.name is not None and key in self.objects:
            history = self.objects[key].history
            if len(history) > self.history_limit:
                del history[: len(history) - self.history_limit]

    async def _serve_list(self, request: rendering.Request) -> Any:
        result = await super()._serve_list(request)
        resource = request.resource
        if isinstance(result, dict) and resource is not None:
            kind = self.resources[resource].kind if resource in self.resources else None
            group_version = resource.version if not resource.group else f"{resource.group}/{resource.version}"
            result = {"apiVersion": group_version, "kind": f"{kind}List" if kind else "List", **result}
            result["metadata"] = {"resourceVersion": str(next(self._versions))}
        return result

    async def _serve_version(self, request: rendering.Request) -> Any:
        result = await super()._serve_version(request)
        if isinstance(result, dict) and str(result.get("groupVersion", "")).startswith("/"):
            result["groupVersion"] = result["groupVersion"].lstrip("/")
        if isinstance(result, dict):
            for entry in result.get("resources", []):
                if "/" in entry.get("name", ""):  # subresources have no short names or categories
                    entry["shortNames"] = []
                    entry["categories"] = []
        return result

    # --- helpers for tests -------------------------------------------------------------------------

    def stored(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The stored object, or None."""
        key = (kmock.resource(resource), namespace, name)
        if key in self.objects and not self.objects[key].deleted:
            return self.objects[key].raw
        return None

    def stored_items(self, resource: str) -> list[dict[str, Any]]:
        """All live objects of a resource."""
        wanted = kmock.resource(resource)
        return [obj.raw for (res, _, _), obj in self.objects.items() if res == wanted and not obj.deleted]


# --- the client side and the operator ---------------------------------------------------------------

T = TypeVar("T")
HUBS = "dmvpn.io/v1alpha1/dmvpnhubs"
SPOKES = "dmvpn.io/v1alpha1/dmvpnspokes"
NODES = "v1/nodes"
EVENTS = "v1/events"
PATHS = {
    HUBS: "/apis/dmvpn.io/v1alpha1/dmvpnhubs",
    SPOKES: "/apis/dmvpn.io/v1alpha1/dmvpnspokes",
    NODES: "/api/v1/nodes",
}
AGENT_AGENT = "dmvpn-agent-simulator"


async def eventually(check: Callable[[], T | bool | None], within: float = 15.0, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy (bounded in time)."""
    deadline = time.monotonic() + within
    while True:
        try:
            value = check()
        except (KeyError, TypeError, IndexError):
            value = None
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what or check}")
        await asyncio.sleep(0.05)


def kubeconfig(url: str, path: Path) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": url}}],
        "users": [{"name": "operator", "user": {"token": "test"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "operator", "namespace": "kube-dmvpn"}}],
        "current-context": "kmock",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def node(
    name: str, labels: dict[str, str] | None = None, internal: str | None = None, external: str | None = None
) -> dict[str, Any]:
    addresses = [{"type": "Hostname", "address": name}]
    if internal:
        addresses.append({"type": "InternalIP", "address": internal})
    if external:
        addresses.append({"type": "ExternalIP", "address": external})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
        "spec": {"podCIDRs": ["10.244.0.0/24"]},
        "status": {"addresses": addresses},
    }


IPSEC = {"mode": "disabled"}


def hub(name: str, address: str = "10.255.0.1/24", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"tunnel": {"address": address, "greKey": 42}, "ipsec": IPSEC, **spec}
    if "nodeName" not in body and "nodeSelector" not in body:
        body["nodeName"] = "hub-node"
    return {"apiVersion": "dmvpn.io/v1alpha1", "kind": "DMVPNHub", "metadata": {"name": name}, "spec": body}


def spoke(name: str, hubs: tuple[str, ...] = ("hub-1",), **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"tunnel": {"greKey": 42}, "ipsec": IPSEC, "hubs": [{"name": h} for h in hubs], **spec}
    if "nodeName" not in body and "nodeSelector" not in body:
        body["nodeSelector"] = {"dmvpn.io/role": "spoke"}
    return {"apiVersion": "dmvpn.io/v1alpha1", "kind": "DMVPNSpoke", "metadata": {"name": name}, "spec": body}


def report(
    role: str = "spoke", *, registered: bool = True, nhs: tuple[str, ...] = ("10.255.0.1",), **extra: Any
) -> dict[str, Any]:
    """What an agent writes into status.nodes.<node>."""
    return {
        "role": role,
        "registered": registered,
        "nhsUp": list(nhs) if role == "spoke" else [],
        "lastUpdate": datetime.datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **extra,
    }


@dataclass
class Cluster:
    """The emulated API server and a client that plays users (apply, delete) and agents (reports)."""

    server: ApiServer
    url: str
    session: aiohttp.ClientSession

    async def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        headers = {"Content-Type": content_type, "User-Agent": AGENT_AGENT}
        async with self.session.request(method, self.url + path, json=body, headers=headers) as response:
            data = await response.json()
            assert response.status < 400, f"{method} {path}: {response.status} {data}"
            return data

    async def create(self, body: dict[str, Any]) -> Any:
        resource = NODES if body["kind"] == "Node" else HUBS if body["kind"] == "DMVPNHub" else SPOKES
        return await self.request("POST", PATHS[resource], body)

    async def patch(self, resource: str, name: str, body: dict[str, Any], subresource: str = "") -> Any:
        path = f"{PATHS[resource]}/{name}" + (f"/{subresource}" if subresource else "")
        return await self.request("PATCH", path, body, "application/merge-patch+json")

    async def delete(self, resource: str, name: str) -> Any:
        return await self.request("DELETE", f"{PATHS[resource]}/{name}")

    async def report(self, resource: str, name: str, node_name: str, entry: dict[str, Any] | None) -> Any:
        """An agent's write: a merge patch of its own key in status.nodes (None removes it)."""
        return await self.patch(resource, name, {"status": {"nodes": {node_name: entry}}}, "status")

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        return self.server.stored(resource, name)

    def status(self, resource: str, name: str) -> dict[str, Any]:
        obj = self.get(resource, name)
        return dict((obj or {}).get("status") or {})

    def condition(self, resource: str, name: str, kind: str) -> dict[str, Any] | None:
        for condition in self.status(resource, name).get("conditions") or []:
            if condition["type"] == kind:
                return dict(condition)
        return None

    def events(self, name: str | None = None, reason: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.server.stored_items(EVENTS)
            if (name is None or e.get("involvedObject", {}).get("name") == name)
            and (reason is None or e.get("reason") == reason)
        ]


def fast_config(**changes: Any) -> ControllerConfig:
    """Short intervals so tests take seconds; no metrics port unless asked."""
    values: dict[str, Any] = {
        "rules": core.Config(stale_after=timedelta(seconds=60), cleanup_timeout=timedelta(seconds=30)),
        "interval": 0.1,
        "resync": 5.0,
        "cleanup_poll": 0.2,
        "metrics_port": None,
        "instance": "test",
    }
    values.update(changes)
    return ControllerConfig(**values)


@dataclass
class Operator:
    """A running operator that can be stopped and started again.

    ``kopf.operator`` runs in a thread with its own event loop, as in the pod it has a process: on
    exit, kopf cancels every task of its loop that it did not start with, which in the test's loop
    would include the emulator's request handlers and pytest's fixtures.
    """

    config: ControllerConfig
    thread: threading.Thread | None = None
    stop_flag: threading.Event = field(default_factory=threading.Event)
    failure: BaseException | None = None

    def _main(self, ready: threading.Event) -> None:
        try:
            asyncio.run(run(self.config, stop_flag=self.stop_flag, ready_flag=ready))
        except BaseException as error:  # reported by stop(): the test must see it
            self.failure = error

    async def start(self) -> Operator:
        self.stop_flag = threading.Event()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(ready,), name="operator", daemon=True)
        self.thread.start()
        if not await asyncio.to_thread(ready.wait, 30):
            raise AssertionError(f"the operator did not start: {self.failure!r}")
        return self

    async def stop(self) -> None:
        if self.thread is None:
            return
        self.stop_flag.set()
        await asyncio.to_thread(self.thread.join, 60)
        assert not self.thread.is_alive(), "the operator did not stop within 60 s"
        self.thread = None
        assert self.failure is None, f"the operator failed: {self.failure!r}"


OperatorFactory = Callable[..., Awaitable[Operator]]


def operator_calls(cluster: Cluster) -> set[tuple[str, str, str]]:
    """(group, resource[/subresource], verb) of every resource request kopf made, as RBAC sees them."""
    return {
        (call.group, call.resource, call.verb)
        for call in cluster.server.calls
        if call.client == "kopf" and call.resource
    }
