"""The operator's decisions as pure functions: (object, nodes, other objects, previous status) ->
(desired status, allocations, events).

Nothing here talks to Kubernetes or kopf, and time is passed in, so every rule is unit-tested with
plain dicts. The status produced holds only the fields the operator owns (docs/operator.md):
``observedGeneration``, ``conditions``, the summaries, ``nbma`` (hubs) and ``allocations`` (spokes);
``nodes.<node>`` belongs to that node's agent and is only ever removed here, for nodes that are gone.
"""

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, Literal

from pydantic import ValidationError

from dmvpn.api import (
    CONDITION_ACCEPTED,
    CONDITION_DEGRADED,
    CONDITION_READY,
    Condition,
    DMVPNHub,
    DMVPNSpoke,
    NodeStatus,
    Problem,
    ValidationFailed,
    nbma_for_node,
    parse_object,
    selects_node,
    set_condition,
    spoke_hub_problems,
    tunnel_network,
)
from dmvpn.api.spec import EndpointSpec
from dmvpn.controller.allocation import Allocation, allocate, usable_hosts

EventType = Literal["Normal", "Warning"]

# Condition reasons (CamelCase, stable: tools and alerts match on them).
VALID = "Valid"
INVALID_SPEC = "InvalidSpec"
AMBIGUOUS_NODE_SELECTOR = "AmbiguousNodeSelector"
READY = "Ready"
NO_NODES_SELECTED = "NoNodesSelected"
NO_NBMA_ADDRESS = "NoNbmaAddress"
SUBNET_FULL = "SubnetFull"
NODES_NOT_READY = "NodesNotReady"
HUBS_DOWN = "HubsDown"
AS_EXPECTED = "AsExpected"
DELETING = "Deleting"

#: Ready=False reasons that need a person (a Warning event), unlike "agents not there yet".
_ACTIONABLE = frozenset({INVALID_SPEC, AMBIGUOUS_NODE_SELECTOR, NO_NODES_SELECTED, NO_NBMA_ADDRESS, SUBNET_FULL})


@dataclass(frozen=True)
class Config:
    """Timing rules of the core (the handlers take them from the command line)."""

    stale_after: timedelta = timedelta(seconds=180)
    """An agent report older than this counts as no report (agent gone or stuck)."""
    cleanup_timeout: timedelta = timedelta(seconds=120)
    """How long a deleted object waits for agents to report their cleanup before it is released."""
    names_in_message: int = 8
    """Node names listed in a condition message before "and N more"."""


@dataclass(frozen=True)
class NodeFacts:
    """What the operator needs to know about a Node."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    addresses: tuple[Mapping[str, str], ...] = ()

    @classmethod
    def from_node(cls, node: Mapping[str, Any]) -> "NodeFacts":
        """From a Node object as the API serves it."""
        metadata = node.get("metadata") or {}
        status = node.get("status") or {}
        addresses = tuple(
            {"type": str(entry.get("type", "")), "address": str(entry.get("address", ""))}
            for entry in status.get("addresses") or ()
            if isinstance(entry, Mapping)
        )
        return cls(name=str(metadata.get("name", "")), labels=dict(metadata.get("labels") or {}), addresses=addresses)


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post about the object."""

    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class Outcome:
    """What the operator wants an object's status to be, and what to tell about the change."""

    status: dict[str, Any]
    """The operator-owned status fields, complete, in wire form."""
    allocations: dict[str, IPv4Interface] = field(default_factory=dict)
    """Spokes: the allocation to record in the in-process ledger (also in ``status``)."""
    network: IPv4Network | None = None
    """Spokes: the tunnel subnet the allocations come from."""
    forget_nodes: tuple[str, ...] = ()
    """``status.nodes`` entries to remove because their Node is gone (nobody else will)."""
    events: tuple[Event, ...] = ()
    accepted: bool = False
    ready: bool = False


@dataclass(frozen=True)
class Finalization:
    """Where the deletion of an object stands."""

    done: bool
    waiting: tuple[str, ...]
    timed_out: bool
    status: dict[str, Any]
    events: tuple[Event, ...] = ()


# --- small helpers ---------------------------------------------------------------------------------


def names(items: Iterable[str], limit: int) -> str:
    """``a, b, c and 4 more``."""
    listed = sorted(items)
    if len(listed) <= limit:
        return ", ".join(listed)
    return f"{', '.join(listed[:limit])} and {len(listed) - limit} more"


def _spec_part(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The object without status: status is not the user's input and must not fail validation."""
    return {key: value for key, value in raw.items() if key != "status"}


def parse_endpoint(raw: Mapping[str, Any]) -> tuple[DMVPNHub | DMVPNSpoke | None, list[Problem]]:
    """The validated object, or the problems that make it invalid (paths as the user wrote them)."""
    try:
        return parse_object(_spec_part(raw)), []
    except ValidationFailed as failure:
        return None, [Problem(p.path, p.message) for p in failure.problems]


def _problem_message(problems: Iterable[Problem]) -> str:
    return "; ".join(str(problem) for problem in problems)


def _status(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    status = raw.get("status")
    return status if isinstance(status, Mapping) else {}


def _generation(raw: Mapping[str, Any]) -> int | None:
    generation = (raw.get("metadata") or {}).get("generation")
    return generation if isinstance(generation, int) else None


def _conditions(status: Mapping[str, Any]) -> list[Condition]:
    """Conditions as last written; unreadable ones are dropped (they will be rewritten)."""
    conditions: list[Condition] = []
    for entry in status.get("conditions") or ():
        try:
            conditions.append(Condition.model_validate(entry))
        except ValidationError:
            continue
    return conditions


def _condition_key(conditions: Iterable[Condition], kind: str) -> tuple[str, str] | None:
    for condition in conditions:
        if condition.type == kind:
            return condition.status, condition.reason
    return None


def _node_reports(status: Mapping[str, Any]) -> dict[str, NodeStatus | str]:
    """``status.nodes`` parsed entry by entry; a malformed entry becomes the reason it is unusable."""
    reports: dict[str, NodeStatus | str] = {}
    nodes = status.get("nodes")
    if not isinstance(nodes, Mapping):
        return reports
    for node, entry in nodes.items():
        try:
            reports[str(node)] = NodeStatus.model_validate(entry)
        except ValidationError as error:
            reports[str(node)] = f"unreadable report ({error.error_count()} problems)"
    return reports


def _allocations(status: Mapping[str, Any]) -> dict[str, IPv4Interface]:
    found: dict[str, IPv4Interface] = {}
    allocations = status.get("allocations")
    if not isinstance(allocations, Mapping):
        return found
    for node, text in allocations.items():
        try:
            found[str(node)] = IPv4Interface(str(text))
        except ValueError:
            continue
    return found


def persisted_allocations(raw: Mapping[str, Any]) -> dict[str, IPv4Interface]:
    """The allocations a spoke object carries in its status (what survives an operator restart)."""
    return _allocations(_status(raw))


def _interface(text: object) -> IPv4Interface | None:
    try:
        return IPv4Interface(str(text)) if text is not None else None
    except ValueError:
        return None


def _address(text: object) -> IPv4Address | None:
    try:
        return IPv4Address(str(text)) if text is not None else None
    except ValueError:
        return None


def selected_nodes(spec: EndpointSpec, nodes: Mapping[str, NodeFacts]) -> list[str]:
    """Names of the nodes the endpoint runs on, sorted."""
    return sorted(name for name, facts in nodes.items() if selects_node(spec, name, facts.labels))


def _selection_text(spec: EndpointSpec) -> str:
    if spec.node_name is not None:
        return f"nodeName {spec.node_name}"
    return f"nodeSelector {dict(spec.node_selector or {})}"


# --- per-node reports ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeVerdict:
    """One selected node as the operator sees it from its agent's report."""

    ready: bool
    why: str = ""
    report: NodeStatus | None = None
    fresh: bool = False
    """The agent reported recently (its counters count)."""


def judge_node(
    report: NodeStatus | str | None, role: Literal["hub", "spoke"], *, now: datetime, config: Config
) -> NodeVerdict:
    """Whether the agent on a node reports the endpoint up, and if not, why in a few words."""
    if report is None:
        return NodeVerdict(False, "no report from its agent yet")
    if isinstance(report, str):
        return NodeVerdict(False, report)
    age = now - report.last_update
    if age > config.stale_after:
        return NodeVerdict(False, f"last report {int(age.total_seconds())} s ago", report)
    if report.role != role:
        return NodeVerdict(False, f"agent reports it as a {report.role}", report)
    if not report.registered:
        detail = f": {report.message}" if report.message else ""
        what = "not registered with any hub" if role == "spoke" else "not serving registrations"
        return NodeVerdict(False, what + detail, report, fresh=True)
    return NodeVerdict(True, "", report, fresh=True)


def _fresh_reports(verdicts: Mapping[str, NodeVerdict]) -> list[NodeStatus]:
    return [v.report for v in verdicts.values() if v.report is not None and v.fresh]


def forgotten_nodes(status: Mapping[str, Any], nodes: Mapping[str, NodeFacts]) -> tuple[str, ...]:
    """Entries of ``status.nodes`` whose Node no longer exists: no agent is left to remove them."""
    reported = status.get("nodes")
    if not isinstance(reported, Mapping):
        return ()
    return tuple(sorted(str(node) for node in reported if node not in nodes))


# --- conditions and events -------------------------------------------------------------------------


@dataclass
class _Conditions:
    """Builds the condition list from the previous one, so transition times only move on change."""

    previous: list[Condition]
    now: datetime
    generation: int | None
    current: list[Condition] = field(init=False)

    def __post_init__(self) -> None:
        self.current = list(self.previous)

    def set(self, kind: str, ok: bool, reason: str, message: str) -> None:
        self.current = set_condition(
            self.current,
            kind,
            "True" if ok else "False",
            reason,
            message,
            now=self.now,
            observed_generation=self.generation,
        )

    def wire(self) -> list[dict[str, Any]]:
        order = {CONDITION_ACCEPTED: 0, CONDITION_READY: 1, CONDITION_DEGRADED: 2}
        ordered = sorted(self.current, key=lambda c: (order.get(c.type, 9), c.type))
        return [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in ordered]


def condition_events(previous: list[Condition], current: list[Condition]) -> list[Event]:
    """Events for condition changes a person cares about: validity, readiness, actionable failures."""
    events: list[Event] = []
    by_type = {c.type: c for c in current}
    before = _condition_key(previous, CONDITION_ACCEPTED)
    accepted = by_type.get(CONDITION_ACCEPTED)
    if accepted is not None and before != (accepted.status, accepted.reason):
        if accepted.status == "False":
            events.append(Event("Warning", accepted.reason, accepted.message))
        elif before is not None:
            events.append(Event("Normal", VALID, "the spec is valid again"))
    before = _condition_key(previous, CONDITION_READY)
    ready = by_type.get(CONDITION_READY)
    if ready is not None and before != (ready.status, ready.reason) and ready.reason != INVALID_SPEC:
        if ready.status == "True":
            events.append(Event("Normal", READY, ready.message))
        elif ready.reason in _ACTIONABLE or (before is not None and before[0] == "True"):
            events.append(Event("Warning", ready.reason, ready.message))
    return events


def allocation_events(
    before: Mapping[str, IPv4Interface], after: Allocation | Mapping[str, IPv4Interface], limit: int
) -> list[Event]:
    """Events for addresses handed out, moved and released."""
    addresses = after.addresses if isinstance(after, Allocation) else after
    moved = set(after.moved) if isinstance(after, Allocation) else set()
    events: list[Event] = []
    added = {n: a for n, a in addresses.items() if n not in before and n not in moved}
    if added:
        listed = [f"{added[n]} to {n}" for n in sorted(added)]
        shown = ", ".join(listed[:limit]) + (f" and {len(listed) - limit} more" if len(listed) > limit else "")
        events.append(Event("Normal", "Allocated", f"tunnel address {shown}"))
    if moved:
        listed = [f"{n} {before.get(n)} -> {addresses[n]}" for n in sorted(moved)]
        events.append(
            Event(
                "Warning",
                "Reallocated",
                "address taken by a hub, an explicit address or an older claim: " + ", ".join(listed[:limit]),
            )
        )
    released = sorted(n for n in before if n not in addresses)
    if released:
        events.append(Event("Normal", "Released", f"tunnel address of {names(released, limit)} (no longer selected)"))
    return events


# --- hubs ------------------------------------------------------------------------------------------


def reconcile_hub(
    raw: Mapping[str, Any],
    nodes: Mapping[str, NodeFacts],
    *,
    now: datetime,
    config: Config = Config(),
    previous: Mapping[str, Any] | None = None,
) -> Outcome:
    """The desired status of a DMVPNHub.

    A hub runs on exactly one node: a nodeSelector matching several is refused (Accepted=False, so no
    agent starts a second hub with the same address), matching none leaves it not Ready. Its NBMA
    address is the explicit one or the node's address of ``nbma.fromNode``.
    """
    status = _status(raw)
    prior = previous if previous is not None else status
    generation = _generation(raw)
    conditions = _Conditions(_conditions(prior), now, generation)
    hub, problems = parse_endpoint(raw)
    reports = _node_reports(status)
    desired: dict[str, Any] = {"observedGeneration": generation}
    nbma: str | None = prior.get("nbma") if isinstance(prior.get("nbma"), str) else None
    selected: list[str] = []
    if isinstance(hub, DMVPNHub):
        selected = selected_nodes(hub.spec, nodes)
        if len(selected) > 1:
            problems.append(
                Problem(
                    "spec.nodeSelector",
                    f"matches {len(selected)} nodes ({names(selected, config.names_in_message)}); a hub runs on "
                    "exactly one node: make the labels match one node or use nodeName",
                )
            )
    verdicts = {n: judge_node(reports.get(n), "hub", now=now, config=config) for n in selected}
    ready_nodes = sorted(n for n, v in verdicts.items() if v.ready)
    if problems or not isinstance(hub, DMVPNHub):
        reason = AMBIGUOUS_NODE_SELECTOR if isinstance(hub, DMVPNHub) else INVALID_SPEC
        message = _problem_message(problems)
        conditions.set(CONDITION_ACCEPTED, False, reason, message)
        conditions.set(CONDITION_READY, False, INVALID_SPEC, "fix the spec (see condition Accepted)")
        conditions.set(CONDITION_DEGRADED, False, AS_EXPECTED, "")
        accepted = ready = False
    else:
        accepted = True
        conditions.set(CONDITION_ACCEPTED, True, VALID, "")
        ready, nbma = _hub_readiness(hub, selected, nodes, verdicts, conditions)
        conditions.set(CONDITION_DEGRADED, False, AS_EXPECTED, "")
    fresh = _fresh_reports(verdicts)
    desired.update(
        conditions=conditions.wire(),
        nbma=nbma,
        selectedNodes=len(selected),
        readyNodes=len(ready_nodes),
        hubsUp=0,
        shortcuts=sum(r.shortcuts for r in fresh),
        registeredSpokes=sum(r.peers for r in fresh if r.role == "hub"),
    )
    events = condition_events(_conditions(prior), conditions.current)
    return Outcome(
        status=desired,
        forget_nodes=forgotten_nodes(status, nodes),
        events=tuple(events),
        accepted=accepted,
        ready=ready,
    )


def _hub_readiness(
    hub: DMVPNHub,
    selected: list[str],
    nodes: Mapping[str, NodeFacts],
    verdicts: Mapping[str, NodeVerdict],
    conditions: _Conditions,
) -> tuple[bool, str | None]:
    """Sets Ready for an accepted hub; returns (ready, NBMA address in use)."""
    if not selected:
        what = "no such Node" if hub.spec.node_name is not None else "matches no Node"
        conditions.set(CONDITION_READY, False, NO_NODES_SELECTED, f"{_selection_text(hub.spec)}: {what}")
        return False, None
    node = selected[0]
    nbma = nbma_for_node(hub.spec.nbma, nodes[node].addresses)
    if nbma is None:
        conditions.set(
            CONDITION_READY,
            False,
            NO_NBMA_ADDRESS,
            f"node {node} has no IPv4 {hub.spec.nbma.from_node} in status.addresses: set spec.nbma.address "
            "or another spec.nbma.fromNode",
        )
        return False, None
    verdict = verdicts[node]
    if not verdict.ready:
        conditions.set(CONDITION_READY, False, NODES_NOT_READY, f"node {node}: {verdict.why}")
        return False, str(nbma)
    conditions.set(CONDITION_READY, True, READY, f"serving on node {node} at NBMA {nbma}")
    return True, str(nbma)


# --- spokes ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Neighbours:
    """The other objects a spoke's decisions depend on."""

    hubs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Raw DMVPNHub objects by name."""
    spokes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Raw DMVPNSpoke objects by name (this spoke may be among them; it is skipped)."""
    claims: Mapping[str, Collection[IPv4Interface]] = field(default_factory=dict)
    """Addresses each spoke holds in its status or was just given (the ledger's view), by spoke."""


def _valid_hubs(spoke: DMVPNSpoke, hubs: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, DMVPNHub], list[Problem]]:
    """The in-cluster hubs the spoke names that are valid, and problems for the invalid ones."""
    valid: dict[str, DMVPNHub] = {}
    problems: list[Problem] = []
    for index, ref in enumerate(spoke.spec.hubs):
        if ref.name is None or ref.name not in hubs:
            continue
        hub, hub_problems = parse_endpoint(hubs[ref.name])
        if isinstance(hub, DMVPNHub):
            valid[ref.name] = hub
        elif hub_problems:
            problems.append(
                Problem(
                    f"spec.hubs[{index}].name",
                    f"DMVPNHub {ref.name} is not valid ({hub_problems[0]}); fix it first",
                )
            )
    return valid, problems


def _network_problems(spoke: DMVPNSpoke, hubs: Mapping[str, DMVPNHub]) -> tuple[IPv4Network | None, list[Problem]]:
    """The tunnel subnet of the spoke and what contradicts it."""
    networks = {name: tunnel_network(hub) for name, hub in hubs.items()}
    distinct = sorted(set(networks.values()))
    if len(distinct) > 1:
        listed = ", ".join(f"{name} {network}" for name, network in sorted(networks.items()))
        return None, [
            Problem(
                "spec.hubs",
                f"in-cluster hubs have different tunnel subnets ({listed}); a spoke has one tunnel address, "
                "so its hubs must share one subnet",
            )
        ]
    address = spoke.spec.tunnel.address
    network = distinct[0] if distinct else (address.network if address is not None else None)
    if network is None:
        return None, [
            Problem(
                "spec.tunnel.address",
                "no in-cluster hub in spec.hubs to allocate an address from: name a DMVPNHub in spec.hubs, "
                "or set tunnel.address (with nodeName)",
            )
        ]
    problems: list[Problem] = []
    for index, ref in enumerate(spoke.spec.hubs):
        if ref.tunnel_address is not None and ref.tunnel_address not in network:
            problems.append(
                Problem(
                    f"spec.hubs[{index}].tunnelAddress",
                    f"{ref.tunnel_address} is outside the tunnel subnet {network}",
                )
            )
    return network, problems


def _created(raw: Mapping[str, Any]) -> str:
    return str((raw.get("metadata") or {}).get("creationTimestamp") or "")


def _precedes(a_name: str, a_raw: Mapping[str, Any], b_name: str, b_raw: Mapping[str, Any]) -> bool:
    """Whether object a was there first (creation time, then name): the older one keeps a contested address."""
    return (_created(a_raw), a_name) < (_created(b_raw), b_name)


def _explicit_conflicts(
    name: str, raw: Mapping[str, Any], spoke: DMVPNSpoke, others: Mapping[str, Mapping[str, Any]]
) -> list[Problem]:
    address = spoke.spec.tunnel.address
    if address is None:
        return []
    for other_name, other in sorted(others.items()):
        if other_name == name:
            continue
        theirs = _interface(((other.get("spec") or {}).get("tunnel") or {}).get("address"))
        if theirs is not None and theirs.ip == address.ip and _precedes(other_name, other, name, raw):
            return [Problem("spec.tunnel.address", f"{address.ip} is already DMVPNSpoke {other_name}'s tunnel.address")]
    return []


def reserved_addresses(
    network: IPv4Network, name: str, neighbours: Neighbours
) -> tuple[set[IPv4Address], set[IPv4Address]]:
    """(reserved, occupied) addresses of ``network`` for allocating to spoke ``name``.

    Reserved: every hub's tunnel address, every explicit spoke address, every federated hub's tunnel
    address, and allocations of spokes whose name sorts first. Occupied: the other spokes' allocations.
    """
    reserved: set[IPv4Address] = set()
    occupied: set[IPv4Address] = set()
    for hub in neighbours.hubs.values():
        address = _interface(((hub.get("spec") or {}).get("tunnel") or {}).get("address"))
        if address is not None and address.ip in network:
            reserved.add(address.ip)
    for other in neighbours.spokes.values():
        spec = other.get("spec") or {}
        address = _interface((spec.get("tunnel") or {}).get("address"))
        if address is not None and address.ip in network:
            reserved.add(address.ip)
        for ref in spec.get("hubs") or ():
            remote = _address(ref.get("tunnelAddress")) if isinstance(ref, Mapping) else None
            if remote is not None and remote in network:
                reserved.add(remote)
    for owner, claims in neighbours.claims.items():
        if owner == name:
            continue
        for address in claims:
            if address.ip in network:
                (reserved if owner < name else occupied).add(address.ip)
    return reserved, occupied


def reconcile_spoke(
    raw: Mapping[str, Any],
    nodes: Mapping[str, NodeFacts],
    neighbours: Neighbours,
    *,
    now: datetime,
    config: Config = Config(),
    previous: Mapping[str, Any] | None = None,
) -> Outcome:
    """The desired status of a DMVPNSpoke, with its allocations.

    An invalid spoke (own spec, or inconsistent with the hubs it names) keeps the allocations it had and
    gets none anew: nothing is half-applied. A valid one gets an address for every selected node that
    has none, from the in-cluster hubs' tunnel subnet; a full subnet leaves nodes without one and says so.
    """
    name = str((raw.get("metadata") or {}).get("name", ""))
    status = _status(raw)
    prior = previous if previous is not None else status
    before = _allocations(prior)
    generation = _generation(raw)
    conditions = _Conditions(_conditions(prior), now, generation)
    spoke, problems = parse_endpoint(raw)
    network: IPv4Network | None = None
    if isinstance(spoke, DMVPNSpoke):
        hubs, problems = _valid_hubs(spoke, neighbours.hubs)
        problems += _hub_pair_problems(spoke, hubs, neighbours.hubs)
        network, network_problems = _network_problems(spoke, hubs)
        problems += network_problems
        problems += _explicit_conflicts(name, raw, spoke, neighbours.spokes)
    reports = _node_reports(status)
    if problems or not isinstance(spoke, DMVPNSpoke) or network is None:
        conditions.set(CONDITION_ACCEPTED, False, INVALID_SPEC, _problem_message(problems))
        conditions.set(CONDITION_READY, False, INVALID_SPEC, "fix the spec (see condition Accepted)")
        conditions.set(CONDITION_DEGRADED, False, AS_EXPECTED, "")
        desired = _spoke_summary(generation, conditions, before, [], {}, [])
        return Outcome(
            status=desired,
            allocations=before,
            forget_nodes=forgotten_nodes(status, nodes),
            events=tuple(condition_events(_conditions(prior), conditions.current)),
        )
    selected = selected_nodes(spoke.spec, nodes)
    allocation = _spoke_allocation(name, spoke, network, selected, before, neighbours)
    verdicts = {n: judge_node(reports.get(n), "spoke", now=now, config=config) for n in selected}
    conditions.set(CONDITION_ACCEPTED, True, VALID, "")
    ready = _spoke_readiness(spoke, network, selected, nodes, allocation, verdicts, conditions, config)
    desired = _spoke_summary(generation, conditions, allocation.addresses, selected, verdicts, _fresh_reports(verdicts))
    events = condition_events(_conditions(prior), conditions.current)
    events += allocation_events(before, allocation, config.names_in_message)
    return Outcome(
        status=desired,
        allocations=allocation.addresses,
        network=network,
        forget_nodes=forgotten_nodes(status, nodes),
        events=tuple(events),
        accepted=True,
        ready=ready,
    )


def _hub_pair_problems(
    spoke: DMVPNSpoke, valid: Mapping[str, DMVPNHub], raw_hubs: Mapping[str, Mapping[str, Any]]
) -> list[Problem]:
    """``spoke_hub_problems`` against the valid hubs, without its "no DMVPNHub named" for hubs that
    exist but are invalid (``_valid_hubs`` says what is wrong with those)."""
    invalid = {
        f"spec.hubs[{i}].name"
        for i, ref in enumerate(spoke.spec.hubs)
        if ref.name in raw_hubs and ref.name not in valid
    }
    return [p for p in spoke_hub_problems(spoke, valid) if p.path not in invalid]


def _spoke_allocation(
    name: str,
    spoke: DMVPNSpoke,
    network: IPv4Network,
    selected: list[str],
    before: Mapping[str, IPv4Interface],
    neighbours: Neighbours,
) -> Allocation:
    if spoke.spec.tunnel.address is not None:
        return Allocation()  # the agent uses spec.tunnel.address; nothing to allocate
    reserved, occupied = reserved_addresses(network, name, neighbours)
    return allocate(network, selected, before, reserved=reserved, occupied=occupied)


def _spoke_readiness(
    spoke: DMVPNSpoke,
    network: IPv4Network,
    selected: list[str],
    nodes: Mapping[str, NodeFacts],
    allocation: Allocation,
    verdicts: Mapping[str, NodeVerdict],
    conditions: _Conditions,
    config: Config,
) -> bool:
    """Sets Ready and Degraded of an accepted spoke; returns Ready."""
    limit = config.names_in_message
    ready_nodes = [n for n, v in verdicts.items() if v.ready]
    hubs_wanted = len(spoke.spec.hubs)
    short_of_hubs = sorted(
        n for n in ready_nodes if (r := verdicts[n].report) is not None and len(r.nhs_up) < hubs_wanted
    )
    if 0 < len(ready_nodes) < len(selected):
        conditions.set(CONDITION_DEGRADED, True, NODES_NOT_READY, f"{len(ready_nodes)} of {len(selected)} nodes ready")
    elif short_of_hubs:
        conditions.set(
            CONDITION_DEGRADED,
            True,
            HUBS_DOWN,
            f"registered with fewer than {hubs_wanted} hubs: {names(short_of_hubs, limit)}",
        )
    else:
        conditions.set(CONDITION_DEGRADED, False, AS_EXPECTED, "")
    if not selected:
        what = "no such Node" if spoke.spec.node_name is not None else "matches no Node"
        conditions.set(CONDITION_READY, False, NO_NODES_SELECTED, f"{_selection_text(spoke.spec)}: {what}")
        return False
    if allocation.unallocated:
        conditions.set(
            CONDITION_READY,
            False,
            SUBNET_FULL,
            f"tunnel subnet {network} ({usable_hosts(network)} host addresses) has no free address for "
            f"{len(allocation.unallocated)} nodes ({names(allocation.unallocated, limit)}): use a larger "
            "tunnel subnet on the hub or select fewer nodes",
        )
        return False
    no_nbma = [n for n in selected if nbma_for_node(spoke.spec.nbma, nodes[n].addresses) is None]
    if no_nbma:
        conditions.set(
            CONDITION_READY,
            False,
            NO_NBMA_ADDRESS,
            f"no IPv4 {spoke.spec.nbma.from_node} in status.addresses of {names(no_nbma, limit)}: "
            "set spec.nbma.fromNode to an address type these nodes have",
        )
        return False
    not_ready = {n: v.why for n, v in verdicts.items() if not v.ready}
    if not_ready:
        shown = sorted(not_ready)[:limit]
        details = "; ".join(f"{n}: {not_ready[n]}" for n in shown)
        more = f"; and {len(not_ready) - limit} more" if len(not_ready) > limit else ""
        conditions.set(
            CONDITION_READY,
            False,
            NODES_NOT_READY,
            f"{len(not_ready)} of {len(selected)} nodes not ready: {details}{more}",
        )
        return False
    conditions.set(CONDITION_READY, True, READY, f"all {len(selected)} nodes registered")
    return True


def _spoke_summary(
    generation: int | None,
    conditions: _Conditions,
    allocations: Mapping[str, IPv4Interface],
    selected: list[str],
    verdicts: Mapping[str, NodeVerdict],
    fresh: list[NodeStatus],
) -> dict[str, Any]:
    hubs_up = {str(address) for r in fresh for address in r.nhs_up}
    return {
        "observedGeneration": generation,
        "conditions": conditions.wire(),
        "allocations": {node: str(address) for node, address in sorted(allocations.items())},
        "selectedNodes": len(selected),
        "readyNodes": sum(1 for v in verdicts.values() if v.ready),
        "hubsUp": len(hubs_up),
        "shortcuts": sum(r.shortcuts for r in fresh),
    }


# --- deletion --------------------------------------------------------------------------------------


def _deleted_at(raw: Mapping[str, Any]) -> datetime | None:
    text = (raw.get("metadata") or {}).get("deletionTimestamp")
    if not isinstance(text, str):
        return None
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        return None
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)


def finalize(
    raw: Mapping[str, Any],
    nodes: Mapping[str, NodeFacts],
    *,
    now: datetime,
    config: Config = Config(),
    previous: Mapping[str, Any] | None = None,
) -> Finalization:
    """Whether a deleted object may go: when no agent on an existing node still reports it (each agent
    removes its ``status.nodes`` entry once its tunnels and SAs are gone), or after the cleanup timeout."""
    status = _status(raw)
    prior = previous if previous is not None else status
    reported = status.get("nodes")
    if not isinstance(reported, Mapping):
        reported = {}
    waiting = tuple(sorted(str(node) for node in reported if node in nodes))
    deleted = _deleted_at(raw) or now
    elapsed = now - deleted
    timed_out = bool(waiting) and elapsed >= config.cleanup_timeout
    conditions = _Conditions(_conditions(prior), now, _generation(raw))
    events: list[Event] = []
    if waiting and not timed_out:
        left = max(int((config.cleanup_timeout - elapsed).total_seconds()), 0)
        conditions.set(
            CONDITION_READY,
            False,
            DELETING,
            f"waiting for the agents on {names(waiting, config.names_in_message)} to remove tunnels and SAs "
            f"(gives up in {left} s)",
        )
    elif timed_out:
        events.append(
            Event(
                "Warning",
                "CleanupTimeout",
                f"agents on {names(waiting, config.names_in_message)} did not report cleanup within "
                f"{int(config.cleanup_timeout.total_seconds())} s; releasing anyway (check those nodes)",
            )
        )
    return Finalization(
        done=not waiting or timed_out,
        waiting=waiting,
        timed_out=timed_out,
        status={"conditions": conditions.wire()} if waiting and not timed_out else {},
        events=tuple(events),
    )


# --- writing ---------------------------------------------------------------------------------------


def status_patch(
    current: Mapping[str, Any], desired: Mapping[str, Any], forget_nodes: Iterable[str] = ()
) -> dict[str, Any]:
    """The JSON merge patch of ``status`` that turns ``current`` into ``desired`` for the operator's
    fields: maps (allocations) are patched key by key so that removed keys become null; agent-owned
    ``nodes`` entries are only touched to remove the ones in ``forget_nodes``."""
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        old = current.get(key)
        if isinstance(value, Mapping):
            old_map = old if isinstance(old, Mapping) else {}
            changes: dict[str, Any] = {k: v for k, v in value.items() if old_map.get(k) != v}
            changes |= {k: None for k in old_map if k not in value}
            if changes:
                patch[key] = changes
        elif value is None:
            if old is not None:
                patch[key] = None
        elif old != value:
            patch[key] = value
    forgotten = {node: None for node in forget_nodes}
    if forgotten:
        patch["nodes"] = forgotten
    return patch
