"""The background loop that runs a prune pass every prune_interval."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from relay.background import stop_if_cancelling
from relay.errors import DatabaseUnavailable
from relay.metrics import Metrics
from relay.store.database import Database
from relay.store.prune import PruneResult, prune

log = structlog.get_logger("relay.pruner")


async def prune_once(
    db: Database, now: int, batch_size: int, metrics: Metrics | None = None
) -> PruneResult:
    result = await prune(db, now, batch_size)
    if result.skipped:
        log.info("prune.skipped", reason="another process holds the prune lock")
    else:
        log.info("prune.completed", removed=result.removed, batches=result.batches)
        if metrics is not None:
            metrics.pruned.inc(result.removed)
    return result


async def run_pruner(
    db: Database,
    *,
    interval: int,
    batch_size: int,
    clock: Callable[[], float],
    metrics: Metrics,
    on_pass: Callable[[PruneResult], None] | None = None,
) -> None:
    """Prune now, then every ``interval`` seconds, until cancelled. A failed pass is logged and
    retried next time: the pruner reclaims space, it never decides whether a session is valid."""
    while True:
        try:
            result = await prune_once(db, int(clock()), batch_size, metrics)
        except DatabaseUnavailable as exc:
            stop_if_cancelling()
            log.warning("prune.failed", reason=exc.reason, detail=exc.detail)
        else:
            if on_pass is not None:
                on_pass(result)
        await asyncio.sleep(interval)
