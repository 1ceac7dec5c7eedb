"""Prometheus metrics, in a registry of the app's own (never the global default)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "relay_request_duration_seconds",
            "Time to answer a request, by route and status.",
            ["route", "status"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )
        self.logins = Counter(
            "relay_logins_total",
            "Completed /callback attempts.",
            ["result"],
            registry=self.registry,
        )
        self.pruned = Counter(
            "relay_pruned_rows_total", "Expired rows removed by the pruner.", registry=self.registry
        )
