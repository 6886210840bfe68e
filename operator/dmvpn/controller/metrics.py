"""Prometheus metrics of the operator (served by ``dmvpn-operator --metrics-port``)."""

import contextlib
from collections import Counter as Tally
from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("dmvpn_operator_reconciles_total", "Reconciliations computed", ["kind"])
RECONCILE_ERRORS = Counter("dmvpn_operator_reconcile_errors_total", "Reconciliations that raised", ["kind"])
RECONCILE_SECONDS = Histogram(
    "dmvpn_operator_reconcile_duration_seconds",
    "Time to compute one reconciliation",
    ["kind"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
STATUS_PATCHES = Counter("dmvpn_operator_status_patches_total", "Status patches issued", ["kind"])
EVENTS = Counter("dmvpn_operator_events_total", "Kubernetes Events posted", ["kind", "type", "reason"])
ALLOCATIONS = Gauge("dmvpn_operator_allocations", "Tunnel addresses allocated to nodes", ["spoke"])
UNALLOCATED = Gauge("dmvpn_operator_unallocated_nodes", "Selected nodes without a tunnel address", ["spoke"])
OBJECTS = Gauge("dmvpn_operator_objects", "Objects by condition and status", ["kind", "condition", "status"])
CLEANUP_TIMEOUTS = Counter(
    "dmvpn_operator_cleanup_timeouts_total", "Deletions released without every agent's cleanup", ["kind"]
)


def publish_conditions(kind: str, by_object: Mapping[str, Mapping[str, str]]) -> None:
    """Set ``dmvpn_operator_objects`` for one kind from each object's {condition: status}."""
    tally: Tally[tuple[str, str]] = Tally()
    for conditions in by_object.values():
        tally.update(conditions.items())
    for condition in ("Accepted", "Ready", "Degraded"):
        for status in ("True", "False", "Unknown"):
            OBJECTS.labels(kind, condition, status).set(tally.get((condition, status), 0))


def forget_spoke(spoke: str) -> None:
    """Drop the per-spoke series of a deleted spoke."""
    for gauge in (ALLOCATIONS, UNALLOCATED):
        with contextlib.suppress(KeyError):
            gauge.remove(spoke)
