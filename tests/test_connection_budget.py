"""Ten replicas behind PgBouncer (transaction pooling, stock ini apart from addresses) on a
server with `max_connections = 100`: a burst of cache misses on all of them gets no 503 and
leaves room on the server (issue 15: directly, ten replicas ran it out of connections, 763 of
10,939 answers were 503, and 99 backends stayed open afterwards)."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx2
import psycopg
import pytest

from benchmarks.harness import seed
from tests.conftest import run_migrations
from tests.live import auth, relay_config, replicas
from tests.pg_cluster import pg_cluster
from tests.pgbouncer import pgbouncer
from tests.test_poolers import database_keys

pytestmark = pytest.mark.postgres

REPLICAS = 10
SESSIONS = 100  # per replica, each checked once: every check a cache miss
# PgBouncer's stock default_pool_size (20) server connections for the relay's database and
# user, one direct listener per replica, and this test's own monitoring connection.
BUDGET = 20 + REPLICAS + 1


def backends(admin: psycopg.Connection[tuple[int]]) -> int:
    row = admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
    ).fetchone()
    assert row is not None
    return row[0]


def test_ten_replicas_behind_pgbouncer_fit_a_default_server(tmp_path: Path) -> None:
    """A burst of cache misses on ten replicas at once: every check 200, the server's
    backends never above the pooler's pool plus the listeners, and a new connection (an
    operator's psql) still gets in afterwards."""
    with pg_cluster("max_connections=100") as server:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute("CREATE DATABASE relay")
        direct = server.replace("postgresql://", "postgresql+psycopg://").replace(
            "/postgres", "/relay"
        )
        run_migrations(direct)
        cookies = seed(direct, REPLICAS * SESSIONS, known=REPLICAS * SESSIONS)
        with pgbouncer(direct) as pooled, ExitStack() as stack:
            configs = []
            for n in range(REPLICAS):
                config, base = relay_config(tmp_path, f"r{n}", pooled)
                database_keys(config, f'pooled = true\nlisten_url = "{direct}"')
                configs.append((config, base))
            stack.enter_context(replicas(*(c for c, _ in configs)))
            admin = stack.enter_context(psycopg.connect(server.replace("/postgres", "/relay")))
            admin.autocommit = True
            peak = backends(admin)
            statuses: Counter[int] = Counter()
            lock = threading.Lock()
            done = threading.Event()

            def burst(n: int) -> None:
                base = configs[n % REPLICAS][1]
                mine = cookies[n * SESSIONS // 2 : (n + 1) * SESSIONS // 2]
                with httpx2.Client(timeout=10) as client:
                    for cookie in mine:
                        status = auth(client, base, cookie)
                        with lock:
                            statuses[status] += 1

            def watch() -> None:
                nonlocal peak
                with psycopg.connect(server.replace("/postgres", "/relay")) as conn:
                    conn.autocommit = True
                    while not done.is_set():
                        peak = max(peak, backends(conn))
                        done.wait(0.02)

            watcher = threading.Thread(target=watch)
            watcher.start()
            try:
                with ThreadPoolExecutor(2 * REPLICAS) as pool:
                    list(pool.map(burst, range(2 * REPLICAS)))
            finally:
                done.set()
                watcher.join(10)
            after = backends(admin)
            with psycopg.connect(server) as operator:  # room left for psql
                assert operator.execute("SELECT 1").fetchone() == (1,)
    assert statuses == {200: REPLICAS * SESSIONS}, statuses
    assert peak <= BUDGET, f"{peak} backends at the peak"
    assert after <= BUDGET, f"{after} backends after the burst"
    print(f"backends: peak {peak}, after {after}, budget {BUDGET}")
