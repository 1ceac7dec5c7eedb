"""Shared fixtures: a fake clock, the in-process provider, databases (SQLite and the machine's
PostgreSQL, each built with the alembic migrations), and a relay running against them."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import psycopg
import pytest
import structlog
from sqlalchemy import Engine, create_engine, event
from starlette.testclient import TestClient

from relay.app import create_app
from relay.config import Config, config_from_mapping
from relay.logs import configure_logging
from relay.store.database import Database, make_engine, migrate
from tests.provider import CLIENT_ID, CLIENT_SECRET, ISSUER, ProviderTransport, TestProvider

PUBLIC_URL = "https://relay.test"
SECRET = "test-session-secret-0123456789-abcdef"
PG_ADMIN = os.environ.get("RELAY_TEST_PG", "postgresql://root@127.0.0.1:5432/postgres")


class FakeClock:
    """A clock the test moves by hand; the relay and the provider both read it."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def provider(clock: FakeClock) -> TestProvider:
    return TestProvider(clock)


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL, dropped afterwards."""
    name = "relay_test_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield (
            PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
            + "/"
            + name
        )
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test that takes this runs on SQLite and on PostgreSQL, migrated to head."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}"
        run_migrations(url)
        yield url
    else:
        with postgres_database() as url:
            run_migrations(url)
            yield url


def run_migrations(url: str) -> None:
    async def go() -> None:
        engine = make_engine(url)
        try:
            await migrate(engine)
        finally:
            await engine.dispose()

    asyncio.run(go())


@pytest.fixture
def db(database_url: str) -> Iterator[Engine]:
    """A synchronous engine on the same database, for looking at rows directly."""
    url = database_url.replace("+aiosqlite", "")
    engine = create_engine(url)
    yield engine
    engine.dispose()


def base_config(database_url: str, **sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {
        "server": {"public_url": PUBLIC_URL},
        "provider": {"issuer": ISSUER, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
        "database": {"url": database_url},
        "session": {"secret": SECRET},
        "redirects": {"allowed_hosts": ["app.test"]},
        "logging": {"level": "debug"},
        "access": {"email_domains": ["*"]},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_from_mapping(data, env={})


@pytest.fixture
def make_relay(database_url: str, provider: TestProvider, clock: FakeClock) -> Callable[..., Any]:
    """Start a relay (a TestClient with its lifespan running); use as a context manager."""

    @contextmanager
    def start(peer: str = "198.51.100.7", **sections: dict[str, Any]) -> Iterator[TestClient]:
        config = base_config(database_url, **sections)
        app = create_app(
            config, transport=ProviderTransport(provider), clock=clock, run_pruner_task=False
        )
        with TestClient(
            app, base_url=PUBLIC_URL, follow_redirects=False, client=(peer, 40000)
        ) as client:
            warm_started(client)
            yield client

    return start


def warm_started(client: TestClient, timeout: float = 10) -> None:
    """Until the relay's first warm start has run (store/warm.py): it reads the table in the
    background once the cache is trusted, and a test counting statements or cache misses
    must not count its reads."""
    warmer = client.app.state.warmer  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while warmer is not None and warmer.runs < 1:
        assert time.monotonic() < deadline, "no warm start within 10 s"
        time.sleep(0.01)


def touches_written(client: TestClient) -> None:
    """Write the touches the checks so far have queued (store/touches.py): a running relay
    writes them within a second, in the background, and a test on the fake clock moves
    faster than that."""
    client.portal.call(client.app.state.relay.sessions.touches.flush)  # type: ignore[attr-defined]


def check(client: TestClient, path: str = "/auth") -> httpx2.Response:
    """A forward-auth check, and the touch it may have queued written (a test on the fake
    clock moves on faster than the writer's window)."""
    response = client.get(path)
    touches_written(client)
    return response


@pytest.fixture
def relay(make_relay: Callable[..., Any]) -> Iterator[TestClient]:
    with make_relay() as client:
        yield client


def provider_redirect(provider: TestProvider, authorize_url: str) -> str:
    """Play the browser at the provider: follow /authorize, return the callback URL."""
    parts = urlsplit(authorize_url)
    assert f"{parts.scheme}://{parts.netloc}" == ISSUER
    with TestClient(provider.app, base_url=ISSUER, follow_redirects=False) as browser:
        response = browser.get(parts.path + "?" + parts.query)
    assert response.status_code == 302, response.text
    return response.headers["location"]


def callback_path(callback_url: str) -> str:
    parts = urlsplit(callback_url)
    assert f"{parts.scheme}://{parts.netloc}" == PUBLIC_URL
    return parts.path + "?" + parts.query


def sign_in(client: TestClient, provider: TestProvider, rd: str = "/") -> httpx2.Response:
    """The whole browser path: /login → provider → /callback. Returns the /callback response."""
    start = client.get("/login", params={"rd": rd})
    assert start.status_code == 302, start.text
    return client.get(callback_path(provider_redirect(provider, start.headers["location"])))


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """Logging configured at debug into a string, as the relay's CLI configures it."""
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    yield stream
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = []


def log_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@contextmanager
def count_statements(target: Any, prefix: str) -> Iterator[list[str]]:
    """Record every SQL statement starting with ``prefix`` that ``target`` sends: an engine,
    or a relay's Database (its engine and, on PostgreSQL, its hot statements)."""
    seen: list[str] = []

    def observe(statement: str) -> None:
        if statement.lstrip().upper().startswith(prefix):
            seen.append(statement)

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        observe(statement)

    hot = getattr(target, "hot", None)
    engine = target.engine.sync_engine if isinstance(target, Database) else target
    event.listen(engine, "before_cursor_execute", record)
    if hot is not None:
        hot.observers.append(observe)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)
        if hot is not None:
            hot.observers.remove(observe)
