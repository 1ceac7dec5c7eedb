"""Riding out a database outage: ``[cache] outage_grace`` (PostgreSQL; off, 0, by default).

Without it a replica that loses its invalidation listener empties its cache and reads the
table for every check, so while the database is away every /auth answers 503. With it, the
sessions the cache held when the listener lost the database keep passing, for at most
``outage_grace`` seconds, but only while the database cannot be reached at all:

- The grace is counted from the start of the listener's last answered heartbeat: the last
  moment this replica knew it had heard of every ending (store/invalidation.py). Not per
  session, and not from when the loss was noticed. A session ended elsewhere after that
  moment is admitted here for at most ``outage_grace`` after its ending.
- Held entries answer only after an attempt to *connect* failed since the loss (the
  listener's reconnect, or a request's own read, refused or unreachable): a slow listener or
  a slow database (``database.timeout``) is not an outage. Any statement that gets through
  stops it; the listener's next reconnect flushes the cache, since notifications sent
  meanwhile were lost, and ends the episode.
- Nothing enters the cache meanwhile (it is untrusted); entries can still leave it (a logout
  here). Expiry is judged on every answer, from the held timestamps: a session whose expiry
  passes during the grace stops (503, never 401). A touch due meanwhile is skipped: nothing
  can be written.

``store/sessions.py`` asks :meth:`OutageGrace.covers` before answering from a held entry; the
listener calls :meth:`hold`, :meth:`unreachable` and :meth:`release`. One object per process,
which the metrics read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from relay.errors import DatabaseUnavailable

log = structlog.get_logger("relay.cache")

# A connection refused, reset or unreachable; not "database.timeout" (a statement or lock
# that took too long, a pool exhausted: a database that is there, only slow).
_UNREACHABLE = "database.unavailable"
# Dropping the pool's connections closes sockets, most of them dead already: local work.
_RENEW_TIMEOUT = 5.0


class OutageGrace:
    def __init__(
        self,
        seconds: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        renew: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.seconds = seconds
        self._monotonic = monotonic
        self._renew = renew  # replaces the pool's connections (the engine's dispose)
        self._since: float | None = None  # held from this moment on (the last confirmation)
        self._entries = 0  # how many were held then
        self._unreachable = False  # an attempt to connect failed since the hold, none got through
        self._started: float | None = None  # the episode's started line was written then
        self._ended = False
        self._answered = 0  # in this episode
        self.answered_total = 0  # checks answered from held entries, ever (a metric)
        self.episodes = 0  # graces started, ever (a metric)

    @property
    def active(self) -> bool:
        """Between the started and the ended line."""
        return self._started is not None and not self._ended

    def hold(self, since: float | None, entries: int) -> bool:
        """The listener lost the database. True: keep the cache's entries, held since
        ``since`` (the start of its last answered heartbeat). False: flush them, as without
        the grace (it is off, or nothing was ever confirmed, or that was too long ago)."""
        if self.seconds <= 0 or since is None:
            return False
        if self._since is not None:
            return True  # a reconnect that failed: the same outage, the same start
        if self._monotonic() >= since + self.seconds:
            return False
        # (Unreachable is still false: only a failure from now on can say otherwise.)
        self._since, self._entries = since, entries
        return True

    def unreachable(self) -> None:
        """An attempt to connect to the database failed."""
        if self._since is None:
            return
        self._unreachable = True
        if self._started is None and self._within():
            self._started = self._monotonic()
            self._answered = 0
            self.episodes += 1
            log.warning(
                "cache.outage_grace_started",
                held=self._entries,
                grace=self.seconds,
                remaining=round(self._since + self.seconds - self._started, 3),
            )
        self._within()  # logs the end once it has run out, even with no check to notice

    def failed(self, exc: DatabaseUnavailable) -> None:
        """A request's statement failed: an outage if it could not connect."""
        if exc.reason == _UNREACHABLE:
            self.unreachable()

    def reachable(self) -> None:
        """A statement got through: held entries answer no more (the listener will flush)."""
        self._unreachable = False

    def covers(self) -> bool:
        """Held entries may answer now: the database is unreachable, within the grace."""
        return self._unreachable and self._within()

    def answered(self) -> None:
        self._answered += 1
        self.answered_total += 1

    async def renew(self) -> None:
        """The listener is back: if held sessions answered, the pool's connections from before
        are dropped before the cache is flushed (they are dead, or after a failover talk to
        the old primary); the checks that fill it again then get new ones, not a 503 each
        for a dead connection. Held sessions answer meanwhile."""
        if self._started is None or self._renew is None:
            return
        try:
            async with asyncio.timeout(_RENEW_TIMEOUT):
                await self._renew()
        except (OSError, TimeoutError) as exc:
            log.warning("cache.outage_grace_renew_failed", error=type(exc).__name__)

    def release(self) -> None:
        """The listener is back and has flushed the cache: the episode ends."""
        self._end("database_back")
        self._since, self._unreachable, self._started, self._ended = None, False, None, False

    def _within(self) -> bool:
        if self._since is None:
            return False
        if self._monotonic() < self._since + self.seconds:
            return True
        self._end("expired")
        return False

    def _end(self, reason: str) -> None:
        if self._started is None or self._ended:
            return
        self._ended = True
        log.warning(
            "cache.outage_grace_ended",
            reason=reason,
            seconds=round(self._monotonic() - self._started, 3),
            answered=self._answered,
        )
