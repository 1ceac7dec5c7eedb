"""[cache] outage_grace, in process: when held sessions may answer (relay/store/outage.py),
and what ``Sessions`` answers from them with a database that refuses every connection (a
real engine on a port nobody listens on)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from relay.crypto import Sealer
from relay.errors import DatabaseUnavailable
from relay.store.cache import CachedSession, SessionCache
from relay.store.database import Database, make_engine
from relay.store.outage import OutageGrace
from relay.store.records import ActiveSession, Lifetimes
from relay.store.sessions import Sessions
from tests.conftest import log_lines
from tests.process import free_port

GRACE = 30
NOW = 1_000_000  # the wall clock of the checks (sessions' timestamps)


class Monotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def held(grace: OutageGrace, clock: Monotonic, *, lost_after: float = 0.2) -> None:
    """The listener's last heartbeat was answered at ``clock.now``; it is lost just after."""
    since = clock.now
    clock.now += lost_after
    assert grace.hold(since, entries=2)


def test_off_by_default_the_listener_flushes_as_before() -> None:
    """outage_grace = 0: hold() says flush, and nothing ever answers from held entries."""
    grace = OutageGrace(0)
    assert not grace.hold(50.0, entries=3)
    grace.unreachable()
    assert not grace.covers()


def test_nothing_confirmed_nothing_held() -> None:
    """A listener that never had an answered heartbeat holds nothing (the cache is empty)."""
    assert not OutageGrace(GRACE).hold(None, entries=0)


def test_a_lost_listener_alone_is_no_outage() -> None:
    """Held, but no attempt to connect has failed (the listener was merely slow, or dropped):
    held entries do not answer; the reconnect flushes them."""
    clock = Monotonic()
    grace = OutageGrace(GRACE, monotonic=clock)
    held(grace, clock)
    assert not grace.covers()


def test_a_failed_connect_opens_the_grace_until_its_end(log_stream: io.StringIO) -> None:
    """After a failed connect held entries answer, until outage_grace after the last answered
    heartbeat (not after the loss was noticed), and the end is logged once."""
    clock = Monotonic()
    grace = OutageGrace(GRACE, monotonic=clock)
    held(grace, clock, lost_after=2.0)
    grace.unreachable()
    assert grace.covers() and grace.active
    grace.answered()
    clock.now += GRACE - 2.0 - 0.01
    assert grace.covers()
    clock.now += 0.01
    assert not grace.covers() and not grace.active
    grace.unreachable()  # the listener keeps failing: still over
    assert not grace.covers()
    events = [e for e in log_lines(log_stream) if e["event"].startswith("cache.outage_grace")]
    assert [e["event"] for e in events] == [
        "cache.outage_grace_started",
        "cache.outage_grace_ended",
    ]
    assert events[0]["held"] == 2 and events[0]["remaining"] == GRACE - 2.0
    assert events[1]["reason"] == "expired" and events[1]["answered"] == 1
    assert events[1]["seconds"] == GRACE - 2.0
    grace.release()
    assert len([e for e in log_lines(log_stream) if e["event"].startswith("cache.")]) == 2


def test_a_reconnect_that_fails_again_keeps_the_first_start() -> None:
    """Every failed reconnect calls hold() again: the grace still counts from the first loss."""
    clock = Monotonic()
    grace = OutageGrace(GRACE, monotonic=clock)
    held(grace, clock)
    grace.unreachable()
    clock.now += GRACE - 1
    assert grace.hold(clock.now, entries=0)  # a later "since" is ignored
    clock.now += 1
    assert not grace.covers()


def test_a_statement_that_gets_through_stops_the_answers() -> None:
    """The database answers again (before the listener is back): held entries answer no
    more, and the release after the listener's flush ends the episode."""
    clock = Monotonic()
    grace = OutageGrace(GRACE, monotonic=clock)
    held(grace, clock)
    grace.unreachable()
    grace.reachable()
    assert not grace.covers() and grace.active
    grace.release()
    assert not grace.active and grace.episodes == 1
    grace.unreachable()  # nothing held any more
    assert not grace.covers()


def test_only_a_database_that_cannot_be_reached_is_an_outage() -> None:
    """A request's timeout (a slow statement, a lock, an exhausted pool) does not open the
    grace; a refused or failed connection does."""
    clock = Monotonic()
    grace = OutageGrace(GRACE, monotonic=clock)
    held(grace, clock)
    grace.failed(DatabaseUnavailable("database.timeout"))
    assert not grace.covers()
    grace.failed(DatabaseUnavailable("database.unavailable"))
    assert grace.covers()


def test_a_grace_long_past_flushes() -> None:
    """A loss noticed after outage_grace had already run out holds nothing."""
    clock = Monotonic()
    grace = OutageGrace(GRACE, monotonic=clock)
    assert not grace.hold(clock.now - GRACE, entries=1)


@pytest.fixture
def refused() -> Iterator[Database]:
    """A PostgreSQL engine on a port nobody listens on: every connection is refused."""
    port = free_port()
    engine = make_engine(f"postgresql+psycopg://relay@127.0.0.1:{port}/relay", timeout=2.0)
    yield Database(engine, 2.0)
    asyncio.run(engine.dispose())


def session(name: str, *, expires_at: int = NOW + 3600, **changes: Any) -> ActiveSession:
    return replace(
        ActiveSession(name, "sub-" + name, {}, NOW - 100, NOW - 10, expires_at), **changes
    )


def store(db: Database, seconds: int, *cached: ActiveSession) -> tuple[Sessions, Monotonic]:
    """Sessions over ``db`` whose cache held ``cached`` when its listener lost the database."""
    clock = Monotonic()
    trusted = [True]
    cache = SessionCache(100, trusted=lambda: trusted[0])
    for s in cached:
        cache.put(s.id_hash, CachedSession(s), cache.generation)
    grace = OutageGrace(seconds, monotonic=clock)
    sessions = Sessions(
        db, Sealer("x" * 32), Lifetimes(86400, 3600, 60), cache, refresh_margin=60, grace=grace
    )
    trusted[0] = False
    if not grace.hold(clock.now, len(cache)):
        cache.flush()
    return sessions, clock


def test_with_the_grace_off_every_check_is_a_503(refused: Database) -> None:
    """outage_grace = 0: a cached session's check reads the table, which refuses: 503."""
    sessions, _ = store(refused, 0, session("a"))
    assert sessions.cached("a", NOW) is None
    with pytest.raises(DatabaseUnavailable):
        asyncio.run(sessions.get("a", NOW))


def test_held_sessions_ride_out_a_refusing_database(refused: Database) -> None:
    """The first check finds the database refusing and answers from the held session; then
    the shortcut (cached) and the routed check answer without trying again, a touch due
    skipped; a session nobody held gets 503."""
    touch_due = session("a", last_accessed_at=NOW - 600)
    sessions, _ = store(refused, GRACE, touch_due)
    assert sessions.cached("a", NOW) is None  # nobody has failed to connect yet

    async def go() -> None:
        assert await sessions.get("a", NOW) is touch_due
        assert sessions.cached("a", NOW) is touch_due
        assert await sessions.get("a", NOW) is touch_due
        with pytest.raises(DatabaseUnavailable):
            await sessions.get("b", NOW)

    asyncio.run(go())
    assert sessions.grace.answered_total == 3


def test_held_sessions_stop_at_their_expiry_and_at_the_grace_end(refused: Database) -> None:
    """A held session whose expiry passes gets 503 (not 401: it may have been touched
    elsewhere); every held session gets 503 once outage_grace has run out."""
    sessions, clock = store(refused, GRACE, session("a"), session("b", expires_at=NOW + 5))
    sessions.grace.unreachable()  # the listener's reconnect was refused
    assert sessions.cached("b", NOW + 4) is not None
    assert sessions.cached("b", NOW + 5) is None
    with pytest.raises(DatabaseUnavailable):
        asyncio.run(sessions.get("b", NOW + 5))
    assert sessions.cached("a", NOW + 5) is not None
    clock.now += GRACE
    assert sessions.cached("a", NOW + GRACE) is None
    with pytest.raises(DatabaseUnavailable):
        asyncio.run(sessions.get("a", NOW + GRACE))


def test_a_refresh_due_goes_to_the_routed_gate(refused: Database) -> None:
    """The shortcut leaves a held session whose refresh is due to the routed check, whose
    refresher answers it within [refresh] outage_grace (relay/refresh.py); get() hands it on."""
    due = session("a", access_expires_at=NOW + 30, has_refresh_token=True)
    sessions, _ = store(refused, GRACE, due)
    sessions.grace.unreachable()
    assert sessions.cached("a", NOW) is None
    assert asyncio.run(sessions.get("a", NOW)) is due


def test_a_logout_that_cannot_be_written_drops_the_held_session(refused: Database) -> None:
    """A logout on a replica riding out an outage fails (503), but the session stops passing
    here: the user asked to leave."""
    sessions, _ = store(refused, GRACE, session("a"))
    sessions.grace.unreachable()
    with pytest.raises(DatabaseUnavailable):
        asyncio.run(sessions.revocation.delete("a"))
    assert sessions.cached("a", NOW) is None
    with pytest.raises(DatabaseUnavailable):
        asyncio.run(sessions.get("a", NOW))


def test_an_ending_here_drops_a_held_session(refused: Database) -> None:
    """invalidate() still reaches held entries (a logout on this replica, before the outage
    or by a statement that got through)."""
    sessions, _ = store(refused, GRACE, session("a"))
    sessions.grace.unreachable()
    sessions.cache.invalidate(["a"])
    assert sessions.cached("a", NOW) is None
