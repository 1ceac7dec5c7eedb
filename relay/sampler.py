"""The background loop that samples the sessions table into the relay_sessions gauge: a count
every interval, never a count per request."""

from __future__ import annotations

import asyncio
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
    interval: float = SAMPLE_INTERVAL,
) -> None:
    while True:
        try:
            counts = await count_sessions(db, int(clock()))
        except DatabaseUnavailable as exc:
            stop_if_cancelling()
            log.debug("sample.failed", reason=exc.reason)
        else:
            metrics.sessions.labels(state="active").set(counts.active)
            metrics.sessions.labels(state="pending").set(counts.pending)
            metrics.sessions.labels(state="expired").set(counts.expired)
        await asyncio.sleep(interval)
