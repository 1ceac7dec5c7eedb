"""The session cache: bounded, trusted only when it may be, and never refilled with a session
that ended while it was being read. Then the cache inside a running relay: the shortcut and
the routed /auth give the same answer, and ending a session empties it at once."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from relay.store.cache import CachedSession, SessionCache
from relay.store.sessions import ActiveSession
from tests.conftest import count_statements, sign_in
from tests.provider import TestProvider


def wait_until_trusted(relay: TestClient, within: float = 5.0) -> None:
    """With PostgreSQL the cache is trusted once the invalidation listener has confirmed."""
    cache = relay.app.state.relay.sessions.cache
    deadline = time.monotonic() + within
    while not cache.trusted():
        assert time.monotonic() < deadline, "the cache never became trusted"
        time.sleep(0.01)


def entry(name: str = "a") -> CachedSession:
    return CachedSession(ActiveSession(name, "sub-" + name, {}, 0, 0, 100))


def test_holds_at_most_max_entries_dropping_the_least_recently_used() -> None:
    """Past max_entries the entry used longest ago leaves; a hit counts as a use."""
    cache = SessionCache(max_entries=2)
    cache.put("a", entry("a"), cache.generation)
    cache.put("b", entry("b"), cache.generation)
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", entry("c"), cache.generation)
    assert len(cache) == 2
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None


def test_a_read_that_raced_an_invalidation_is_not_cached() -> None:
    """A row read before a session ended (the generation moved on) is not put back."""
    cache = SessionCache(max_entries=10)
    generation = cache.generation  # a lookup starts...
    cache.invalidate(["a"])  # ...the session ends meanwhile...
    cache.put("a", entry("a"), generation)  # ...and the stale row comes back
    assert cache.get("a") is None


def test_an_untrusted_cache_answers_nothing_and_takes_nothing() -> None:
    """While trusted() is false (the listener is down) get misses and put is ignored."""
    trusted = [True]
    cache = SessionCache(max_entries=10, trusted=lambda: trusted[0])
    cache.put("a", entry("a"), cache.generation)
    trusted[0] = False
    assert cache.get("a") is None
    cache.put("b", entry("b"), cache.generation)
    trusted[0] = True
    assert cache.get("b") is None
    assert cache.get("a") is not None


def test_flush_forgets_everything_and_counts_it() -> None:
    """A flush (the listener reconnected) empties the cache and refuses reads from before."""
    cache = SessionCache(max_entries=10)
    generation = cache.generation
    cache.put("a", entry("a"), generation)
    cache.put("b", entry("b"), generation)
    cache.flush()
    assert len(cache) == 0 and cache.invalidations == 2
    cache.put("c", entry("c"), generation)
    assert cache.get("c") is None


def test_zero_entries_turns_the_cache_off() -> None:
    """max_entries = 0: nothing is kept."""
    cache = SessionCache(max_entries=0)
    cache.put("a", entry("a"), cache.generation)
    assert cache.get("a") is None


def test_cached_auth_sends_no_statement(relay: TestClient, provider: TestProvider) -> None:
    """Once a session is cached, /auth and /auth/redirect cost no SQL at all, and answer
    exactly what the routed endpoint answered on the miss."""
    sign_in(relay, provider)
    wait_until_trusted(relay)
    relay.app.state.relay.sessions.cache.flush()  # the next /auth is a miss: routed
    first = relay.get("/auth")
    engine = relay.app.state.engine.sync_engine
    with count_statements(engine, "") as statements:
        again = relay.get("/auth")
        redirect = relay.get("/auth/redirect")
    assert statements == []
    assert first.status_code == again.status_code == redirect.status_code == 200
    identity = {k: v for k, v in first.headers.items() if k.startswith("x-auth-request-")}
    assert identity == {k: v for k, v in again.headers.items() if k.startswith("x-auth-")}
    assert len(identity) == 5
    for name in ("cache-control", "content-type", "content-length", "x-request-id"):
        assert again.headers[name] == first.headers[name] or name == "x-request-id"


def test_cache_off_reads_the_table_every_time(make_relay: Any, provider: TestProvider) -> None:
    """With [cache] max_entries = 0 every /auth is one SELECT."""
    with make_relay(cache={"max_entries": 0}) as relay:
        sign_in(relay, provider)
        engine = relay.app.state.engine.sync_engine
        with count_statements(engine, "SELECT") as reads:
            for _ in range(5):
                assert relay.get("/auth").status_code == 200
        assert len(reads) == 5


def test_logout_empties_the_cache_at_once(relay: TestClient, provider: TestProvider) -> None:
    """A cached session that logs out is refused on the very next request."""
    sign_in(relay, provider)
    assert relay.get("/auth").status_code == 200
    cookie = relay.cookies["__Host-relay_session"]
    relay.post("/logout", headers={"Origin": "https://relay.test"})
    response = relay.get("/auth", headers={"Cookie": f"__Host-relay_session={cookie}"})
    assert response.status_code == 401


def test_a_row_deleted_behind_the_cache_is_refused_at_the_next_touch(
    relay: TestClient, provider: TestProvider, clock: Any, db: Engine
) -> None:
    """A row removed without a notification (by hand, in SQL) is noticed at the latest when
    the touch is due: the touch finds no row and the session is refused."""
    sign_in(relay, provider)
    assert relay.get("/auth").status_code == 200
    with db.begin() as conn:
        conn.execute(text("DELETE FROM sessions WHERE status = 'active'"))
    clock.advance(61)
    assert relay.get("/auth").status_code == 401


def test_expiry_is_judged_on_every_cached_hit(
    make_relay: Any, provider: TestProvider, clock: Any
) -> None:
    """A cached session past its absolute lifetime is refused, whatever the cache holds."""
    session = {"absolute_lifetime": "1h", "idle_timeout": "1h", "touch_interval": "2h"}
    with make_relay(session=session) as relay:
        sign_in(relay, provider)
        assert relay.get("/auth").status_code == 200
        clock.advance(3599)
        assert relay.get("/auth").status_code == 200
        clock.advance(1)
        assert relay.get("/auth").status_code == 401
