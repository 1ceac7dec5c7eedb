"""Two `relay serve` processes on one PostgreSQL database: what one replica ends, the other
stops accepting within the documented bound (1 second), through LISTEN/NOTIFY or, when the
listener is down, by no longer trusting its cache; and only one of them prunes at a time.

Sessions are made by real logins at a test provider (tests/provider.py) served over a socket
by uvicorn in a thread of the test: both replicas trust it, and the test signs its
back-channel logout tokens with the provider's own key.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
import psycopg
import pytest
from sqlalchemy.engine import make_url

from relay.crypto import new_id
from relay.store.prune import ADVISORY_LOCK_KEY
from tests.conftest import postgres_database, run_migrations
from tests.live import (
    as_role,
    auth,
    eventually,
    grant_tables,
    libpq,
    logout,
    metric,
    postgres_role,
    relay_config,
    replicas,
    seed_session,
    served_provider,
    sign_in,
)
from tests.process import RelayProcess
from tests.provider import TestProvider

pytestmark = pytest.mark.postgres

BOUND = 1.0  # seconds: the documented revocation bound (relay/store/invalidation.py)
HITS = "relay_session_cache_hits_total"


@dataclass
class Cluster:
    url: str
    provider: TestProvider
    a: str  # base URLs
    b: str
    relay_a: RelayProcess
    relay_b: RelayProcess
    role_b: str  # the database role replica B connects as
    http: httpx2.Client


@contextmanager
def two_replicas(tmp_path: Path, extra_b: str = "") -> Iterator[Cluster]:
    """Replicas A (as root) and B (as a role of its own, to tell its connections apart) on one
    fresh database, with the same session secret and the same provider; ``extra_b`` is more
    of B's config."""
    with postgres_role() as role, postgres_database() as url, served_provider() as provider:
        run_migrations(url)
        grant_tables(url, role)
        config_a, a = relay_config(tmp_path, "a", url, issuer=provider.issuer)
        config_b, b = relay_config(
            tmp_path, "b", as_role(url, role), issuer=provider.issuer, extra=extra_b
        )
        with replicas(config_a, config_b) as (relay_a, relay_b), httpx2.Client(timeout=10) as http:
            yield Cluster(url, provider, a, b, relay_a, relay_b, role, http)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Two replicas, A and B (two_replicas)."""
    with two_replicas(tmp_path) as c:
        yield c


def cached_on(c: Cluster, base: str, cookie: str) -> None:
    """/auth answers 200 at ``base``, and from the cache (the hit counter moves): what ends the
    session later is an invalidation, not a table read the replica was doing anyway."""
    assert auth(c.http, base, cookie) == 200
    before = metric(c.http, base, HITS)
    assert auth(c.http, base, cookie) == 200
    assert metric(c.http, base, HITS) == before + 1


def first_401(c: Cluster, base: str, cookie: str, since: float) -> float:
    """Poll /auth at ``base`` as fast as it answers until a 401; return the seconds from
    ``since`` to it. Anything but 200 before it fails; so does no 401 within 3 x BOUND."""
    while True:
        status = auth(c.http, base, cookie)
        elapsed = time.monotonic() - since
        if status == 401:
            return elapsed
        assert status == 200, status
        assert elapsed < 3 * BOUND, "the ended session still works"


def test_a_session_made_on_one_replica_works_on_the_other(cluster: Cluster) -> None:
    c = cluster
    cookie = sign_in(c.a, c.provider, "alice", "op-1")
    cached_on(c, c.a, cookie)
    cached_on(c, c.b, cookie)
    identity = c.http.get(c.b + "/auth", headers={"cookie": f"relay_session={cookie}"})
    assert identity.headers["x-auth-request-subject"] == "alice"
    assert auth(c.http, c.b, "not-a-session") == 401


def test_a_replica_remembering_misses_passes_a_session_made_on_the_other_at_once(
    cluster: Cluster,
) -> None:
    """B remembers a bogus cookie as naming no session (the second /auth costs it no SELECT);
    a login at A, by the same browser, gets a new id that passes its very first check on B:
    creates are not announced, and need not be, since a new id was never looked up."""
    c = cluster
    old = new_id()
    remembered = "relay_session_cache_misses_remembered_total"
    before = metric(c.http, c.b, remembered)
    assert auth(c.http, c.b, old) == 401
    assert auth(c.http, c.b, old) == 401
    assert metric(c.http, c.b, remembered) == before + 1
    cookie = sign_in(c.a, c.provider, "alice", "op-1")
    assert auth(c.http, c.b, cookie) == 200
    assert auth(c.http, c.b, old) == 401


def test_logout_on_one_replica_ends_the_session_on_the_other_within_a_second(
    cluster: Cluster,
) -> None:
    c = cluster
    cookie = sign_in(c.a, c.provider, "alice", "op-1")
    other = sign_in(c.a, c.provider, "bob", "op-2")
    for base in (c.a, c.b):
        cached_on(c, base, cookie)
        cached_on(c, base, other)
    logout(c.http, c.a, cookie)
    ended = time.monotonic()
    assert first_401(c, c.b, cookie, ended) < BOUND
    assert auth(c.http, c.a, cookie) == 401
    assert auth(c.http, c.b, other) == 200  # only that session ended


def test_backchannel_logout_on_one_replica_ends_the_session_on_the_other_within_a_second(
    cluster: Cluster,
) -> None:
    c = cluster
    ended_cookies = [sign_in(c.a, c.provider, "alice", "op-1") for _ in range(2)]
    kept = sign_in(c.b, c.provider, "alice", "op-2")  # same user, another provider session
    for cookie in [*ended_cookies, kept]:
        cached_on(c, c.a, cookie)
        cached_on(c, c.b, cookie)
    c.provider.subject, c.provider.sid = "alice", "op-1"
    response = c.http.post(
        c.a + "/backchannel-logout", data={"logout_token": c.provider.logout_token()}
    )
    assert response.status_code == 200, response.text
    ended = time.monotonic()
    for cookie in ended_cookies:
        assert first_401(c, c.b, cookie, ended) < BOUND
        assert auth(c.http, c.a, cookie) == 401
    assert auth(c.http, c.b, kept) == 200
    line = eventually(
        lambda: next((e for e in c.relay_a.collect() if e["event"] == "backchannel_logout"), None),
        2,
        "A logs the back-channel logout",
    )
    assert line["ended"] == 2


def b_listener(c: Cluster) -> list[int]:
    """The backend of B's invalidation listener: B's role, and a last statement that only the
    listener sends (LISTEN, then its heartbeat, a probe notification on its own channel)."""
    database = make_url(c.url).database
    with psycopg.connect(libpq(c.url), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND usename = %s"
            " AND backend_type = 'client backend'"
            " AND (query LIKE 'LISTEN%%' OR query = 'SELECT pg_notify($1, $2)')",
            (database, c.role_b),
        ).fetchall()
    return [row[0] for row in rows]


def test_a_replica_whose_listener_is_cut_off_still_honours_revocations(cluster: Cluster) -> None:
    """B's LISTEN connection is terminated and B may not reconnect for a while: a logout on
    A still ends the session on B within the bound (B stops trusting its cache), B keeps
    answering for live sessions from the table, and when the listener is back B still
    answers right."""
    c = cluster
    revoked = sign_in(c.a, c.provider, "alice", "op-1")
    live = sign_in(c.a, c.provider, "bob", "op-2")
    for cookie in (revoked, live):
        cached_on(c, c.b, cookie)
    (pid,) = b_listener(c)
    admin = psycopg.connect(libpq(c.url), autocommit=True)
    try:
        # B's role may keep the connections it has (its pool), but gets no new one: the
        # listener stays down until this is undone.
        admin.execute(f'ALTER ROLE "{c.role_b}" NOLOGIN')
        killed = admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
        assert killed == (True,)
        logout(c.http, c.a, revoked)  # at once: B may not even have noticed yet
        ended = time.monotonic()
        assert first_401(c, c.b, revoked, ended) < BOUND
        eventually(
            lambda: any(e["event"] == "invalidation.lost" for e in c.relay_b.collect()),
            BOUND,
            "B logs that its listener is gone",
        )
        # While the listener is down: every answer from the table, right, and never a 500.
        down_until = time.monotonic() + 1.0
        while time.monotonic() < down_until:
            assert auth(c.http, c.b, live) == 200
            assert auth(c.http, c.b, revoked) == 401
        assert not b_listener(c)
        assert metric(c.http, c.b, "relay_session_cache_trusted") == 0
    finally:
        admin.execute(f'ALTER ROLE "{c.role_b}" LOGIN')
        admin.close()
    # Back within its backoff (0.25, 0.5, 1, 2, 4 s...): it listens again, and trusts its
    # cache again, without a restart.
    eventually(
        lambda: [
            e
            for e in c.relay_b.collect()
            if e["event"] == "invalidation.listening" and e["reconnects"] >= 1
        ],
        8,
        "B's listener is back",
    )
    eventually(lambda: metric(c.http, c.b, "relay_session_cache_trusted") == 1, 2, "B trusts again")
    cached_on(c, c.b, live)
    assert auth(c.http, c.b, revoked) == 401
    # And it hears notifications again.
    logout(c.http, c.a, live)
    assert first_401(c, c.b, live, time.monotonic()) < BOUND
    statuses = {e["status"] for e in c.relay_b.collect() if e["event"] == "http.request"}
    assert statuses <= {200, 401}


def test_a_replica_cut_off_under_outage_grace_admits_a_revoked_session_until_back(
    tmp_path: Path,
) -> None:
    """The case [cache] outage_grace trades away (README): B (grace 30 s) is cut off from a
    database that A still reaches. A logout on A cannot reach B: B keeps admitting that
    session from what it held, as it admits the live one; A refuses it at once. When B can
    connect again its listener flushes the cache (notifications sent meanwhile were lost)
    and the session is refused there too, without a restart."""
    with two_replicas(tmp_path, '[cache]\noutage_grace = "30s"\n') as c:
        revoked = sign_in(c.a, c.provider, "alice", "op-1")
        live = sign_in(c.a, c.provider, "bob", "op-2")
        for cookie in (revoked, live):
            cached_on(c, c.b, cookie)
        admin = psycopg.connect(libpq(c.url), autocommit=True)
        try:
            # Every connection of B's cut, and none new: B cannot reach the database at all.
            admin.execute(f'ALTER ROLE "{c.role_b}" NOLOGIN')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (c.role_b,),
            )
            eventually(
                lambda: metric(c.http, c.b, "relay_session_cache_outage_grace") == 1,
                BOUND,
                "B rides out the outage",
            )
            logout(c.http, c.a, revoked)
            assert auth(c.http, c.a, revoked) == 401
            until = time.monotonic() + 1.5
            while time.monotonic() < until:
                assert auth(c.http, c.b, revoked) == 200  # the price, bounded by the grace
                assert auth(c.http, c.b, live) == 200
        finally:
            admin.execute(f'ALTER ROLE "{c.role_b}" LOGIN')
            admin.close()
        back = time.monotonic()
        # B's listener retries every 0.25 s while it rides out an outage.
        assert first_401(c, c.b, revoked, back) < 3 * BOUND
        # And once B trusts its cache again, nothing held from before the outage is in it.
        eventually(
            lambda: metric(c.http, c.b, "relay_session_cache_trusted") == 1, 2, "B trusts again"
        )
        assert auth(c.http, c.b, revoked) == 401
        assert auth(c.http, c.b, live) == 200
        ended = [e for e in c.relay_b.collect() if e["event"] == "cache.outage_grace_ended"]
        assert [e["reason"] for e in ended] == ["database_back"]
        statuses = {e["status"] for e in c.relay_b.collect() if e["event"] == "http.request"}
        assert statuses <= {200, 401}


def prune_events(relay: RelayProcess) -> list[str]:
    return [e["event"] for e in relay.collect() if e["event"].startswith("prune.")]


def skipped_twice(relay: RelayProcess) -> bool:
    return prune_events(relay).count("prune.skipped") >= 2


def test_only_one_replica_prunes_at_a_time(tmp_path: Path) -> None:
    """While something else holds the prune lock, neither replica prunes (both say
    prune.skipped and the expired row stays); once it is free, the row goes."""
    with postgres_database() as url:
        run_migrations(url)
        seed_session(url, "gone", expires_in=-60)
        seed_session(url, "here")
        holder = psycopg.connect(libpq(url), autocommit=True)
        try:
            holder.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
            extra = "prune_interval = 1\n"
            config_a, _ = relay_config(tmp_path, "a", url, extra=extra)
            config_b, _ = relay_config(tmp_path, "b", url, extra=extra)
            with replicas(config_a, config_b) as (relay_a, relay_b):
                for relay in (relay_a, relay_b):
                    eventually(
                        functools.partial(skipped_twice, relay),
                        5,
                        "both replicas skip while the lock is held",
                    )
                assert rows(holder) == {"gone", "here"}
                holder.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
                eventually(lambda: rows(holder) == {"here"}, 5, "the expired row is pruned")
                # The line is written just after the pass commits: it may trail the row's going.
                eventually(
                    lambda: "prune.completed" in prune_events(relay_a) + prune_events(relay_b),
                    2,
                    "a replica reports the pass",
                )
        finally:
            holder.close()


def rows(conn: psycopg.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT subject FROM sessions").fetchall()}


def test_a_failed_prune_pass_does_not_keep_the_prune_lock(tmp_path: Path) -> None:
    """A pass that fails halfway (its DELETE times out behind a table lock) must let go of the
    advisory lock, or no replica ever prunes again while that pooled connection lives: the
    lock is a session lock, which a rollback does not release."""
    with postgres_database() as url:
        run_migrations(url)
        seed_session(url, "gone", expires_in=-60)
        extra = "prune_interval = 1\n"
        config_a, _ = relay_config(tmp_path, "a", url, extra=extra)
        config_b, _ = relay_config(tmp_path, "b", url, extra=extra)
        with (
            psycopg.connect(libpq(url)) as locker,
            psycopg.connect(libpq(url), autocommit=True) as probe,
        ):
            locker.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
            with replicas(config_a, config_b) as (relay_a, relay_b):
                eventually(
                    lambda: "prune.failed" in prune_events(relay_a) + prune_events(relay_b),
                    6,
                    "a pass fails behind the table lock",
                )
                locker.rollback()
                # A pass holds the lock for milliseconds once a second: a free lock is
                # taken at once here, a leaked one never.
                eventually(
                    lambda: (
                        probe.execute(
                            "SELECT pg_try_advisory_lock(%s)", (ADVISORY_LOCK_KEY,)
                        ).fetchone()
                        == (True,)
                    ),
                    3,
                    "the prune lock is free between passes",
                )
                probe.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
                failed = [
                    e for e in relay_a.events() + relay_b.events() if e["event"] == "prune.failed"
                ]
                # The cause is reported (the lock wait ran out), not a later statement's error.
                assert {e["reason"] for e in failed} == {"database.timeout"}, failed
                eventually(lambda: rows(probe) == set(), 5, "the expired row is pruned")
