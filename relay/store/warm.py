"""Warm starts: a replica whose cache is empty (it just started, or its cache was flushed when
its listener came back) loads the most recently active sessions in the background, so that a
rolling deploy does not send every session down the uncached path at once.

- It runs only once the cache may be believed (the listener's, or the SQLite watcher's, first
  proof): what it loads is then kept right by the same invalidations as everything else.
- One SELECT of the hashes of the most recently active sessions, at most as many as the
  cache has room for (about 100 bytes each, held while it runs), then their rows ``BATCH``
  at a time by primary key, each a short statement of its own, with the event loop free
  between them; at most ``SECONDS`` in all. No server-side cursor or long transaction is
  held open, and memory is the cache's own bound plus the hashes and one batch.
- A session a check has put there first is kept (it is newer); one that ended since the
  warm start began is not loaded (the cache remembers what ended meanwhile: a batch's
  snapshot may be older than an ending it hears of); a flush, or the cache becoming
  untrusted, stops it (``SessionCache.put_cold``).
- A starting replica's /readyz waits for its first warm start (``warming``), for at most
  ``READY_WAIT`` seconds from the start: a load balancer sends a new replica of a rolling
  deploy its share of the checks once it can answer them from memory (about 4 s for 100,000
  sessions here), not while every one of them is a lookup. Only the first: a flush (the
  listener's reconnect, which a database blip causes on every replica at once) never takes
  a replica out. /healthz never waits, and a database error ends a warm start with one log
  line.
- What it loaded is then left out of the garbage collector's full passes (``gc.freeze``):
  100,000 cached sessions are some 400,000 objects for it to walk, a pause of about 0.1 s
  every few seconds under load (benchmarks/users.py). None of them is in a reference cycle,
  so they are still freed the moment the cache lets them go. A warm start first thaws and
  collects what an earlier one froze, so cyclic garbage frozen with it lives one warm start
  at most.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from sqlalchemy import Row

from relay.errors import DatabaseUnavailable
from relay.store.database import Database
from relay.store.sessions import WARM_IDS, WARM_ROWS, Sessions

log = structlog.get_logger("relay.store")

BATCH = 500
SECONDS = 60.0
READY_WAIT = 30.0  # seconds a starting replica's /readyz waits for its first warm start
# How often a warm start waiting for the cache to be trusted looks again.
_TRUST_POLL = 0.1


class Warmer:
    def __init__(
        self,
        db: Database,
        sessions: Sessions,
        clock: Callable[[], float],
        *,
        seconds: float = SECONDS,
        untrustable: Callable[[], bool] = lambda: False,
    ) -> None:
        self._db = db
        self._sessions = sessions
        self._cache = sessions.cache
        self._clock = clock
        self._seconds = seconds
        self.runs = 0  # warm starts finished (tests wait on it)
        self._started = time.monotonic()
        # Whether the cache has been found unable to be trusted (a listener behind a
        # transaction pooler): no warm start will come, and /readyz does not wait for one.
        self._untrustable = untrustable

    @property
    def warming(self) -> bool:
        """The process's first warm start has not finished, may still come, and READY_WAIT
        has not passed."""
        return (
            self.runs == 0
            and time.monotonic() - self._started < READY_WAIT
            and not self._untrustable()
        )

    async def run(self) -> None:
        """Forever: each time the cache is emptied, warm it once it is trusted."""
        while True:
            await self._cache.emptied.wait()
            # Trust is the listener's clock reading of its last proof: nothing signals it.
            while not self._cache.trusted():  # noqa: ASYNC110
                await asyncio.sleep(_TRUST_POLL)
            # Flushes until now (the listener's first connect flushes too) are this warm
            # start's; one while it runs sets it again, for the next.
            self._cache.emptied.clear()
            try:
                await self.warm()
            except DatabaseUnavailable as exc:
                log.warning("cache.warm_failed", reason=exc.reason, detail=exc.detail)
            self.runs += 1

    async def warm(self) -> int:
        """Load what fits; how many sessions were loaded."""
        cache = self._cache
        room = cache.room
        if room == 0:
            return 0
        started = time.monotonic()
        now = int(self._clock())
        flushes = cache.flushes
        loaded, stopped = 0, "done"
        gc.unfreeze()
        gc.collect()  # the cache was just emptied: a short pass
        cache.begin_warm()
        try:
            async with self._db.maintenance() as conn:
                ids = (await conn.execute(WARM_IDS, {"now": now, "room": room})).scalars().all()
            for start in range(0, len(ids), BATCH):
                batch = ids[start : start + BATCH]
                async with self._db.autocommit() as conn:
                    found = (await conn.execute(WARM_ROWS, {"keys": batch})).all()
                rank = {id_hash: n for n, id_hash in enumerate(batch)}
                rows = sorted(found, key=lambda row: rank[row[0]])  # most recent first
                count, stop = self._put(rows, now, flushes)
                loaded += count
                if stop is None and time.monotonic() - started > self._seconds:
                    stop = "time"
                if stop is not None:
                    stopped = stop
                    break
                await asyncio.sleep(0)  # the checks waiting go first
        finally:
            cache.end_warm()
            gc.freeze()
        log.info(
            "cache.warmed",
            sessions=loaded,
            seconds=round(time.monotonic() - started, 3),
            stopped=stopped,
        )
        return loaded

    def _put(self, rows: Sequence[Row[Any]], now: int, flushes: int) -> tuple[int, str | None]:
        """Put a batch in the cache: how many went in, and why to stop, if so."""
        count = 0
        for row in rows:
            entry = self._sessions.record(row[0], row[1:], now)
            if entry is None:
                continue  # expired since the SELECT began
            if not self._cache.put_cold(row[0], entry, flushes):
                return count, "cache_full" if self._cache.room == 0 else "cache_emptied"
            count += 1
        return count, None
