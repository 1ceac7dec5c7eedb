"""A `relay serve` process whose PostgreSQL database goes away, or locks the sessions table,
under load: /auth answers 503 within the bound (database.timeout 2 s + 1 s grace), never 401
and never 500; every failure is one clean log line; and it all comes back without a restart
and without losing a session.

With [cache] outage_grace set, the sessions the relay had cached keep answering 200 through
such an outage, for at most that long; a partition (through tests/tcp_proxy.py) starts it
only once a connection fails, and a database merely slow never does.

Each test blocks only its own fresh database, or the path through its own proxy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest
from sqlalchemy.engine import make_url

from relay.crypto import Sealer, hash_id
from tests.conftest import PG_ADMIN, postgres_database, run_migrations
from tests.live import (
    SECRET,
    auth,
    eventually,
    libpq,
    metric,
    relay_config,
    replicas,
    seed_session,
)
from tests.process import RelayProcess
from tests.tcp_proxy import tcp_proxy

pytestmark = pytest.mark.postgres

TRUST = 1.0  # the documented bound: a cached answer outlives the database by at most this
BOUND = 2.0 + 1.0  # [database] timeout (the default, 2 s) + the store's grace (1 s)
SLACK = 0.5  # scheduling on a busy machine


@dataclass
class Answer:
    cookie: str
    sent: float
    received: float
    status: int


class Load:
    """Threads asking /auth for every cookie, round and round, until stopped."""

    def __init__(self, base: str, cookies: list[str], workers: int = 4) -> None:
        self.base = base
        self.cookies = cookies
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, offset: int) -> None:
        with httpx2.Client(timeout=30) as client:
            i = offset
            while not self._stop.is_set():
                cookie = self.cookies[i % len(self.cookies)]
                i += 1
                sent = time.monotonic()
                status = auth(client, self.base, cookie)
                self.answers.append(Answer(cookie, sent, time.monotonic(), status))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(40)
        assert not any(thread.is_alive() for thread in self._threads)

    def between(self, start: float, end: float = float("inf")) -> list[Answer]:
        return [a for a in list(self.answers) if a.sent >= start and a.received <= end]


@contextmanager
def load_on(base: str, cookies: list[str]) -> Iterator[Load]:
    load = Load(base, cookies)
    try:
        yield load
    finally:
        load.stop()


def check_log(relay: RelayProcess, loads: list[Load]) -> None:
    """One access line per failed /auth, with a database reason; no traceback anywhere; no
    session id or its hash (the SQL parameter) in any line."""
    failed = [a for load in loads for a in load.answers if a.status == 503]

    def failure_lines() -> list[dict[str, Any]]:
        return [
            e
            for e in relay.collect()
            if e["event"] == "http.request" and e["path"] == "/auth" and e["status"] == 503
        ]

    # A line is written just after its response is sent: wait for the last ones.
    eventually(lambda: len(failure_lines()) >= len(failed), 5, "every failure is logged")
    failures = failure_lines()
    assert len(failures) == len(failed)
    events = relay.events()
    lines = [e for e in events if e["event"] == "http.request" and e["path"] == "/auth"]
    assert all(e["reason"].startswith("database.") for e in failures), failures
    assert not [e for e in lines if e["status"] not in (200, 503)]
    text = "\n".join(relay.lines)
    assert "Traceback" not in text
    assert not [e for e in events if "exception" in e or e["level"] in ("error", "critical")]
    assert "[parameters" not in text and "[SQL" not in text
    for cookie in (c for load in loads for c in load.cookies):
        assert cookie not in text and hash_id(cookie) not in text


def session_count(url: str) -> int:
    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute("SELECT count(*) FROM sessions").fetchone()
    assert row is not None
    return int(row[0])


def block(admin: psycopg.Connection, name: str) -> float:
    """No new connection to the database, and every open one cut: return when."""
    admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()",
        (name,),
    )
    return time.monotonic()


def test_database_outage_under_load(tmp_path: Path) -> None:
    """The database refuses connections for about 4 s while four clients keep asking /auth
    for four sessions the relay has cached ([cache] outage_grace off, the default)."""
    with postgres_database() as url:
        run_migrations(url)
        name = make_url(url).database
        assert name is not None
        cookies = [seed_session(url, f"user-{n}") for n in range(4)]
        config, base = relay_config(tmp_path, "relay", url)
        with (
            replicas(config) as (relay,),
            httpx2.Client(timeout=30) as http,
            psycopg.connect(PG_ADMIN, autocommit=True) as admin,
        ):
            for cookie in cookies:
                assert auth(http, base, cookie) == 200
            with load_on(base, cookies) as load:
                eventually(lambda: len(load.answers) > 20, 5, "the load runs")
                try:
                    blocked = block(admin, name)
                    first_503 = eventually(
                        lambda: next((a for a in load.between(blocked) if a.status == 503), None),
                        BOUND + SLACK,
                        "a 503 after the database went away",
                    )
                    assert first_503.received - blocked < BOUND
                    ready = http.get(base + "/readyz")
                    assert ready.status_code == 503
                    assert ready.json()["status"] == "unavailable"
                    assert ready.json()["database"].startswith("unavailable: database.")
                    eventually(lambda: time.monotonic() > blocked + 4, 5, "the outage lasts 4 s")
                finally:
                    restoring = time.monotonic()  # answered before this: during the outage
                    admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
                # Every session works again without a restart, within a few seconds.
                eventually(
                    lambda: all(auth(http, base, c) == 200 for c in cookies),
                    10,
                    "every session answers 200 again",
                )
                recovered = time.monotonic()
                eventually(
                    lambda: (
                        {a.cookie for a in load.between(recovered) if a.status == 200}
                        == set(cookies)
                    ),
                    5,
                    "the load is served again",
                )
            assert {a.status for a in load.answers} <= {200, 503}
            during = load.between(blocked, restoring)
            # A 200 while the database is away can only come from the cache, within its bound.
            assert not [a for a in during if a.status == 200 and a.sent > blocked + TRUST]
            failed = [a for a in load.answers if a.status == 503]
            assert len(failed) > 10
            assert all(a.received - a.sent < BOUND + SLACK for a in failed)
            assert all(a.status == 200 for a in load.between(recovered))
            eventually(
                lambda: any(
                    e["event"] == "invalidation.listening" and e["reconnects"] >= 1
                    for e in relay.collect()
                ),
                10,
                "the listener is back",
            )
            check_log(relay, [load])
        assert session_count(url) == len(cookies)  # no session lost


def seeded_after_warm_start(relay: RelayProcess, url: str, count: int) -> list[str]:
    """Sessions this relay has never seen: written after its warm start read the table (a
    session in the table at start is loaded into its cache, store/warm.py)."""
    if not any('"cache.warmed"' in line for line in relay.lines):  # not printed yet
        relay.wait_for('"cache.warmed"')
    return [seed_session(url, f"uncached-{n}") for n in range(count)]


def test_sessions_table_locked_under_load(tmp_path: Path) -> None:
    """Another client holds ACCESS EXCLUSIVE on the sessions table for 5 s: sessions the
    relay has cached keep working (the listener still vouches for the cache); sessions it has
    not seen yet get a 503 within the bound, not a wait for the lock; nobody gets a 401 or a
    500; and when the lock goes, everything works again."""
    with postgres_database() as url:
        run_migrations(url)
        cached = [seed_session(url, f"cached-{n}") for n in range(2)]
        config, base = relay_config(tmp_path, "relay", url)
        with (
            replicas(config) as (relay,),
            httpx2.Client(timeout=30) as http,
            load_on(base, cached) as warm,
        ):
            # Sessions the relay has not seen: written after its warm start read the table.
            uncached = seeded_after_warm_start(relay, url, 2)
            eventually(lambda: len(warm.answers) > 20, 5, "the load runs")
            with psycopg.connect(libpq(url)) as locker:
                locker.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
                locked = time.monotonic()
                with load_on(base, uncached) as cold:  # never asked for before the lock
                    eventually(lambda: time.monotonic() > locked + 5, 6, "the lock is held 5 s")
                    releasing = time.monotonic()  # answered before this: under the lock
                    locker.rollback()
                    released = time.monotonic()
                    eventually(
                        lambda: all(auth(http, base, c) == 200 for c in uncached),
                        BOUND + SLACK,
                        "the uncached sessions answer 200 again",
                    )
                    recovered = time.monotonic()
                    eventually(
                        lambda: (
                            {a.cookie for a in cold.between(recovered) if a.status == 200}
                            == set(uncached)
                        ),
                        5,
                        "the uncached sessions are served again under load",
                    )
            warm.stop()
            assert {a.status for a in warm.answers} == {200}
            assert {a.status for a in cold.answers} <= {200, 503}
            failed = [a for a in cold.answers if a.status == 503]
            assert failed
            assert all(a.status == 503 for a in cold.between(locked, releasing))
            # Each answer within the bound, not a wait for the lock (measured per request: the
            # cold clients start a little after the lock is taken).
            first = min(cold.answers, key=lambda a: a.sent)
            assert first.status == 503 and first.received - first.sent < BOUND
            assert all(a.received - a.sent < BOUND + SLACK for a in cold.answers)
            assert all(a.status == 200 for a in cold.between(recovered))
            assert recovered - released < BOUND + SLACK
            check_log(relay, [warm, cold])
            reasons = {e.get("reason") for e in relay.events() if e.get("status") == 503}
            assert reasons == {"database.timeout"}
        assert session_count(url) == 4  # no session lost


GRACE_CONFIG = '[cache]\noutage_grace = "30s"\n'


def refresh_due(url: str, cookie: str) -> None:
    """Give the session a refresh token and an access token that expired 5 s ago: every check
    wants a refresh (the provider, 127.0.0.1:9, never answers one), and [refresh]
    outage_grace (10 minutes) lets it pass meanwhile."""
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute(
            "UPDATE sessions SET refresh_token = %s, access_expires_at = %s WHERE id_hash = %s",
            (Sealer(SECRET).seal("a-refresh-token"), int(time.time()) - 5, hash_id(cookie)),
        )


def grace_lines(relay: RelayProcess) -> list[dict[str, Any]]:
    return [e for e in relay.collect() if e["event"].startswith("cache.outage_grace")]


def grace_line(relay: RelayProcess, event: str) -> dict[str, Any] | None:
    return next((e for e in grace_lines(relay) if e["event"] == event), None)


def test_outage_grace_rides_out_a_database_outage_under_load(tmp_path: Path) -> None:
    """With [cache] outage_grace = 30s the database refuses connections and cuts every open
    one for about 4 s under load: the sessions the relay had cached answer 200 throughout,
    sessions it had not seen get 503, nobody gets a 401 or a 500, the grace is logged and
    counted, and everything comes back without a restart. One cached session has a refresh
    due, which the outage makes impossible to claim: [refresh] outage_grace answers for it."""
    with postgres_database() as url:
        run_migrations(url)
        name = make_url(url).database
        assert name is not None
        cached = [seed_session(url, f"cached-{n}") for n in range(3)]
        refresh_due(url, cached[0])
        config, base = relay_config(tmp_path, "relay", url, extra=GRACE_CONFIG)
        with (
            replicas(config) as (relay,),
            httpx2.Client(timeout=30) as http,
            psycopg.connect(PG_ADMIN, autocommit=True) as admin,
            load_on(base, cached) as warm,
        ):
            uncached = seeded_after_warm_start(relay, url, 2)
            eventually(lambda: len(warm.answers) > 20, 5, "the load runs")
            try:
                blocked = block(admin, name)
                with load_on(base, uncached) as cold:  # never asked for before the outage
                    eventually(
                        lambda: grace_line(relay, "cache.outage_grace_started"),
                        BOUND + SLACK,
                        "the grace starts",
                    )
                    ready = http.get(base + "/readyz")
                    assert ready.status_code == 503
                    assert ready.json()["session_cache"] == "outage_grace"
                    eventually(lambda: time.monotonic() > blocked + 4, 5, "the outage lasts 4 s")
                    restoring = time.monotonic()  # answered before this: during the outage
                    admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
                    eventually(
                        lambda: all(auth(http, base, c) == 200 for c in uncached),
                        10,
                        "the sessions it had not seen answer 200 again",
                    )
                    recovered = time.monotonic()
                    eventually(
                        lambda: (
                            {a.cookie for a in cold.between(recovered) if a.status == 200}
                            == set(uncached)
                        ),
                        5,
                        "the uncached sessions are served again under load",
                    )
            finally:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            eventually(
                lambda: grace_line(relay, "cache.outage_grace_ended"),
                10,
                "the grace ends when the listener is back",
            )
            warm.stop()
            assert {a.status for a in warm.answers} == {200}
            held = warm.between(blocked + TRUST, restoring)  # answered from held sessions
            assert len(held) > 20 and {a.cookie for a in held} == set(cached)
            assert any(e["event"] == "refresh.failed" for e in relay.events())  # it was due
            assert {a.status for a in cold.answers} <= {200, 503}
            assert all(a.status == 503 for a in cold.between(blocked, restoring))
            assert all(a.status == 200 for a in cold.between(recovered))
            assert all(a.received - a.sent < BOUND + SLACK for a in cold.answers)
            started, ended = grace_lines(relay)
            assert started["event"] == "cache.outage_grace_started" and started["held"] == 3
            assert started["grace"] == 30 and 0 < started["remaining"] <= 30
            assert ended["event"] == "cache.outage_grace_ended"
            assert ended["reason"] == "database_back" and ended["answered"] > 0
            assert 4 - SLACK < ended["seconds"] < 30
            assert metric(http, base, "relay_session_cache_outage_graces_total") == 1
            assert metric(http, base, "relay_session_cache_outage_grace_answers_total") > 0
            assert metric(http, base, "relay_session_cache_outage_grace") == 0
            assert metric(http, base, "relay_session_cache_trusted") == 1
            check_log(relay, [warm, cold])
        assert session_count(url) == 5  # no session lost


def test_outage_grace_runs_out(tmp_path: Path) -> None:
    """With outage_grace = 2s and the database away for longer, the held sessions answer 200
    until 2 s after the last moment the relay knew it heard every ending, then 503 (never
    401): the grace counts from the outage's start, not per session."""
    with postgres_database() as url:
        run_migrations(url)
        name = make_url(url).database
        assert name is not None
        cookies = [seed_session(url, f"user-{n}") for n in range(2)]
        extra = '[cache]\noutage_grace = "2s"\n'
        config, base = relay_config(tmp_path, "relay", url, extra=extra)
        with (
            replicas(config) as (relay,),
            psycopg.connect(PG_ADMIN, autocommit=True) as admin,
            load_on(base, cookies) as load,
        ):
            eventually(lambda: len(load.answers) > 20, 5, "the load runs")
            try:
                blocked = block(admin, name)
                eventually(
                    lambda: grace_line(relay, "cache.outage_grace_ended"),
                    2 + BOUND + SLACK,
                    "the grace runs out",
                )
                ran_out = time.monotonic()
                eventually(lambda: time.monotonic() > ran_out + 1, 2, "a second past its end")
                restoring = time.monotonic()
            finally:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            load.stop()
            during = load.between(blocked, restoring)
            assert {a.status for a in load.answers} == {200, 503}
            # The last heartbeat answered no later than the block: 2 s after it, no more 200.
            assert not [a for a in during if a.status == 200 and a.sent > blocked + 2]
            assert [a for a in during if a.status == 200 and a.sent > blocked + TRUST]
            assert all(a.status == 503 for a in load.between(ran_out, restoring))
            ended = grace_lines(relay)[-1]
            assert ended["reason"] == "expired" and ended["answered"] > 0
            check_log(relay, [load])


def through_proxy(url: str, port: int) -> str:
    return make_url(url).set(host="127.0.0.1", port=port).render_as_string(False)


def test_a_partition_starts_the_grace_only_once_a_connection_fails(tmp_path: Path) -> None:
    """The network to the database drops everything (connections stay open, nothing arrives),
    with outage_grace = 30s: a slow database is no outage, so the cached sessions ride it out
    only once the listener gave up on its connection and a new one failed; before that they
    get 503 at worst, never 401 or 500; then 200 until the network heals, and after."""
    with postgres_database() as url:
        run_migrations(url)
        cookies = [seed_session(url, f"user-{n}") for n in range(2)]
        parsed = make_url(url)
        with tcp_proxy(parsed.host or "127.0.0.1", parsed.port or 5432) as proxy:
            proxied = through_proxy(url, proxy.port)
            config, base = relay_config(tmp_path, "relay", proxied, extra=GRACE_CONFIG)
            with replicas(config) as (relay,), load_on(base, cookies) as load:
                eventually(lambda: len(load.answers) > 20, 5, "the load runs")
                proxy.partition()
                cut = time.monotonic()
                started = eventually(
                    lambda: grace_line(relay, "cache.outage_grace_started"),
                    # The heartbeat's timeout (2 s), its socket shut then, a backoff, a
                    # connect timeout (2 s): about 4.5 s (13 s before the socket was shut).
                    10,
                    "the grace starts",
                )
                began = time.monotonic()
                assert began - cut > 2 - SLACK  # not while the listener was merely slow
                assert started["held"] == 2
                eventually(lambda: time.monotonic() > began + 3, 4, "3 s of the grace")
                healing = time.monotonic()
                proxy.heal()
                eventually(lambda: grace_line(relay, "cache.outage_grace_ended"), 10, "back")
                healed = time.monotonic()
                eventually(
                    lambda: (
                        {a.cookie for a in load.between(healed) if a.status == 200} == set(cookies)
                    ),
                    5,
                    "the load is served again",
                )
            assert {a.status for a in load.answers} <= {200, 503}
            riding = load.between(began, healing)
            assert len(riding) > 20 and all(a.status == 200 for a in riding)
            ended = grace_line(relay, "cache.outage_grace_ended")
            assert ended is not None and ended["reason"] == "database_back"
            check_log(relay, [load])


def test_a_database_merely_slow_is_no_outage(tmp_path: Path) -> None:
    """With outage_grace = 30s, the network to the database stalls for 1.2 s (less than
    database.timeout): the listener's heartbeat answers late, so the cache is bypassed for a
    moment and checks wait for the table, but nothing is held, no grace starts, and every
    check answers 200."""
    with postgres_database() as url:
        run_migrations(url)
        cookies = [seed_session(url, f"user-{n}") for n in range(2)]
        parsed = make_url(url)
        with tcp_proxy(parsed.host or "127.0.0.1", parsed.port or 5432) as proxy:
            proxied = through_proxy(url, proxy.port)
            config, base = relay_config(tmp_path, "relay", proxied, extra=GRACE_CONFIG)
            with replicas(config) as (relay,), load_on(base, cookies) as load:
                eventually(lambda: len(load.answers) > 20, 5, "the load runs")
                proxy.partition()
                stalled = time.monotonic()
                eventually(lambda: time.monotonic() > stalled + 1.2, 2, "a 1.2 s stall")
                proxy.heal()
                healed = time.monotonic()
                eventually(lambda: len(load.between(healed + 1)) > 20, 5, "the load runs after it")
            assert {a.status for a in load.answers} == {200}
            assert not grace_lines(relay)
            assert not [e for e in relay.events() if e["event"] == "invalidation.lost"]
