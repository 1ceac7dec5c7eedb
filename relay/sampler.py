"""The background loop that samples the sessions table into the relay_sessions gauge: a count
every interval, never a count per request."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from relay.background import stop_if_cancelling
from relay.errors import DatabaseUnavailable
from relay.metrics import Metrics
from relay.store.database import Database
from relay.store.stats import count_sessions

log = structlog.get_logger("relay.sampler")

SAMPLE_INTERVAL = 30.0  # seconds: a GROUP BY over the table, cheap at this pace


async def run_sampler(
    db: Database,
    metrics: Metrics,
    clock: Callable[[], float],
    stop: asyncio.Event,
    interval: float = SAMPLE_INTERVAL,
) -> None:
    """Sample until ``stop`` is set. Stopped between samples rather than cancelled: a
    cancellation that lands while a connection is being checked out leaks it."""
    while not stop.is_set():
        try:
            counts = await count_sessions(db, int(clock()))
        except DatabaseUnavailable as exc:
            stop_if_cancelling()
            log.debug("sample.failed", reason=exc.reason)
        else:
            metrics.sessions.labels(state="active").set(counts.active)
            metrics.sessions.labels(state="pending").set(counts.pending)
            metrics.sessions.labels(state="expired").set(counts.expired)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
