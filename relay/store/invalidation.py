"""Ended sessions, told to every replica: PostgreSQL LISTEN/NOTIFY.

A statement that ends sessions calls :func:`announce` in its own transaction, so the
notification goes out if and only if the sessions really ended (NOTIFY is transactional).
Each replica keeps one :class:`Listener` connection, which drops the named sessions from its
cache the moment the notification arrives.

The listener also says whether the cache may be trusted. Every ``HEARTBEAT`` seconds it sends
a ``SELECT 1`` on the listening connection; PostgreSQL delivers every notification committed
before that statement ahead of its answer, so when the answer comes, nothing older can still
be missing. The cache is trusted until ``TRUST`` seconds after the start of the last answered
heartbeat. A connection that dies, hangs or is terminated stops confirming: within ``TRUST``
the cache is bypassed (every /auth reads the table). A heartbeat that is merely slow (a busy
machine) resumes trust when it answers, with the notifications that came before it handled
first; one that gets no answer within the database timeout (its socket is shut then), or a
connection that fails, counts as lost: the listener reconnects and flushes the cache before
trusting it again, because notifications sent meanwhile were lost. A session ended on any
replica therefore stops working everywhere within ``TRUST`` seconds, plus the time the ending
transaction takes to commit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import psycopg
import structlog
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.background import stop_if_cancelling
from relay.store.cache import SessionCache
from relay.store.database import Deadline
from relay.store.outage import OutageGrace

log = structlog.get_logger("relay.invalidation")

CHANNEL = "relay_sessions_ended"
HEARTBEAT = 0.25  # seconds between confirmations
TRUST = 0.75  # seconds a confirmation is good for; the documented bound is 1 second
_PER_NOTIFY = 100  # hashes per payload: 100 x 65 bytes stays under PostgreSQL's 8000
_NOTIFY = text(f"SELECT pg_notify('{CHANNEL}', :payload)")
_RETRY_MAX = 5.0


async def announce(conn: AsyncConnection, id_hashes: Sequence[str]) -> None:
    """Queue a notification for these ended sessions in ``conn``'s transaction (PostgreSQL;
    with SQLite the schema's triggers log every ending, see store/sqlite_watch.py)."""
    if conn.dialect.name != "postgresql":
        return
    for start in range(0, len(id_hashes), _PER_NOTIFY):
        payload = " ".join(id_hashes[start : start + _PER_NOTIFY])
        await conn.execute(_NOTIFY, {"payload": payload})


def libpq_url(sqlalchemy_url: str) -> str:
    """postgresql+psycopg://... as the plain libpq URL psycopg connects with."""
    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class Listener:
    """One LISTEN connection per replica, reconnecting with backoff; see the module doc."""

    def __init__(
        self,
        database_url: str,
        cache: SessionCache,
        *,
        timeout: float,
        monotonic: Callable[[], float] = time.monotonic,
        grace: OutageGrace | None = None,
    ) -> None:
        self._conninfo = libpq_url(database_url)
        self._cache = cache
        self._timeout = timeout
        self._monotonic = monotonic
        self._trusted_until = 0.0
        self._confirmed_at: float | None = None  # the start of the last answered heartbeat
        self._grace = grace if grace is not None else OutageGrace(0)
        self.connected = False
        self.reconnects = 0
        cache.trusted = self.trusted

    def trusted(self) -> bool:
        return self._monotonic() < self._trusted_until

    async def run(self) -> None:
        """Listen until cancelled, reconnecting after any failure."""
        delay = HEARTBEAT
        while True:
            try:
                await self._listen()
            except (psycopg.Error, OSError, TimeoutError) as exc:
                stop_if_cancelling()
                self._lost(exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX)
            # It had come back in between; or held sessions are riding out the outage, and
            # the sooner it is seen back, the sooner they are checked again.
            if self.connected or self._grace.covers():
                delay = HEARTBEAT

    async def _listen(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                conn = await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, connect_timeout=max(2, round(self._timeout))
                )
        except (psycopg.Error, OSError, TimeoutError):
            self._grace.unreachable()  # what lets held sessions ride out an outage
            raise
        try:
            async with asyncio.timeout(self._timeout):
                await conn.execute(f"LISTEN {CHANNEL}")
            await self._grace.renew()  # after an outage it rode out, if any
            # Whatever ended while nobody listened is unknown: start from an empty cache.
            self._cache.flush()
            self._grace.release()  # after the flush: nothing held from before is left
            self.connected = True
            self.reconnects += 1
            log.info("invalidation.listening", reconnects=self.reconnects - 1)
            while True:
                await self._confirm(conn)
                async for notice in conn.notifies(timeout=HEARTBEAT):
                    self._cache.invalidate(notice.payload.split())
        finally:
            self._untrust()  # before the await below lets a check run on an unheld cache
            try:
                async with asyncio.timeout(self._timeout):
                    await conn.close()
            except (psycopg.Error, OSError, TimeoutError):
                pass  # it is being dropped either way

    async def _confirm(self, conn: psycopg.AsyncConnection[object]) -> None:
        started = self._monotonic()
        # A slow answer (a busy machine) only lets trust lapse for a moment: the connection
        # still holds every notification, in order, and nothing needs flushing. Only a
        # connection that does not answer within the database timeout counts as lost: its
        # socket is shut then, as no cancellation could cross a link that hangs (psycopg
        # would wait 5 s trying, and the close as long again).
        deadline = Deadline(self._timeout, conn)
        try:
            async with asyncio.timeout(self._timeout + 1):
                await conn.execute("SELECT 1")
                # Notifications that came in ahead of the answer are held by psycopg until
                # asked for: take them before vouching for the cache.
                async for notice in conn.notifies(timeout=0):
                    self._cache.invalidate(notice.payload.split())
        finally:
            deadline.cancel()
        self._trusted_until = started + TRUST
        self._confirmed_at = started

    def _untrust(self) -> None:
        self._trusted_until = 0.0
        # With [cache] outage_grace, what the cache holds is kept, untrusted, for the
        # database's return or the grace's end (store/outage.py); the reconnect flushes it.
        if not self._grace.hold(self._confirmed_at, len(self._cache)):
            self._cache.flush()

    def _lost(self, exc: BaseException) -> None:
        self._untrust()
        if self.connected:
            log.warning("invalidation.lost", error=type(exc).__name__)
        self.connected = False
