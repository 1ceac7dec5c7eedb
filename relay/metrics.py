"""Prometheus metrics, in a registry of the app's own (never the global default).

The hot path only counts in plain integers (the session cache's hits and misses) and observes
one histogram child it looked up once; the collector below reads the integers when scraped.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relay.oidc.discovery import Discovery
from relay.store.cache import SessionCache
from relay.store.invalidation import Listener
from relay.store.outage import OutageGrace


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "relay_request_duration_seconds",
            "Time to answer a request, by route and status.",
            ["route", "status"],
            registry=self.registry,
            buckets=(
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10,
            ),
        )  # fmt: skip
        self.logins = Counter(
            "relay_logins_total",
            "Completed /callback attempts.",
            ["result"],
            registry=self.registry,
        )
        self.pruned = Counter(
            "relay_pruned_rows_total", "Expired rows removed by the pruner.", registry=self.registry
        )
        self.refreshes = Counter(
            "relay_refresh_total",
            "Access-token refreshes by result: succeeded, ended (invalid_grant), ambiguous "
            "(invalid_grant after a grant whose answer never came), failed (the provider or "
            "database), rejected (what the provider sent failed validation).",
            ["result"],
            registry=self.registry,
        )
        self.sessions = Gauge(
            "relay_sessions",
            "Rows in the sessions table by state, sampled every sample interval.",
            ["state"],
            registry=self.registry,
        )

    def watch(
        self,
        cache: SessionCache,
        listener: Listener | None,
        discovery: Discovery,
        grace: OutageGrace | None = None,
    ) -> None:
        """Read when scraped: the cache's counters, the listener's and the provider's state."""
        self.registry.register(_StateCollector(cache, listener, discovery, grace))


class _StateCollector(Collector):
    def __init__(
        self,
        cache: SessionCache,
        listener: Listener | None,
        discovery: Discovery,
        grace: OutageGrace | None,
    ) -> None:
        self._cache = cache
        self._grace = grace
        self._listener = listener
        self._discovery = discovery

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "relay_provider_ready",
            "1 when the provider's metadata was last fetched successfully, else 0.",
            value=1 if self._discovery.last_error is None else 0,
        )
        cache = self._cache
        yield CounterMetricFamily(
            "relay_session_cache_hits", "/auth answered from the cache.", value=cache.hits
        )
        yield CounterMetricFamily(
            "relay_session_cache_misses",
            "Session lookups the cache could not answer.",
            value=cache.misses,
        )
        yield CounterMetricFamily(
            "relay_session_cache_invalidations",
            "Cached sessions dropped because they ended (here, elsewhere, or in a flush).",
            value=cache.invalidations,
        )
        yield GaugeMetricFamily(
            "relay_session_cache_entries", "Sessions in the cache.", value=len(cache)
        )
        yield CounterMetricFamily(
            "relay_session_cache_misses_remembered",
            "Lookups of a cookie that named no session, answered without the database because "
            "it named none moments before (cache.miss_ttl).",
            value=cache.misses_remembered,
        )
        yield GaugeMetricFamily(
            "relay_session_cache_missing_entries",
            "Cookies remembered as naming no session.",
            value=cache.missing,
        )
        trusted = cache.trusted()
        yield GaugeMetricFamily(
            "relay_session_cache_trusted",
            "1 while the cache may answer: the invalidation listener (or SQLite watcher) is live.",
            value=1 if trusted else 0,
        )
        if self._grace is not None and self._grace.seconds > 0:
            yield GaugeMetricFamily(
                "relay_session_cache_outage_grace",
                "1 while held sessions ride out a database outage (cache.outage_grace).",
                value=1 if self._grace.active else 0,
            )
            yield CounterMetricFamily(
                "relay_session_cache_outage_grace_answers",
                "Checks answered from sessions held through a database outage.",
                value=self._grace.answered_total,
            )
            yield CounterMetricFamily(
                "relay_session_cache_outage_graces",
                "Database outages this replica rode out with its held sessions.",
                value=self._grace.episodes,
            )
        if self._listener is not None:
            yield GaugeMetricFamily(
                "relay_invalidation_listener_connected",
                "1 while the LISTEN connection for ended sessions is up.",
                value=1 if self._listener.connected else 0,
            )
            yield CounterMetricFamily(
                "relay_invalidation_listener_connects",
                "Times the LISTEN connection was (re)established.",
                value=self._listener.reconnects,
            )
