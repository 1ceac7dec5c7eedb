"""What the app's background tasks (discovery warm-up, pruner) share."""

from __future__ import annotations

import asyncio


def stop_if_cancelling() -> None:
    """Raise CancelledError if the current task has been asked to stop.

    A cancelled connect can come back as a connection error (a transport's own task group
    swallows the cancellation); a retry loop that catches such errors calls this first.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
