"""Every Kubernetes API access of the operator and of the agents, declared once.

The operator's handlers take their resource names from here, the chart's RBAC is checked against it
(tests/chart), and the operator tests check that the requests the running operator really makes are
covered (tests/controller). The agents' table is the operator <-> agent contract of docs/operator.md.
"""

from dataclasses import dataclass
from typing import Final, Literal

from dmvpn.api.constants import GROUP, KIND_HUB, KIND_SPOKE, PLURALS

Verb = Literal["get", "list", "watch", "create", "update", "patch", "delete"]
Scope = Literal["cluster", "namespace"]


@dataclass(frozen=True)
class Access:
    """Verbs on one resource (``plural`` or ``plural/subresource``) of one API group."""

    group: str
    resource: str
    verbs: tuple[Verb, ...]
    why: str
    scope: Scope = "cluster"

    def triples(self) -> set[tuple[str, str, str]]:
        """(group, resource, verb) for each verb, the unit RBAC rules grant."""
        return {(self.group, self.resource, verb) for verb in self.verbs}


HUBS: Final = PLURALS[KIND_HUB]
SPOKES: Final = PLURALS[KIND_SPOKE]
NODES: Final = "nodes"
EVENTS: Final = "events"

#: What the operator (kopf) calls. kopf lists and watches each resource it handles or indexes,
#: patches the objects it handles (finalizer, progress annotations under dmvpn.io) and their status
#: subresource, and creates core/v1 Events in the namespace it runs in (where kopf posts the Events
#: of cluster-scoped objects). It reads no Secrets: the agents read and check them.
OPERATOR_ACCESS: Final = (
    Access(GROUP, HUBS, ("list", "watch", "patch"), "handle hubs; finalizer and progress annotations"),
    Access(GROUP, SPOKES, ("list", "watch", "patch"), "handle spokes; finalizer and progress annotations"),
    Access(GROUP, f"{HUBS}/status", ("patch",), "conditions, nbma, summaries"),
    Access(GROUP, f"{SPOKES}/status", ("patch",), "conditions, allocations, summaries"),
    Access("", NODES, ("list", "watch"), "which nodes a hub or spoke selects, their addresses"),
    Access("", EVENTS, ("create",), "Kubernetes Events about hubs and spokes, in its own namespace", "namespace"),
)

#: What an agent calls (its Kubernetes mode): read the objects, report its own node's entry in
#: status.nodes with a JSON merge patch of that key only, read its own Node, read Secrets of the
#: namespace it runs in. No finalizers, no conditions (see docs/operator.md).
AGENT_ACCESS: Final = (
    Access(GROUP, HUBS, ("get", "list", "watch"), "the hubs selecting this node, hub NBMA of named hubs"),
    Access(GROUP, SPOKES, ("get", "list", "watch"), "the spokes selecting this node, allocations"),
    Access(GROUP, f"{HUBS}/status", ("patch",), "status.nodes.<this node>"),
    Access(GROUP, f"{SPOKES}/status", ("patch",), "status.nodes.<this node>"),
    Access("", NODES, ("get", "list", "watch"), "this node's labels, addresses, podCIDRs (fieldSelector on its name)"),
    Access("", "secrets", ("get",), "IKE PSK, certificates, NHRP password", scope="namespace"),
)


def triples(table: tuple[Access, ...], scope: Scope | None = None) -> set[tuple[str, str, str]]:
    """All (group, resource, verb) of a table, optionally of one scope only."""
    found: set[tuple[str, str, str]] = set()
    for access in table:
        if scope is None or access.scope == scope:
            found |= access.triples()
    return found
