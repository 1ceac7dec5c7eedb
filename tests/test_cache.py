"""The session cache: bounded, trusted only when it may be, and never refilled with a session
that ended while it was being read. Then the cache inside a running relay: the shortcut and
the routed /auth give the same answer, and ending a session empties it at once."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from relay.crypto import hash_id, new_id
from relay.store.cache import CachedSession, SessionCache
from relay.store.records import ActiveSession, Tokens
from tests.conftest import count_statements, sign_in, touches_written
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
    engine = relay.app.state.relay.db  # the engine and the hot statements
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
        engine = relay.app.state.relay.db  # the engine and the hot statements
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
    the touch is written: it finds no row, the cache lets the session go, and the next check
    is refused (store/touches.py)."""
    sign_in(relay, provider)
    assert relay.get("/auth").status_code == 200
    with db.begin() as conn:
        conn.execute(text("DELETE FROM sessions WHERE status = 'active'"))
    clock.advance(61)
    assert relay.get("/auth").status_code == 200  # valid by what the cache holds; touch queued
    touches_written(relay)
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


# -- misses remembered: a bogus cookie again costs no SELECT ---------------------------------


def test_a_miss_is_remembered_for_miss_ttl_and_bounded() -> None:
    """A remembered miss answers until miss_ttl seconds have passed; at most max_entries are
    kept (oldest out first)."""
    cache = SessionCache(max_entries=2, miss_ttl=5)
    cache.remember_missing("a", 100, cache.births)
    assert cache.known_missing("a", 104)
    assert not cache.known_missing("a", 105)
    for name in ("a", "b", "c"):
        cache.remember_missing(name, 200, cache.births)
    assert cache.missing == 2
    assert not cache.known_missing("a", 200)
    assert cache.known_missing("b", 200) and cache.known_missing("c", 200)
    assert cache.misses_remembered == 3


def test_a_birth_clears_its_miss_and_a_miss_read_before_a_birth_is_not_remembered() -> None:
    """born() forgets the miss for that id; a read that began before any birth on this
    replica comes back too late to be remembered (it may have missed the new row)."""
    cache = SessionCache(max_entries=10, miss_ttl=5)
    cache.remember_missing("a", 100, cache.births)
    cache.born("a")
    assert not cache.known_missing("a", 100)
    stale = cache.births
    cache.born("z")
    cache.remember_missing("b", 100, stale)
    assert not cache.known_missing("b", 100)


def test_misses_are_not_remembered_with_the_cache_or_miss_ttl_off() -> None:
    """max_entries = 0 (every /auth reads the table) or miss_ttl = 0: nothing remembered."""
    for cache in (SessionCache(max_entries=0, miss_ttl=5), SessionCache(10, miss_ttl=0)):
        cache.remember_missing("a", 100, cache.births)
        assert not cache.known_missing("a", 100)


def lookups(statements: list[str]) -> list[str]:
    """The session lookups among them (a stats sampler may also read the table)."""
    return [s for s in statements if "WHERE sessions.id_hash" in s or "WHERE id_hash" in s]


def bogus_auth(relay: TestClient, cookie: str) -> int:
    return relay.get("/auth", headers={"Cookie": f"__Host-relay_session={cookie}"}).status_code


def test_a_repeated_bogus_cookie_costs_one_select_per_window(relay: TestClient, clock: Any) -> None:
    """A well-formed cookie naming no session: one SELECT, then 401s without the database for
    miss_ttl (5 s), then one SELECT again. Distinct bogus cookies still cost one each: a flood
    of those is the proxy's to rate-limit."""
    engine = relay.app.state.relay.db  # the engine and the hot statements
    bogus = new_id()
    with count_statements(engine, "SELECT") as reads:
        for _ in range(20):
            assert bogus_auth(relay, bogus) == 401
        clock.advance(4)
        assert bogus_auth(relay, bogus) == 401
    assert len(lookups(reads)) == 1
    clock.advance(1)
    with count_statements(engine, "SELECT") as reads:
        assert bogus_auth(relay, bogus) == 401
        for _ in range(5):
            assert bogus_auth(relay, new_id()) == 401
    assert len(lookups(reads)) == 6
    registry = relay.app.state.metrics.registry
    assert registry.get_sample_value("relay_session_cache_misses_remembered_total") == 20


def test_a_browser_with_a_remembered_bogus_cookie_signs_in_and_passes_at_once(
    relay: TestClient, provider: TestProvider
) -> None:
    """The old cookie is remembered as naming nothing; the login gives a new id, whose very
    first check passes (and the old cookie is still refused)."""
    old = new_id()
    relay.cookies.set("__Host-relay_session", old, domain="relay.test", path="/")
    assert relay.get("/auth").status_code == 401
    assert relay.get("/auth").status_code == 401
    sign_in(relay, provider)
    assert relay.cookies["__Host-relay_session"] != old
    relay.app.state.relay.sessions.cache.flush()  # the first check reads the table
    assert relay.get("/auth").status_code == 200
    assert bogus_auth(relay, old) == 401


def test_a_session_created_under_a_remembered_miss_passes_its_first_check(
    relay: TestClient, clock: Any
) -> None:
    """Sessions.create clears a miss remembered for its id on this replica: even an id that
    was looked up before it existed (which a random id never is) passes at once."""
    sessions = relay.app.state.relay.sessions
    id_hash = hash_id(new_id())
    now = int(clock())

    async def go() -> Any:
        assert await sessions.get(id_hash, now) is None
        assert sessions.cache.known_missing(id_hash, now)
        await sessions.create(id_hash, "alice", {"sub": "alice"}, Tokens("id", None, None), now)
        sessions.cache.flush()
        return await sessions.get(id_hash, now)

    assert relay.portal.call(go) is not None


def test_a_cached_session_costs_what_the_readme_says() -> None:
    """About 2.8 KB per session with typical claims (README, "How big the cache is"): the
    figure the default max_entries is sized from. The access token is not held unless a
    header sends it; claim and group names are shared between sessions."""
    from benchmarks.cache_bytes import measure

    without = measure(5_000, with_token=False)["bytes_per_session"]
    with_token = measure(5_000, with_token=True)["bytes_per_session"]
    assert without <= 3_000, without
    assert with_token <= 4_000, with_token
    assert with_token - without >= 900  # the token itself: only held when sent to apps
