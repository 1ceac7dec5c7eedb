"""Warm starts (store/warm.py): a replica with an empty cache loads the most recently active
sessions from the table in the background, once its cache may be believed, and again after a
flush; never a session that ended meanwhile, never over one a check put there first."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest
from sqlalchemy import Engine, insert
from starlette.testclient import TestClient

from relay.app import create_app
from relay.crypto import hash_id, new_id
from relay.store import warm as warm_module
from relay.store.cache import CachedSession, SessionCache
from relay.store.models import sessions
from relay.store.records import ActiveSession
from relay.store.warm import Warmer
from tests.conftest import PUBLIC_URL, base_config, count_statements
from tests.live import eventually
from tests.provider import ProviderTransport, TestProvider

SEEDED = 30
ROOM = 10
COOKIE = "__Host-relay_session"


def seed(db: Engine, now: int) -> list[str]:
    """SEEDED sessions, the first the most recently active; their cookies in that order."""
    cookies = [new_id() for _ in range(SEEDED)]
    with db.begin() as conn:
        conn.execute(
            insert(sessions),
            [
                {
                    "id_hash": hash_id(cookie),
                    "status": "active",
                    "subject": f"user-{i}",
                    "claims": json.dumps({"sub": f"user-{i}", "email": f"u{i}@example.com"}),
                    "created_at": now - 1000,
                    "last_accessed_at": now - i,
                    "expires_at": now + 3600,
                }
                for i, cookie in enumerate(cookies)
            ],
        )
    return cookies


def warmed(relay: Any, runs: int) -> SessionCache:
    """Wait until the relay's warmer has finished ``runs`` warm starts."""
    deadline = time.monotonic() + 20
    warmer = relay.app.state.warmer
    while warmer.runs < runs:
        assert time.monotonic() < deadline, "no warm start within 20 s"
        time.sleep(0.02)
    cache: SessionCache = relay.app.state.relay.sessions.cache
    return cache


def held(cache: SessionCache, cookies: list[str]) -> list[bool]:
    return [cache.held(hash_id(cookie)) is not None for cookie in cookies]


def test_a_starting_replica_loads_the_most_recently_active_sessions(
    make_relay: Any, clock: Any, db: Engine
) -> None:
    cookies = seed(db, int(clock.now))
    with make_relay(cache={"max_entries": ROOM}) as relay:
        cache = warmed(relay, 1)
        assert held(cache, cookies) == [True] * ROOM + [False] * (SEEDED - ROOM)
        database = relay.app.state.relay.db
        with count_statements(database, "SELECT") as reads:
            relay.cookies.set(COOKIE, cookies[0], domain="relay.test")
            assert relay.get("/auth").status_code == 200
        assert reads == []  # answered from what the warm start loaded
        with count_statements(database, "SELECT") as reads:
            relay.cookies.set(COOKIE, cookies[ROOM], domain="relay.test")
            assert relay.get("/auth").status_code == 200
        assert len(reads) == 1  # not loaded: the table answers


def test_a_flushed_cache_is_warmed_again(make_relay: Any, clock: Any, db: Engine) -> None:
    """The listener (or watcher) flushes the cache when it may have missed endings; once it
    vouches again, the warm start runs again."""
    cookies = seed(db, int(clock.now))
    with make_relay(cache={"max_entries": ROOM}) as relay:
        cache = warmed(relay, 1)
        runs = relay.app.state.warmer.runs
        relay.portal.call(cache.flush)  # on the relay's event loop, as the listener does
        cache = warmed(relay, runs + 1)
        assert held(cache, cookies) == [True] * ROOM + [False] * (SEEDED - ROOM)


def session(id_hash: str) -> CachedSession:
    return CachedSession(ActiveSession(id_hash, "alice", {}, 0, 0, 100))


def test_a_warm_start_never_loads_a_session_that_ended_while_it_read() -> None:
    """Its SELECT may have read the row before the ending committed: the cache remembers
    what ended since the warm start began and refuses it."""
    cache = SessionCache(10)
    cache.begin_warm()
    flushes = cache.flushes
    cache.invalidate(["ended"])
    assert cache.put_cold("ended", session("ended"), flushes)  # refused, the warm start goes on
    assert cache.held("ended") is None
    assert cache.put_cold("live", session("live"), flushes)
    assert cache.held("live") is not None
    cache.end_warm()


def test_a_warm_start_keeps_what_checks_put_there_and_yields_to_it() -> None:
    """A session a check cached first is newer than the warm start's copy; what a warm start
    loads is the least recently used, so it leaves first when the cache is full."""
    cache = SessionCache(3)
    mine = session("checked")
    cache.put("checked", mine, cache.generation)
    cache.begin_warm()
    flushes = cache.flushes
    assert cache.put_cold("checked", session("checked"), flushes)
    assert cache.held("checked") is mine
    assert cache.put_cold("a", session("a"), flushes)
    assert cache.put_cold("b", session("b"), flushes)
    assert not cache.put_cold("c", session("c"), flushes)  # full: the warm start stops
    cache.end_warm()
    cache.put("new", session("new"), cache.generation)
    # "b" (loaded last, the least recently active of the warm start's) left first.
    assert [cache.held(k) is not None for k in ("checked", "a", "b", "new")] == [
        True,
        True,
        False,
        True,
    ]


def test_a_flush_or_lost_trust_stops_a_warm_start() -> None:
    trusted = [True]
    cache = SessionCache(10, trusted=lambda: trusted[0])
    cache.begin_warm()
    flushes = cache.flushes
    cache.flush()
    assert not cache.put_cold("a", session("a"), flushes)
    assert cache.held("a") is None
    trusted[0] = False
    assert not cache.put_cold("b", session("b"), cache.flushes)
    cache.end_warm()


@pytest.fixture
def held_warm_start(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Warm starts wait until the returned event is set."""
    gate = threading.Event()
    original = Warmer.warm

    async def warm(self: Warmer) -> int:
        # The gate is the test thread's; a thread waiting on it could outlive the relay.
        while not gate.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        return await original(self)

    monkeypatch.setattr(Warmer, "warm", warm)
    return gate


def test_readyz_waits_for_the_first_warm_start_only(
    database_url: str, provider: TestProvider, clock: Any, db: Engine, held_warm_start: Any
) -> None:
    """A starting replica is not ready until its first warm start has run: a load balancer
    then sends it checks it answers from memory. /healthz does not wait, and a later flush
    (which a database blip causes on every replica at once) never takes a replica out."""
    seed(db, int(clock.now))
    app = create_app(base_config(database_url), transport=ProviderTransport(provider), clock=clock)
    with TestClient(app, base_url=PUBLIC_URL) as relay:
        eventually(relay.app.state.relay.sessions.cache.trusted, 10, "a trusted cache")
        waiting = relay.get("/readyz")
        assert waiting.status_code == 503
        assert waiting.json()["status"] == waiting.json()["session_cache"] == "warming"
        assert relay.get("/healthz").status_code == 200
        held_warm_start.set()
        cache = warmed(relay, 1)
        assert relay.get("/readyz").json()["status"] == "ok"
        held_warm_start.clear()
        relay.portal.call(cache.flush)
        response = relay.get("/readyz")
        assert response.status_code == 200, response.json()


def test_readyz_waits_for_a_warm_start_for_a_bounded_time(
    database_url: str,
    provider: TestProvider,
    clock: Any,
    held_warm_start: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(warm_module, "READY_WAIT", 0.5)
    app = create_app(base_config(database_url), transport=ProviderTransport(provider), clock=clock)
    with TestClient(app, base_url=PUBLIC_URL) as relay:
        started = time.monotonic()
        assert relay.get("/readyz").status_code == 503
        eventually(lambda: relay.get("/readyz").status_code == 200, 5, "ready without it")
        assert time.monotonic() - started >= 0.4
        assert relay.app.state.warmer.runs == 0  # still held
        held_warm_start.set()
