"""The relay behind PgBouncer in transaction pooling (Debian's package, its stock ini apart
from addresses, authentication and the pool mode; tests/pgbouncer.py): with `[database]
pooled` and a direct `listen_url` it works, revocations included; without `listen_url` it
refuses to trust its cache and says why; without `pooled` it stops with one line naming it."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx2
import pytest
from structlog.testing import capture_logs

from relay.store.cache import SessionCache
from relay.store.invalidation import Listener
from tests.conftest import postgres_database, run_migrations
from tests.live import auth, eventually, logout, relay_config, replicas, seed_session
from tests.pgbouncer import pgbouncer
from tests.process import RELAY, RelayProcess

pytestmark = pytest.mark.postgres

BOUND = 1.0  # a logout on one replica is a 401 on every other within this
SMALL_CACHE = "[cache]\nmax_entries = 8"  # most checks read the table


def database_keys(config: Path, keys: str) -> None:
    """Add ``keys`` to the [database] table of a tests/live.py config."""
    text = config.read_text()
    config.write_text(text.replace("[database]\n", f"[database]\n{keys}\n", 1))


def test_a_listener_behind_a_transaction_pooler_is_never_trusted() -> None:
    """Through the pooler the listener's LISTEN cannot be relied on (its statements run on
    whichever server connection is free): it never vouches for the cache, and says so once.
    The same listener on a direct connection does."""
    with postgres_database() as url, pgbouncer(url) as pooled:

        async def go() -> None:
            direct, through = SessionCache(10), SessionCache(10)
            listeners = [
                Listener(url, direct, timeout=2),
                Listener(pooled, through, timeout=2),
            ]
            tasks = [asyncio.create_task(listener.run()) for listener in listeners]
            try:
                deadline = time.monotonic() + 10
                while not (direct.trusted() and listeners[1].unproven >= 2):
                    assert not through.trusted(), "trusted through a transaction pooler"
                    assert time.monotonic() < deadline, "no verdict within 10 s"
                    await asyncio.sleep(0.01)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        with capture_logs() as logs:
            asyncio.run(go())
    unproven = [e for e in logs if e["event"] == "invalidation.unproven"]
    assert len(unproven) == 1 and "listen_url" in unproven[0]["detail"]


def test_without_pooled_the_relay_stops_with_one_line_naming_it(tmp_path: Path) -> None:
    """PgBouncer refuses the startup parameters the relay sends by default: `relay serve`
    exits 1 with one line that says which setting fixes it."""
    with postgres_database() as url, pgbouncer(url) as pooled:
        run_migrations(url)
        config, _ = relay_config(tmp_path, "relay", pooled)
        result = subprocess.run(
            [RELAY, "serve", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    err = result.stderr.strip().splitlines()
    assert result.returncode == 1
    assert len(err) == 1, err
    assert "[database] pooled = true" in err[0] and "listen_url" in err[0]


def test_two_replicas_behind_pgbouncer(tmp_path: Path) -> None:
    """pooled = true, listen_url direct, a cache smaller than the sessions in use: a logout on
    A is a 401 on B within 1 s; under load every uncached read on both answers 200 (no
    prepared statement lost between transactions). A third replica with no listen_url logs
    invalidation.unproven, bypasses its cache, and honours the logout at once."""
    with postgres_database() as url, pgbouncer(url) as pooled:
        run_migrations(url)
        cookies = [seed_session(url, f"user-{n}") for n in range(64)]
        direct = f'pooled = true\nlisten_url = "{url}"'
        a_config, a = relay_config(tmp_path, "a", pooled, extra=SMALL_CACHE)
        b_config, b = relay_config(tmp_path, "b", pooled, extra=SMALL_CACHE)
        c_config, c = relay_config(tmp_path, "c", pooled)
        for path, keys in ((a_config, direct), (b_config, direct), (c_config, "pooled = true")):
            database_keys(path, keys)
        with replicas(a_config, b_config) as (relay_a, relay_b), RelayProcess(c_config) as relay_c:
            relay_c.wait_for("invalidation.unproven", 10)
            with httpx2.Client(timeout=10) as http:
                revoked = cookies[0]
                assert auth(http, b, revoked) == 200  # now cached on B
                assert auth(http, c, revoked) == 200
                logout(http, a, revoked)
                ended = time.monotonic()
                eventually(lambda: auth(http, b, revoked) == 401, BOUND, "401 on B")
                assert time.monotonic() - ended < BOUND
                assert auth(http, c, revoked) == 401
                assert http.get(c + "/readyz").json()["session_cache"] == "bypassed"

            statuses: Counter[int] = Counter()
            lock = threading.Lock()

            def load(base: str, mine: list[str]) -> None:
                with httpx2.Client(timeout=10) as client:
                    for _ in range(5):
                        for cookie in mine:
                            status = auth(client, base, cookie)
                            with lock:
                                statuses[status] += 1

            live = cookies[1:]
            threads = [
                threading.Thread(target=load, args=(base, live[i::4]))
                for i in range(4)
                for base in (a, b)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
    assert statuses == {200: 5 * len(live) * 2}, statuses
    for relay in (relay_a, relay_b, relay_c):
        assert not [
            e
            for e in relay.events()
            if e["level"] in ("error", "critical") and e["event"] != "invalidation.unproven"
        ]
