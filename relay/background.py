"""What the app's background tasks (discovery warm-up, pruner, sampler) share."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

import structlog

log = structlog.get_logger("relay.app")


def stop_if_cancelling() -> None:
    """Raise CancelledError if the current task has been asked to stop.

    A cancelled connect can come back as a connection error (a transport's own task group
    swallows the cancellation); a retry loop that catches such errors calls this first.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def stop_tasks(
    stopping: Collection[asyncio.Task[None]], others: Collection[asyncio.Task[None]], grace: float
) -> None:
    """Wait for the tasks already told to stop, then cancel the rest and wait for them. Each
    wait is bounded: a task that will not stop must not hold up a deploy; it is logged."""
    tasks = [*stopping, *others]
    if stopping:
        await asyncio.wait(stopping, timeout=grace)
    for task in tasks:
        task.cancel()
    _, stuck = await asyncio.wait(tasks, timeout=grace)
    for task in stuck:
        log.error("relay.task_did_not_stop", task=task.get_name())
