"""The observed state of DMVPN endpoints: 'status' of DMVPNHub and DMVPNSpoke.

Written by our own code only: 'nodes[<node>]' by that node's agent, everything else by the operator.
Unknown fields are ignored rather than rejected, so an older operator can read what a newer agent wrote.
"""

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from dmvpn.api.errors import SpecProblems
from dmvpn.api.spec import WireModel
from dmvpn.api.types import (
    Checked,
    ConditionStatus,
    ConditionType,
    Count,
    Generation,
    IPv4,
    Reason,
    Timestamp,
    TunnelAddress,
    invalid,
)

#: Condition types the operator maintains (others may be added; consumers must ignore unknown ones).
CONDITION_READY = "Ready"
"""All selected nodes run the endpoint and every spoke node is registered with at least one hub."""
CONDITION_ACCEPTED = "Accepted"
"""The spec is valid and consistent with the hubs it refers to."""
CONDITION_DEGRADED = "Degraded"
"""Some nodes or hubs are down while the endpoint as a whole still works."""

MAX_MESSAGE = 32768


def _check_message(message: str) -> str:
    if len(message) > MAX_MESSAGE:
        raise invalid("message", f"must be at most {MAX_MESSAGE} characters (has {len(message)})")
    return message


Message = Annotated[str, Checked(_check_message, {"maxLength": MAX_MESSAGE})]


class StatusModel(WireModel):
    """Part of a status: tolerant of fields written by newer versions."""

    model_config = ConfigDict(extra="ignore")


class Condition(StatusModel):
    """A condition as in the Kubernetes API conventions (metav1.Condition)."""

    type: ConditionType
    """CamelCase type such as Ready."""
    status: ConditionStatus
    """True, False or Unknown."""
    observed_generation: Generation | None = None
    """metadata.generation the condition was computed from."""
    last_transition_time: Timestamp
    """When status last changed (RFC 3339)."""
    reason: Reason
    """CamelCase machine-readable reason."""
    message: Message
    """Human-readable details (may be empty)."""


class NodeStatus(StatusModel):
    """One node's view, written by the agent on that node."""

    role: Literal["hub", "spoke"]
    """Which kind of endpoint the node runs."""
    nbma: IPv4 | None = None
    """NBMA address in use."""
    tunnel_address: TunnelAddress | None = None
    """Tunnel address in use, with prefix."""
    nhs_up: list[IPv4] = Field(default_factory=list)
    """Tunnel addresses of the hubs (NHS) this node is registered with."""
    registered: bool = False
    """Spoke: registered with at least one hub. Hub: serving registrations."""
    peers: Count = 0
    """NHRP cache entries of peers (hub: registered spokes; spoke: hubs and shortcut peers)."""
    shortcuts: Count = 0
    """Phase 3 shortcut routes installed."""
    sas: Count = 0
    """Established IPsec CHILD SAs."""
    last_update: Timestamp
    """When the agent last wrote this entry; a stale entry means the agent is gone."""
    message: Message = ""
    """Human-readable details, e.g. the last error."""


def _conditions_field() -> list[Condition]:
    return []


class EndpointStatus(StatusModel):
    """Status fields shared by hubs and spokes."""

    observed_generation: Generation | None = None
    """metadata.generation the operator last acted on."""
    conditions: list[Condition] = Field(
        default_factory=_conditions_field,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Ready, Accepted, Degraded (see docs/api.md)."""
    nodes: dict[str, NodeStatus] = Field(default_factory=dict)
    """Per-node status, keyed by node name."""
    selected_nodes: Count = 0
    """Nodes that nodeName/nodeSelector select."""
    ready_nodes: Count = 0
    """Selected nodes whose agent reports the endpoint up."""
    hubs_up: Count = 0
    """Distinct hubs (NHS) that at least one node is registered with."""
    shortcuts: Count = 0
    """Shortcut routes over all nodes."""

    @model_validator(mode="after")
    def _unique_condition_types(self) -> Self:
        seen: set[str] = set()
        for index, condition in enumerate(self.conditions):
            if condition.type in seen:
                raise SpecProblems([(f"conditions[{index}].type", f"duplicate condition type {condition.type}")])
            seen.add(condition.type)
        return self

    def condition(self, condition_type: str) -> Condition | None:
        """The condition of this type, if present."""
        return find_condition(self.conditions, condition_type)


class DMVPNHubStatus(EndpointStatus):
    """Observed state of a hub."""

    nbma: IPv4 | None = None
    """NBMA address the hub is reached at (what spokes use for 'ip nhrp nhs ... nbma')."""
    registered_spokes: Count = 0
    """Spokes registered with this hub, including spokes of other clusters (federation)."""


class DMVPNSpokeStatus(EndpointStatus):
    """Observed state of a spoke."""

    allocations: dict[str, TunnelAddress] = Field(default_factory=dict)
    """Tunnel address with prefix allocated to each node (written by the operator)."""


def find_condition(conditions: Sequence[Condition], condition_type: str) -> Condition | None:
    """The condition of 'condition_type' in 'conditions', if present."""
    return next((c for c in conditions if c.type == condition_type), None)


def set_condition(
    conditions: Sequence[Condition],
    condition_type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    *,
    now: datetime,
    observed_generation: int | None = None,
) -> list[Condition]:
    """'conditions' with one condition replaced or added, as Kubernetes controllers do it.

    'lastTransitionTime' only moves when 'status' changes, so it answers "since when"; 'now' is
    passed in because this package does no I/O (and tests want a fixed clock).
    """
    previous = find_condition(conditions, condition_type)
    transition = previous.last_transition_time if previous and previous.status == status else now
    updated = Condition(
        type=condition_type,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=transition,
        observed_generation=observed_generation,
    )
    replaced = [updated if c.type == condition_type else c for c in conditions]
    return replaced if previous else [*replaced, updated]
