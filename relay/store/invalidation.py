"""Ended sessions, told to every replica: PostgreSQL LISTEN/NOTIFY.

A statement that ends sessions calls :func:`announce` in its own transaction, so the
notification goes out if and only if the sessions really ended (NOTIFY is transactional).
Each replica keeps one :class:`Listener` connection, which drops the named sessions from its
cache the moment the notification arrives.

The listener also says whether the cache may be trusted. Every ``HEARTBEAT`` seconds it sends a
notification of its own (a probe, on a channel only this listener uses) on the listening
connection; PostgreSQL delivers every notification committed before that statement ahead of its
answer, so when the probe comes back, nothing older can still be missing. The probe, not merely
an answer, is the proof: behind a transaction pooler (PgBouncer) the LISTEN ran on one server
connection and the next statement may run on another, which answers queries but never delivers
a notification; there the probe never comes back, and the cache is never trusted
(``invalidation.unproven``, every check reads the table) rather than trusted blind. The cache
is trusted until ``TRUST`` seconds after the start of the last answered heartbeat. A connection
that dies, hangs or is terminated stops confirming: within ``TRUST`` the cache is bypassed
(every /auth reads the table). A heartbeat that is merely slow (a busy machine) resumes trust
when it answers, with the notifications that came before it handled first, and a check that
finds the cache untrusted while a probe that can still restore trust is on its way waits for
that probe (``vouched``, at most until ``TRUST`` after the probe started) instead of reading
the table: on a starved machine a burst of table reads is what makes the next probe late. One
that gets no
answer within the database timeout (its socket is shut then), or a connection that fails,
counts as lost: the listener reconnects and flushes the cache before trusting it again, because
notifications sent meanwhile were lost. A session ended on any replica therefore stops working
everywhere within ``TRUST`` seconds, plus the time the ending transaction takes to commit.
"""

from __future__ import annotations

import asyncio
import secrets
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


class Unproven(Exception):
    """The listener's own probe did not come back through its LISTEN."""


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
        # Unique per listener: another replica's probes are not this one's proof.
        self._probe_channel = f"relay_probe_{secrets.token_hex(8)}"
        self._probes = 0
        # The probe on its way, and when it was sent: checks may wait for it (vouched).
        self._probe: asyncio.Future[None] | None = None
        self._probe_started = 0.0
        self._unproven_logged = False
        self.unproven = 0  # connections or heartbeats that could not prove delivery
        self.connected = False
        self.reconnects = 0
        cache.trusted = self.trusted
        cache.vouch = self.vouched

    def trusted(self) -> bool:
        return self._monotonic() < self._trusted_until

    async def vouched(self) -> bool:
        """Whether the cache is trusted again once the probe on its way comes back; False at
        once if none is, or if it was sent too long ago to vouch for anything now."""
        probe = self._probe
        if probe is None or probe.done():
            return self.trusted()
        wait = self._probe_started + TRUST - self._monotonic()
        if wait <= 0:
            return False
        try:
            async with asyncio.timeout(wait):
                await asyncio.shield(probe)  # a waiter's cancellation is not the probe's
        except TimeoutError:
            return False
        return self.trusted()

    async def run(self) -> None:
        """Listen until cancelled, reconnecting after any failure."""
        delay = HEARTBEAT
        while True:
            try:
                await self._listen()
            except (psycopg.Error, OSError, TimeoutError, Unproven) as exc:
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
                # A pooler hands out its own backend id: the server's differs from it.
                cursor = await conn.execute("SELECT pg_backend_pid()")
                if (await cursor.fetchone()) != (conn.info.backend_pid,):
                    self._unproven("the listener's connection is not direct")
                await conn.execute(f"LISTEN {CHANNEL}")
                await conn.execute(f"LISTEN {self._probe_channel}")
            await self._grace.renew()  # after an outage it rode out, if any
            # Whatever ended while nobody listened is unknown: start from an empty cache.
            self._cache.flush()
            self._grace.release()  # after the flush: nothing held from before is left
            self.connected = True
            self.reconnects += 1
            log.info("invalidation.listening", reconnects=self.reconnects - 1)
            while True:
                # A heartbeat every HEARTBEAT from the start of the last, not from its answer:
                # a slow answer does not delay the next confirmation as well.
                started = self._monotonic()
                await self._confirm(conn)
                rest = HEARTBEAT - (self._monotonic() - started)
                if rest > 0:
                    async for notice in conn.notifies(timeout=rest):
                        self._heard(notice)
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
        self._probes += 1
        probe = str(self._probes)
        deadline = Deadline(self._timeout, conn)
        self._probe, self._probe_started = asyncio.get_running_loop().create_future(), started
        try:
            async with asyncio.timeout(self._timeout + 1):
                await conn.execute("SELECT pg_notify(%s, %s)", (self._probe_channel, probe))
                # The probe and whatever came in ahead of it are held by psycopg until asked
                # for: take them before vouching for the cache.
                proven = False
                async for notice in conn.notifies(timeout=0):
                    proven = self._heard(notice) == probe or proven
            if proven:
                self._trusted_until = started + TRUST
                self._confirmed_at = started
                self._unproven_logged = False
        finally:
            deadline.cancel()
            self._probe.set_result(None)  # whoever waits for it looks at trusted() again
        if not proven:
            self._unproven("the listener's own notification did not come back through its LISTEN")

    def _heard(self, notice: psycopg.Notify) -> str | None:
        """Act on a notification; the probe's number if it is one of this listener's."""
        if notice.channel == self._probe_channel:
            return notice.payload
        self._cache.invalidate(notice.payload.split())
        return None

    def _unproven(self, why: str) -> None:
        # Not a lost connection: it answers. Reconnecting finds the same pooler, so the cache
        # stays untrusted (every check reads the table), and this is said once.
        self.unproven += 1
        if not self._unproven_logged:
            log.error(
                "invalidation.unproven",
                detail=f"{why}: a transaction pooler (PgBouncer) between the relay and "
                "PostgreSQL? The session cache is not trusted, every check reads the table; "
                "set [database] listen_url to a direct connection",
            )
            self._unproven_logged = True
        raise Unproven(why)

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
