"""Touches, written behind the answer and in batches.

A touch moves a session's last access and idle expiry on, at most once per
``touch_interval``. The check that finds one due does not wait for it: the session is valid
now by what the cache holds (expiry is judged on every check), and the touch only moves a
later expiry. So the check answers at once, and the touch joins a queue that one statement
per ``WINDOW`` writes, however many sessions it holds. A site with 100,000 sessions active
within a minute has about 1,700 touches due a second: one UPDATE each cost those checks a
database round trip apiece (benchmarks/users.py), and one UPDATE a second costs nearly
nothing.

- A touch records the second of the check that found it due and is written as of then, with
  today's conditions: the row active, unexpired at that second, and not touched by anyone
  within the interval before it. It is at most ``WINDOW`` (plus a statement's time) late in
  the table; the idle timeout stays measured from the check.
- A row the UPDATE did not change was touched by another replica within the interval, or has
  ended or expired: their times are read, in one statement, and the cache takes what the
  table says (a newer last access, moved in place, or nothing). Without that, two replicas
  serving one session (a rolling deploy) would each read the row again on every touch.
- A touch that cannot be written (the database is away) is logged and retried by the next
  check that finds it due; nothing else waits for it. Revocation does not depend on touches:
  endings reach the cache through the listener or the watcher.
- What is queued when the relay stops is written before the database is closed.
"""

from __future__ import annotations

import asyncio

import structlog
from sqlalchemy import bindparam, case, select, update

from relay.errors import DatabaseUnavailable
from relay.store.cache import CachedSession, SessionCache
from relay.store.database import Database
from relay.store.models import sessions
from relay.store.records import ACTIVE, Lifetimes

log = structlog.get_logger("relay.store")

WINDOW = 1.0  # seconds a queued touch waits for others to join it
# Sessions per statement. PostgreSQL finds 200 rows by primary key (5 ms on a table of
# 100,000); given 1,000 it scanned the whole table, twice (60 ms, more as it bloats, and
# past database.timeout on a busy machine with two replicas: benchmarks/README.md, 2e).
BATCH = 200

_CAPPED = sessions.c.created_at + bindparam("absolute", type_=sessions.c.created_at.type)
_IDLE_UNTIL = bindparam("idle_until", type_=sessions.c.expires_at.type)
_DUE = (
    sessions.c.id_hash.in_(bindparam("keys", expanding=True)),
    sessions.c.status == ACTIVE,
    sessions.c.expires_at > bindparam("now"),
    sessions.c.last_accessed_at <= bindparam("touched_before"),
)
# On PostgreSQL the rows are locked first, skipping those another replica's touch holds (it
# is touching them: waiting for it only to find them touched made two replicas queue on each
# other's batches past database.timeout). SQLite has one writer and no row locks.
_FREE = select(sessions.c.id_hash).where(*_DUE).with_for_update(skip_locked=True)
# expires_at = min(created_at + absolute, now + idle), as Lifetimes.expires_at, per row.
_TOUCH = (
    update(sessions)
    .where(sessions.c.id_hash.in_(_FREE.scalar_subquery()), *_DUE[1:])
    .values(
        last_accessed_at=bindparam("now"),
        expires_at=case((_CAPPED < _IDLE_UNTIL, _CAPPED), else_=_IDLE_UNTIL),
    )
    .returning(sessions.c.id_hash)
)
# What a touch that changed no row finds: the live rows' times.
_TIMES = select(sessions.c.id_hash, sessions.c.last_accessed_at, sessions.c.expires_at).where(
    *_DUE[:3]
)


class Touches:
    def __init__(
        self,
        db: Database,
        lifetimes: Lifetimes,
        cache: SessionCache,
    ) -> None:
        self._db = db
        self._lifetimes = lifetimes
        self._cache = cache
        self._queued: dict[str, tuple[CachedSession, int]] = {}
        self._wake = asyncio.Event()
        self._writing = asyncio.Lock()
        self.written = 0  # touches written (tests)

    def if_due(self, id_hash: str, entry: CachedSession, now: int) -> None:
        """If this session's touch is due (and none is on its way), touch it as of ``now``,
        soon; no I/O."""
        due = (
            now - entry.session.last_accessed_at >= self._lifetimes.touch_interval
            and not entry.touching
        )
        if not due:
            return
        entry.touching = True
        self._queued[id_hash] = (entry, now)
        self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._queued)

    async def run(self) -> None:
        """Forever: when something is queued, wait a window for more, then write them all."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(WINDOW)
            try:
                await self.flush()
            except DatabaseUnavailable as exc:
                log.warning("session.touch_failed", reason=exc.reason, detail=exc.detail)

    async def flush(self) -> None:
        """Write everything queued before this call (and wait for a write under way). A
        database error is raised after every touch it left unwritten is let go, for the
        next check to queue again."""
        async with self._writing:
            self._wake.clear()
            queued, self._queued = self._queued, {}
            items = list(queued.items())
            try:
                for start in range(0, len(items), BATCH):
                    await self._write(items[start : start + BATCH])
            finally:
                for entry, _ in queued.values():
                    entry.touching = False

    async def _write(self, items: list[tuple[str, tuple[CachedSession, int]]]) -> None:
        by_second: dict[int, list[str]] = {}
        for id_hash, (_, now) in items:
            by_second.setdefault(now, []).append(id_hash)
        entries = dict(items)
        lifetimes = self._lifetimes
        untouched: list[str] = []
        for now, keys in by_second.items():
            params = {
                "keys": keys,
                "now": now,
                "touched_before": now - lifetimes.touch_interval,
                "absolute": lifetimes.absolute,
                "idle_until": now + lifetimes.idle,
            }
            async with self._db.autocommit() as conn:
                written = set((await conn.execute(_TOUCH, params)).scalars())
            self.written += len(written)
            for id_hash in keys:
                if id_hash not in written:
                    untouched.append(id_hash)
                    continue
                session = entries[id_hash][0].session
                session.touched(now, lifetimes.expires_at(session.created_at, now))
        if untouched:
            await self._adopt(untouched, entries, max(by_second))

    async def _adopt(
        self, keys: list[str], entries: dict[str, tuple[CachedSession, int]], now: int
    ) -> None:
        """Rows another replica touched, or that ended or expired: the cache takes the times
        the table has now, in place, or lets the session go."""
        async with self._db.autocommit() as conn:
            rows = (await conn.execute(_TIMES, {"keys": keys, "now": now})).all()
        times = {id_hash: (last, expires) for id_hash, last, expires in rows}
        for id_hash in keys:
            found = times.get(id_hash)
            if found is None:
                self._cache.discard(id_hash)
            else:
                entries[id_hash][0].session.touched(*found)
