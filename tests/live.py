"""Real `relay serve` processes on the machine's PostgreSQL: their configuration, a test
provider they can reach over a socket, sessions made by a real login or written straight into
the table, and polling with a deadline (never a bare sleep that hides a race)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TypeVar

import httpx2
import psycopg
import uvicorn
from sqlalchemy import create_engine, insert
from sqlalchemy.engine import make_url

from relay.crypto import hash_id, new_id
from relay.store.models import sessions
from tests.conftest import PG_ADMIN
from tests.process import RelayProcess, free_port
from tests.provider import CLIENT_ID, CLIENT_SECRET, TestProvider

SECRET = "replicas-share-this-session-secret-0123456789"
COOKIE = "relay_session"
T = TypeVar("T")


def eventually(check: Callable[[], T | None], deadline: float, what: str) -> T:
    """Call ``check`` until it returns something other than None/False; fail at the deadline."""
    end = time.monotonic() + deadline
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline} s: {what}")
        time.sleep(0.02)


@contextmanager
def served_provider() -> Iterator[TestProvider]:
    """tests/provider.py's provider under uvicorn on 127.0.0.1 (a thread of this process), on
    the wall clock: every relay process trusts it, and the test signs its logout tokens."""
    port = free_port()
    provider = TestProvider(time.time, issuer=f"http://127.0.0.1:{port}")
    config = uvicorn.Config(
        provider.app, host="127.0.0.1", port=port, log_config=None, log_level="warning", ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        eventually(lambda: server.started, 10, "the provider listens")
        yield provider
    finally:
        server.should_exit = True
        thread.join(10)


def relay_config(
    tmp_path: Path,
    name: str,
    database_url: str,
    *,
    issuer: str = "http://127.0.0.1:9",
    extra: str = "",
) -> tuple[Path, str]:
    """A config file for one replica on a free port; returns (path, base URL)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}
public_url = "{base}"
[provider]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
[database]
url = "{database_url}"
[access]
email_domains = ["*"]
[session]
secret = "{SECRET}"
cookie_secure = false
{extra}
"""
    )
    return path, base


@contextmanager
def replicas(*configs: Path) -> Iterator[list[RelayProcess]]:
    """Relays started side by side, each with its invalidation listener up (its cache can be
    trusted); killed afterwards."""
    with ExitStack() as stack:
        relays = [stack.enter_context(contextlib.closing(_Unstarted(c))) for c in configs]
        with ThreadPoolExecutor(len(relays)) as pool:
            list(pool.map(_start, relays))
        yield [r.relay for r in relays]


class _Unstarted:
    def __init__(self, config: Path) -> None:
        self.relay = RelayProcess(config)

    def close(self) -> None:
        self.relay.__exit__(None, None, None)


def _start(unstarted: _Unstarted) -> None:
    unstarted.relay.start()
    unstarted.relay.wait_for("invalidation.listening", 10)


def sign_in(base: str, provider: TestProvider, subject: str, sid: str) -> str:
    """A real login at the relay at ``base``: /login, the provider, /callback. Returns the
    session cookie's value."""
    provider.subject, provider.sid = subject, sid
    with httpx2.Client(follow_redirects=False, timeout=10) as browser:
        start = browser.get(base + "/login", params={"rd": base + "/"})
        assert start.status_code == 302, start.text
        at_provider = browser.get(start.headers["location"])
        assert at_provider.status_code == 302, at_provider.text
        callback = browser.get(at_provider.headers["location"])
        assert callback.status_code == 302, callback.text
        cookie = callback.cookies.get(COOKIE)
    assert cookie
    return cookie


def seed_session(database_url: str, subject: str, *, expires_in: int = 86400) -> str:
    """A session row written straight into the table (as benchmarks/auth_hot_path.py does):
    no replica has seen it. Returns its cookie."""
    cookie = new_id()
    now = int(time.time())
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(sessions).values(
                    id_hash=hash_id(cookie),
                    status="active",
                    subject=subject,
                    claims=json.dumps({"sub": subject, "preferred_username": subject}),
                    created_at=now - 10,
                    last_accessed_at=now,
                    expires_at=now + expires_in,
                )
            )
    finally:
        engine.dispose()
    return cookie


def libpq(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(False)


def auth(client: httpx2.Client, base: str, cookie: str) -> int:
    return client.get(base + "/auth", headers={"cookie": f"{COOKIE}={cookie}"}).status_code


def logout(client: httpx2.Client, base: str, cookie: str) -> None:
    response = client.post(
        base + "/logout", headers={"cookie": f"{COOKIE}={cookie}", "origin": base}
    )
    assert response.status_code == 303, response.text


def metric(client: httpx2.Client, base: str, name: str) -> float:
    for line in client.get(base + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


@contextmanager
def postgres_role() -> Iterator[str]:
    """A login role of its own (dropped afterwards), so that a test can find one replica's
    connections in pg_stat_activity and refuse it new ones. Enter it before the database, so
    that the database (and the role's privileges in it) is dropped first."""
    name = "relay_test_role_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{name}" LOGIN')
    try:
        yield name
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP ROLE IF EXISTS "{name}"')


def grant_tables(database_url: str, role: str) -> None:
    with psycopg.connect(libpq(database_url), autocommit=True) as conn:
        conn.execute(
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}"'
        )


def as_role(database_url: str, role: str) -> str:
    return make_url(database_url).set(username=role).render_as_string(False)
