"""Prometheus metrics of one agent: event-driven ones (histogram, counters) plus a collector that reads
the engine's counters and the agent's state at scrape time (nothing to keep in sync)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from dmvpn.agent.agent import Agent

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0)


class Metrics:
    """Implements the agent's Observer hooks and owns the registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.shortcuts_created = Counter(
            "dmvpn_shortcuts_created", "Shortcuts installed after an NHRP resolution", registry=self.registry
        )
        self.shortcuts_expired = Counter(
            "dmvpn_shortcuts_expired", "Shortcuts removed because they were idle", registry=self.registry
        )
        self.reconcile_errors = Counter(
            "dmvpn_reconcile_errors", "Failed kernel reconciles (retried)", registry=self.registry
        )
        self.resolution_latency = Histogram(
            "dmvpn_resolution_latency_seconds",
            "From Traffic Indication (or kernel solicitation) to the NHRP Resolution Reply",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def attach(self, agent: Agent) -> None:
        self.registry.register(AgentCollector(agent))

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        start_http_server(port, addr=address, registry=self.registry)

    # Observer hooks
    def shortcut_created(self) -> None:
        self.shortcuts_created.inc()

    def shortcut_expired(self) -> None:
        self.shortcuts_expired.inc()

    def reconcile_error(self) -> None:
        self.reconcile_errors.inc()

    def observe_resolution(self, seconds: float) -> None:
        self.resolution_latency.observe(seconds)

    def resolution_latency_hook(self, seconds: float) -> None:
        self.resolution_latency.observe(seconds)


class MetricsObserver:
    """Adapter from the agent's Observer protocol to :class:`Metrics`."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def shortcut_created(self) -> None:
        self.metrics.shortcut_created()

    def shortcut_expired(self) -> None:
        self.metrics.shortcut_expired()

    def resolution_latency(self, seconds: float) -> None:
        self.metrics.observe_resolution(seconds)

    def reconcile_error(self) -> None:
        self.metrics.reconcile_error()


class AgentCollector(Collector):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        agent = self.agent
        counters = agent.engine.counters
        packets = CounterMetricFamily(
            "dmvpn_nhrp_packets", "NHRP packets by direction and type", labels=["direction", "type"]
        )
        for kind, count in counters.packets_in.items():
            packets.add_metric(["in", kind.name.lower()], count)
        for kind, count in counters.packets_out.items():
            packets.add_metric(["out", kind.name.lower()], count)
        yield packets
        drops = CounterMetricFamily("dmvpn_nhrp_drops", "NHRP packets dropped, by reason", labels=["reason"])
        for reason, count in counters.drops.items():
            drops.add_metric([reason.value], count)
        yield drops
        registrations = GaugeMetricFamily(
            "dmvpn_registrations", "Bindings registered with this hub (NHRP dynamic entries)"
        )
        registrations.add_metric([], sum(1 for e in agent.engine.cache if e.type.value == "dynamic"))
        yield registrations
        nhs = GaugeMetricFamily("dmvpn_nhs_up", "1 if registered with this NHS", labels=["nhs"])
        for registration in agent.engine.nhs:
            nhs.add_metric([str(registration.nbma)], 1.0 if registration.up else 0.0)
        yield nhs
        sas = GaugeMetricFamily("dmvpn_ipsec_sas_up", "Peers with an installed CHILD_SA")
        sas.add_metric([], len(agent.sa_up_peers))
        yield sas
        if agent.guard is not None:
            guard = CounterMetricFamily(
                "dmvpn_ipsec_guard_dropped_packets",
                "Clear GRE dropped by the IPsec guard (in: from peers without an SA)",
                labels=["direction"],
            )
            guard.add_metric(["in"], agent.guard.dropped_in_packets)
            guard.add_metric(["out"], agent.guard.dropped_out_packets)
            yield guard
