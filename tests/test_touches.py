"""Touches written behind the answer (relay/store/touches.py), on SQLite and PostgreSQL.

The rules, from the session lifetimes (README, "Session lifetimes"): a check that finds a
touch due answers from what it holds and does not wait for the write; a touch is written at
most once per touch_interval per session, whichever replica writes it; it moves
last_accessed_at to the check's second and expires_at to min(created_at + absolute_lifetime,
last_accessed_at + idle_timeout); it never revives an ended or expired session; any number of
touches due together cost one statement; a replica whose touch finds the row touched by
another takes the table's newer times instead of writing again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, text, update

from relay.crypto import Sealer
from relay.errors import DatabaseUnavailable
from relay.store import touches as touches_module
from relay.store.cache import SessionCache
from relay.store.database import Database, make_engine
from relay.store.models import sessions
from relay.store.records import Lifetimes, Tokens
from relay.store.sessions import Sessions
from tests.conftest import PG_ADMIN, count_statements, postgres_database, run_migrations, sign_in
from tests.live import eventually
from tests.provider import TestProvider

NOW = 1_800_000_000
LIFETIMES = Lifetimes(absolute=7200, idle=1800, touch_interval=60)
TOKENS = Tokens(id_token="id-token", access_token=None, refresh_token=None)


@asynccontextmanager
async def replica(url: str, bound: float = 2) -> AsyncIterator[Sessions]:
    """One relay's store: its own pool and cache on the shared database."""
    db = Database(make_engine(url), timeout=bound)
    try:
        yield Sessions(db, Sealer("s" * 32), LIFETIMES, SessionCache(100))
    finally:
        await db.dispose()


def run(url: str, test: Callable[[Sessions, Sessions], Awaitable[None]]) -> None:
    async def go() -> None:
        async with replica(url) as a, replica(url) as b:
            await test(a, b)

    asyncio.run(go())


def row(db: Engine, id_hash: str) -> Any:
    with db.connect() as conn:
        return conn.execute(
            text("SELECT last_accessed_at, expires_at FROM sessions WHERE id_hash = :k"),
            {"k": id_hash},
        ).one()


def test_a_due_touch_is_queued_and_the_check_answers_at_once(database_url: str, db: Engine) -> None:
    async def test(a: Sessions, _: Sessions) -> None:
        session = await a.create("s1", "alice", {"sub": "alice"}, TOKENS, NOW)
        with count_statements(a._db, "UPDATE") as updates:
            assert a.cached("s1", NOW + 60) is session  # the cache answers, no I/O
            assert await a.get("s1", NOW + 60) is session
            assert updates == []
            assert a.touches.queued == 1
            assert row(db, "s1") == (NOW, NOW + 1800)  # not yet written
            await a.touches.flush()
            assert len(updates) == 1
        assert row(db, "s1") == (NOW + 60, NOW + 1860)
        touched = a.cached("s1", NOW + 61)
        assert touched is not None
        assert (touched.last_accessed_at, touched.expires_at) == (NOW + 60, NOW + 1860)

    run(database_url, test)


def test_no_touch_is_due_within_the_interval(database_url: str, db: Engine) -> None:
    async def test(a: Sessions, _: Sessions) -> None:
        await a.create("s1", "alice", {"sub": "alice"}, TOKENS, NOW)
        assert a.cached("s1", NOW + 59) is not None
        assert await a.get("s1", NOW + 59) is not None
        assert a.touches.queued == 0

    run(database_url, test)


def test_many_touches_cost_one_statement_and_each_row_gets_its_own_expiry(
    database_url: str, db: Engine
) -> None:
    """expires_at = min(created_at + absolute, now + idle), per row: an old session is
    capped by its absolute lifetime, a young one slides."""

    async def test(a: Sessions, _: Sessions) -> None:
        for n in range(50):
            await a.create(f"young{n}", "alice", {"sub": "alice"}, TOKENS, NOW)
        await a.create("old", "bob", {"sub": "bob"}, TOKENS, NOW - 6000)
        with db.begin() as conn:  # bob was active a minute ago
            conn.execute(
                update(sessions)
                .where(sessions.c.id_hash == "old")
                .values(last_accessed_at=NOW - 60, expires_at=NOW + 1200)
            )
        a.cache.discard("old")
        for n in range(50):
            assert a.cached(f"young{n}", NOW + 600) is not None
        assert await a.get("old", NOW + 600) is not None
        assert a.touches.queued == 51
        with count_statements(a._db, "UPDATE") as updates:
            await a.touches.flush()
        assert len(updates) == 1
        assert row(db, "young7") == (NOW + 600, NOW + 2400)
        assert row(db, "old") == (NOW + 600, NOW - 6000 + 7200)

    run(database_url, test)


def test_a_touch_never_revives_an_ended_or_expired_session(database_url: str, db: Engine) -> None:
    async def test(a: Sessions, b: Sessions) -> None:
        for key in ("ended", "expired"):
            await a.create(key, "alice", {"sub": "alice"}, TOKENS, NOW)
            assert a.cached(key, NOW + 120) is not None  # queued as of NOW + 120
        await b.revocation.delete("ended")  # another replica signs it out meanwhile
        with db.begin() as conn:  # and this one expired as far as the table knows
            conn.execute(
                update(sessions).where(sessions.c.id_hash == "expired").values(expires_at=NOW + 100)
            )
        await a.touches.flush()
        assert row(db, "expired") == (NOW, NOW + 100)
        assert db_one(db, "SELECT count(*) FROM sessions WHERE id_hash = 'ended'") == 0
        # The cache takes the table's word: neither is held any more.
        assert a.cache.held("ended") is None
        assert a.cache.held("expired") is None

    run(database_url, test)


def test_a_touch_written_by_another_replica_is_adopted_not_repeated(
    database_url: str, db: Engine
) -> None:
    """Two replicas serve one session (a rolling deploy): B finds A's touch in the table and
    takes its times; B's next checks within the interval write nothing and read nothing."""

    async def test(a: Sessions, b: Sessions) -> None:
        await a.create("s1", "alice", {"sub": "alice"}, TOKENS, NOW)
        assert await b.get("s1", NOW + 10) is not None  # B reads it into its cache
        assert a.cached("s1", NOW + 70) is not None
        await a.touches.flush()
        assert row(db, "s1") == (NOW + 70, NOW + 1870)
        assert b.cached("s1", NOW + 71) is not None  # due by B's copy, queued
        with count_statements(b._db, "UPDATE") as updates:
            await b.touches.flush()  # changes no row: A's touch is within the interval
        assert len(updates) == 1
        assert row(db, "s1") == (NOW + 70, NOW + 1870)
        with count_statements(b._db, "") as statements:
            for second in range(72, 130):
                adopted = b.cached("s1", NOW + second)
                assert adopted is not None
                assert (adopted.last_accessed_at, adopted.expires_at) == (NOW + 70, NOW + 1870)
            assert b.touches.queued == 0
            await b.touches.flush()
        assert statements == []

    run(database_url, test)


@pytest.mark.postgres
def test_a_touch_does_not_wait_for_a_row_another_replica_is_touching() -> None:
    """A row locked by another replica's touch under way is skipped, not waited for (two
    replicas' batches used to queue on each other past database.timeout): the others are
    written at once, and the skipped one is due again at the next check."""
    with postgres_database() as url:
        run_migrations(url)

        async def test(a: Sessions, _: Sessions) -> None:
            for key in ("locked", "free"):
                await a.create(key, "alice", {"sub": "alice"}, TOKENS, NOW)
                assert a.cached(key, NOW + 60) is not None
            with psycopg.connect(PG_ADMIN.rsplit("/", 1)[0] + "/" + url.rsplit("/", 1)[1]) as other:
                other.execute("SELECT 1 FROM sessions WHERE id_hash = 'locked' FOR UPDATE")
                # Returns while the lock is held: waiting for it would end only in a
                # database.timeout (5 s here), raised from the flush.
                await a.touches.flush()
            assert a.touches.written == 1
            assert a.cached("free", NOW + 61) is not None and a.touches.queued == 0
            assert a.cached("locked", NOW + 61) is not None and a.touches.queued == 1

        async def go() -> None:
            async with replica(url, bound=5) as a, replica(url) as b:
                await test(a, b)

        asyncio.run(go())


def test_a_touch_that_cannot_be_written_is_queued_again_by_the_next_check(
    database_url: str, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def test(a: Sessions, _: Sessions) -> None:
        await a.create("s1", "alice", {"sub": "alice"}, TOKENS, NOW)
        assert a.cached("s1", NOW + 60) is not None

        @asynccontextmanager
        async def down() -> AsyncIterator[Any]:
            raise DatabaseUnavailable("database.unavailable", "refused")
            yield

        with monkeypatch.context() as patched:
            patched.setattr(a._db, "autocommit", down)
            with pytest.raises(DatabaseUnavailable):
                await a.touches.flush()
        assert a.touches.queued == 0
        assert a.cached("s1", NOW + 61) is not None  # still valid, and queued again
        assert a.touches.queued == 1
        await a.touches.flush()
        assert row(db, "s1") == (NOW + 61, NOW + 1861)

    run(database_url, test)


def check_with_a_touch_due(relay: Any, provider: TestProvider, clock: Any, db: Engine) -> int:
    """Sign in, let touch_interval pass, check once (its touch queued); the created_at."""
    sign_in(relay, provider)
    created: int = db_one(db, "SELECT created_at FROM sessions WHERE status = 'active'")
    clock.advance(61)
    assert relay.get("/auth").status_code == 200
    return created


def test_a_relay_writes_queued_touches_when_it_stops(
    make_relay: Any, provider: TestProvider, clock: Any, db: Engine
) -> None:
    with make_relay() as relay:
        created = check_with_a_touch_due(relay, provider, clock, db)
    assert db_one(db, "SELECT last_accessed_at FROM sessions WHERE status = 'active'") == (
        created + 61
    )


def test_a_running_relay_writes_a_touch_within_its_window(
    make_relay: Any, provider: TestProvider, clock: Any, db: Engine
) -> None:
    """Without anyone asking: the background writer (a second's window), not the test."""
    with make_relay() as relay:
        created = check_with_a_touch_due(relay, provider, clock, db)
        touches = relay.app.state.relay.sessions.touches
        eventually(lambda: touches.written == 1, 5, "the touch written in the background")
        assert db_one(db, "SELECT last_accessed_at FROM sessions WHERE status = 'active'") == (
            created + 61
        )


def db_one(db: Engine, sql: str) -> Any:
    with db.connect() as conn:
        return conn.execute(text(sql)).scalar_one()


def test_touches_beyond_a_batch_are_written_a_batch_per_statement(
    database_url: str, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(touches_module, "BATCH", 20)

    async def test(a: Sessions, _: Sessions) -> None:
        for n in range(45):
            await a.create(f"s{n}", "alice", {"sub": "alice"}, TOKENS, NOW)
            assert a.cached(f"s{n}", NOW + 60) is not None
        with count_statements(a._db, "UPDATE") as updates:
            await a.touches.flush()
        assert len(updates) == 3
        assert a.touches.written == 45
        with db.connect() as conn:
            touched = text("SELECT count(*) FROM sessions WHERE last_accessed_at = :t")
            assert conn.execute(touched, {"t": NOW + 60}).scalar_one() == 45

    run(database_url, test)
