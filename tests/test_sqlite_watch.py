"""SQLite's ended-sessions log and its watcher (relay/store/sqlite_watch.py): what another
process ends reaches this process's cache at the next poll; what merely writes (logins,
touches, pending logins) costs the cache nothing; a watcher that cannot read stops vouching
for the cache at once, and catches up without a flush when it can read again."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, insert, text
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.testclient import TestClient

from relay.app import create_app
from relay.crypto import Sealer, hash_id, new_id
from relay.errors import DatabaseUnavailable
from relay.store.cache import SessionCache
from relay.store.database import Database, make_engine
from relay.store.models import sessions
from relay.store.prune import prune
from relay.store.records import Lifetimes, Tokens
from relay.store.sessions import Sessions
from relay.store.sqlite_watch import KEEP, Watcher
from tests.conftest import PUBLIC_URL, FakeClock, base_config, run_migrations, sign_in
from tests.live import eventually
from tests.provider import ProviderTransport, TestProvider

LIFETIMES = Lifetimes(absolute=86400, idle=3600, touch_interval=60)
TOKENS = Tokens(id_token="id-token", access_token=None, refresh_token=None)


@dataclass
class Relay:
    """What one relay process holds: its pool, its cache, its store, its watcher's
    connection; and ``other``, another process's plain connection to the same file."""

    sessions: Sessions
    cache: SessionCache
    watcher: Watcher
    conn: AsyncConnection
    other: Engine

    async def poll(self) -> None:
        await self.watcher.poll(self.conn)

    async def sign_in(self, subject: str, now: int) -> str:
        """A session created and cached by this relay; returns its hash."""
        id_hash = hash_id(new_id())
        await self.sessions.create(id_hash, subject, {"sub": subject}, TOKENS, now)
        return id_hash


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}"
    run_migrations(url)
    return url


def run(url: str, test: Callable[[Relay], Awaitable[None]]) -> None:
    asyncio.run(_run(url, test))


async def _run(url: str, test: Callable[[Relay], Awaitable[None]]) -> None:
    async with relay_on(url) as relay:
        await test(relay)


@asynccontextmanager
async def relay_on(url: str) -> AsyncIterator[Relay]:
    db = Database(make_engine(url), timeout=2)
    cache = SessionCache(100)
    # Time stands still for the watcher: a poll vouches until the next one, however slow the
    # machine, and only a failed poll ends trust.
    watcher = Watcher(url, cache, timeout=2, monotonic=lambda: 0.0)
    cache.trusted = watcher.trusted
    watch_engine = make_engine(url)
    other = create_engine(url.replace("+aiosqlite", ""))
    try:
        async with watch_engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            store = Sessions(db, Sealer("s" * 32), LIFETIMES, cache)
            relay = Relay(store, cache, watcher, conn, other)
            await relay.poll()  # the first poll: from here on, the cache is trusted
            yield relay
    finally:
        other.dispose()
        await watch_engine.dispose()
        await db.dispose()


def write(other: Engine, sql: str, **params: object) -> None:
    with other.begin() as conn:
        conn.execute(text(sql), params)


def add_row(other: Engine, status: str, now: int) -> str:
    """A row written by another process (a pending login, or another relay's session)."""
    id_hash = hash_id(new_id())
    with other.begin() as conn:
        conn.execute(
            insert(sessions).values(
                id_hash=id_hash,
                status=status,
                subject=None if status == "pending" else "carol",
                claims=json.dumps({"sub": "carol"}),
                created_at=now,
                last_accessed_at=now,
                expires_at=now + 600,
            )
        )
    return id_hash


def test_unrelated_writes_do_not_flush_the_cache(url: str) -> None:
    """Logins of other users (here and in another process), touches and pending logins
    written and taken move data_version, and the watcher reads the log each time, but the
    cached session keeps being answered from the cache: hits only, no miss, nothing dropped."""

    async def test(relay: Relay) -> None:
        now = int(time.time())
        alice = await relay.sign_in("alice", now)
        bob = await relay.sign_in("bob", now)  # another user's login, through the pool
        pending = add_row(relay.other, "pending", now)  # another process's writes
        add_row(relay.other, "active", now)
        write(relay.other, "DELETE FROM sessions WHERE id_hash = :h", h=pending)
        assert await relay.sessions.get(bob, now + 61) is not None  # a touch (UPDATE)
        touch = "UPDATE sessions SET last_accessed_at = :n, expires_at = :e WHERE subject = 'carol'"
        write(relay.other, touch, n=now + 5, e=now + 900)  # another relay's touch
        generation = relay.cache.generation
        await relay.poll()
        assert relay.cache.generation == generation  # nothing invalidated, nothing flushed
        assert relay.watcher.polls == 2
        hits, misses = relay.cache.hits, relay.cache.misses
        assert await relay.sessions.get(alice, now + 1) is not None
        assert (relay.cache.hits, relay.cache.misses) == (hits + 1, misses)
        assert relay.cache.invalidations == 0

    run(url, test)


def test_what_another_process_ends_leaves_the_cache_at_the_next_poll(url: str) -> None:
    """A revocation by another process's store, a hand-written DELETE and an UPDATE that
    expires a session each drop exactly that session at the next poll; the others stay."""

    async def test(relay: Relay) -> None:
        now = int(time.time())
        ended = [await relay.sign_in(name, now) for name in ("alice", "bob", "carol")]
        kept = await relay.sign_in("dave", now)
        other_db = Database(make_engine(url), timeout=2)
        try:  # `relay sessions revoke --sub alice`, as the CLI builds it
            elsewhere = Sessions(other_db, Sealer("s" * 32), LIFETIMES, SessionCache(0))
            assert len(await elsewhere.revocation.revoke_subject("alice")) == 1
        finally:
            await other_db.dispose()
        write(relay.other, "DELETE FROM sessions WHERE subject = 'bob'")
        write(relay.other, "UPDATE sessions SET expires_at = 0 WHERE subject = 'carol'")
        for id_hash in [*ended, kept]:
            assert relay.cache.get(id_hash) is not None  # nobody told the cache yet
        await relay.poll()
        assert [relay.cache.get(h) for h in ended] == [None, None, None]
        assert relay.cache.get(kept) is not None
        assert relay.cache.invalidations == 3

    run(url, test)


def test_a_failed_poll_stops_trust_at_once_and_the_next_one_catches_up(url: str) -> None:
    """A log the watcher cannot read: the poll fails and the cache answers nothing from
    then on. A session ended meanwhile is dropped by the next poll that gets through, before
    the cache is trusted again; the other cached sessions survive (no flush)."""

    async def test(relay: Relay) -> None:
        now = int(time.time())
        alice = await relay.sign_in("alice", now)
        bob = await relay.sign_in("bob", now)
        # Renaming the table takes the triggers along: endings are still logged, unreadably.
        write(relay.other, "ALTER TABLE ended_sessions RENAME TO hidden")
        with pytest.raises(DatabaseUnavailable):
            await relay.poll()
        assert not relay.watcher.trusted()
        assert relay.cache.get(bob) is None  # untrusted: answers nothing
        write(relay.other, "DELETE FROM sessions WHERE subject = 'alice'")
        write(relay.other, "ALTER TABLE hidden RENAME TO ended_sessions")
        await relay.poll()
        assert relay.watcher.trusted()
        assert relay.cache.get(alice) is None
        assert relay.cache.get(bob) is not None

    run(url, test)


def test_entries_pruned_before_they_were_read_flush_the_cache(url: str) -> None:
    """A watcher that stalled past KEEP finds the entries it never read gone: it cannot tell
    which sessions ended, and starts from an empty cache."""

    async def test(relay: Relay) -> None:
        now = int(time.time())
        alice = await relay.sign_in("alice", now)
        bob = await relay.sign_in("bob", now)
        write(relay.other, "DELETE FROM sessions WHERE subject = 'alice'")
        other_db = Database(make_engine(url), timeout=2)
        try:
            await prune(other_db, now + KEEP + 1, batch_size=100)
        finally:
            await other_db.dispose()
        with relay.other.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM ended_sessions")).scalar() == 0
        await relay.poll()
        assert relay.cache.get(alice) is None
        assert relay.cache.get(bob) is None  # flushed with it
        assert relay.watcher.trusted()

    run(url, test)


def test_expired_rows_the_pruner_deletes_are_not_logged(url: str) -> None:
    """Only endings are logged: the pruner's batches of expired rows are not."""
    now = int(time.time())
    other = create_engine(url.replace("+aiosqlite", ""))
    try:
        add_row(other, "active", now - 700)  # expired 100 s ago
        add_row(other, "active", now)
        write(other, "DELETE FROM sessions WHERE expires_at <= :n", n=now)
        with other.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM ended_sessions")).scalar() == 0
            assert conn.execute(text("SELECT count(*) FROM sessions")).scalar() == 1
    finally:
        other.dispose()


def test_a_watcher_that_cannot_open_the_file_never_vouches(tmp_path: Path) -> None:
    """No file to read: the first poll never gets through, the relay starts anyway after the
    database timeout, and the cache stays bypassed."""

    async def test() -> None:
        cache = SessionCache(10)
        missing = tmp_path / "no-such-directory" / "relay.db"
        watcher = Watcher(f"sqlite+aiosqlite:///{missing}", cache, timeout=0.5)
        task = asyncio.create_task(watcher.run())
        try:
            await watcher.first_poll()
            assert not watcher.confirmed.is_set()
            assert not watcher.trusted() and watcher.failing
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(test())


def test_a_relay_whose_watcher_cannot_read_answers_from_the_table(
    url: str, provider: TestProvider, clock: FakeClock
) -> None:
    """A running relay whose log becomes unreadable says so on /readyz within 1 s and stops
    answering from its cache: a session deleted meanwhile (its ending logged where the watcher
    cannot see it) gets 401 at once. Readable again, the relay trusts its cache again."""
    app = create_app(base_config(url), transport=ProviderTransport(provider), clock=clock)
    other = create_engine(url.replace("+aiosqlite", ""))
    try:
        with TestClient(app, base_url=PUBLIC_URL, follow_redirects=False) as relay:
            sign_in(relay, provider)
            cookie = relay.cookies["__Host-relay_session"]
            relay.cookies.clear()
            headers = {"cookie": f"__Host-relay_session={cookie}"}
            assert relay.get("/readyz").json()["session_cache"] == "trusted"
            assert relay.get("/auth", headers=headers).status_code == 200  # now cached
            write(other, "ALTER TABLE ended_sessions RENAME TO hidden")
            eventually(
                lambda: relay.get("/readyz").json()["session_cache"] == "bypassed",
                1.0,
                "the cache is bypassed",
            )
            write(other, "DELETE FROM sessions WHERE status = 'active'")
            assert relay.get("/auth", headers=headers).status_code == 401
            write(other, "ALTER TABLE hidden RENAME TO ended_sessions")
            eventually(
                lambda: relay.get("/readyz").json()["session_cache"] == "trusted",
                3.0,
                "the watcher gets through again",
            )
            assert relay.get("/auth", headers=headers).status_code == 401
    finally:
        other.dispose()
