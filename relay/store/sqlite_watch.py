"""Ended sessions, told to a SQLite relay by other processes: a log the database keeps, and
``PRAGMA data_version``.

SQLite has no NOTIFY. Instead, triggers (migrations/versions/0006_ended_sessions.py) write
every active session that ends to the ``ended_sessions`` log, in the ending's own
transaction, whoever ends it: this relay, ``relay sessions revoke``, a relay in another
process, a hand-written ``DELETE``. Each sequence number is one ending; numbers are never
reused and, with one writer at a time, have no gaps.

The :class:`Watcher` keeps one connection of its own (its own engine: its statements are not
the relay pool's) and every ``POLL`` seconds asks it for ``PRAGMA data_version``, which
changes when any *other* connection has committed. Most commits are no ending (a login, a
touch, a pending login, the relay's own through its pool): the watcher then reads the log
past the last number it has seen, finds nothing, and the cache keeps every entry. An
unrelated write costs one indexed SELECT, never a flush. New entries drop exactly those
sessions from the cache.

Trust works as with the PostgreSQL listener (store/invalidation.py): the cache is trusted
until ``TRUST`` seconds after the start of the last poll that succeeded, since that poll saw
every commit before it began. A poll that fails (the file unreadable, locked past the
database timeout) ends trust at once, and the connection is reopened with backoff. The next
poll that succeeds reads every entry since the last one seen before it trusts again; only
when entries it never read are gone (pruned after ``KEEP`` seconds) does it flush the cache.
A session ended by any process therefore stops working at a running relay within ``TRUST``
seconds of the commit (``POLL`` plus one poll's time, when polls keep up); the documented
bound is 1 second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog
from sqlalchemy import delete, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from relay.background import stop_if_cancelling
from relay.errors import DatabaseUnavailable
from relay.store.cache import SessionCache
from relay.store.database import make_engine, translated
from relay.store.models import ended_sessions

log = structlog.get_logger("relay.invalidation")

POLL = 0.25  # seconds between polls
TRUST = 0.75  # seconds a poll is good for; the documented bound is 1 second
KEEP = 60  # seconds an entry stays in the log: a watcher reads it within POLL
_RETRY_MAX = 5.0

_VERSION = text("PRAGMA data_version")
# The entries past ``after`` and the last number ever given, in one statement (one snapshot:
# a count that does not match the numbers means entries were pruned unread). The log table
# is read even when nothing is new, so a log that cannot be read fails the poll. A row with
# a NULL id_hash only carries the last number.
_SINCE = text(
    "SELECT e.id_hash, s.seq AS last FROM sqlite_sequence AS s"
    " LEFT JOIN ended_sessions AS e ON e.seq > :after AND e.seq <= s.seq"
    " WHERE s.name = 'ended_sessions' ORDER BY e.seq"
)
_NONE_YET = 2**62  # as ``after`` on the first poll: only the last number is wanted


async def forget_old(conn: AsyncConnection, now: int) -> int:
    """Delete log entries older than KEEP (the pruner's); return how many."""
    statement = delete(ended_sessions).where(ended_sessions.c.ended_at <= now - KEEP)
    return (await conn.execute(statement)).rowcount


class Watcher:
    """One polling connection per SQLite relay, reopened with backoff; see the module doc."""

    def __init__(
        self,
        database_url: str,
        cache: SessionCache,
        *,
        timeout: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = database_url
        self._cache = cache
        self._timeout = timeout
        self._monotonic = monotonic
        self._trusted_until = 0.0
        self._version: int | None = None  # data_version at the last poll, on this connection
        self._seen: int | None = None  # the last log entry handled; None: before the first poll
        self.confirmed = asyncio.Event()  # set by the first poll that succeeds
        self.failing = False
        self.polls = 0

    def trusted(self) -> bool:
        return self._monotonic() < self._trusted_until

    async def first_poll(self) -> None:
        """Wait, at most the database timeout, for the first poll to get through: the relay
        waits for it before serving, so that the cache serves from the first request (a local
        file answers in milliseconds). A file that cannot be read leaves the cache bypassed
        until the watcher gets through."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout):
                await self.confirmed.wait()

    async def run(self) -> None:
        """Poll until cancelled, reopening the connection after any failure."""
        engine = make_engine(self._url, timeout=self._timeout)
        delay = POLL
        try:
            while True:
                polls = self.polls
                try:
                    await self._watch(engine)
                except DatabaseUnavailable as exc:
                    stop_if_cancelling()
                    self._lost(exc)
                if self.polls != polls:  # it had worked in between
                    delay = POLL
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
        finally:
            self._trusted_until = 0.0
            await engine.dispose()

    async def _watch(self, engine: AsyncEngine) -> None:
        with translated():
            async with asyncio.timeout(self._timeout):
                conn = await engine.connect()
        try:
            with translated():
                await conn.execution_options(isolation_level="AUTOCOMMIT")
            # data_version is per connection: a new one starts from its own number.
            self._version = None
            while True:
                await self.poll(conn)
                if self.failing:
                    self.failing = False
                    log.info("invalidation.watching", recovered=True)
                await asyncio.sleep(POLL)
        finally:
            with contextlib.suppress(DatabaseUnavailable), translated():
                async with asyncio.timeout(self._timeout):
                    await conn.close()

    async def poll(self, conn: AsyncConnection) -> None:
        """One look: if anybody else committed, read the log past the last entry seen and
        drop those sessions; then vouch for the cache for TRUST seconds."""
        started = self._monotonic()
        try:
            with translated():
                async with asyncio.timeout(self._timeout):
                    version = (await conn.execute(_VERSION)).scalar_one()
                    if version != self._version:
                        await self._read_log(conn)
                        self._version = version
        except DatabaseUnavailable:
            self._trusted_until = 0.0  # at once: not even the last poll's remainder
            raise
        self._trusted_until = started + TRUST
        self.polls += 1
        if not self.confirmed.is_set():
            self.confirmed.set()
            log.info("invalidation.watching", recovered=False)

    async def _read_log(self, conn: AsyncConnection) -> None:
        after = _NONE_YET if self._seen is None else self._seen
        rows = (await conn.execute(_SINCE, {"after": after})).all()
        last = rows[0].last if rows else 0  # no row: nothing ever logged
        if self._seen is None:
            # The first poll: the cache has taken nothing in yet (it was not trusted), so
            # nothing that ended before now can be in it.
            self._seen = last
            return
        ended = [row.id_hash for row in rows if row.id_hash is not None]
        if len(ended) != last - self._seen:
            # Entries this relay never read were pruned (it stalled past KEEP), or the numbers
            # went back (the log was recreated): whatever they named is unknown.
            log.warning("invalidation.log_gap", seen=self._seen, last=last, found=len(ended))
            self._cache.flush()
        elif ended:
            self._cache.invalidate(ended)
        self._seen = last

    def _lost(self, exc: DatabaseUnavailable) -> None:
        # No flush: the log still holds what ends meanwhile, and the next poll reads it
        # before trusting again. Until then the cache answers nothing.
        self._trusted_until = 0.0  # the connection may have failed before any poll
        if not self.failing:
            log.warning("invalidation.lost", reason=exc.reason, detail=exc.detail)
        self.failing = True
