"""Database trouble is a 503 through the normal error path: translated in one place
(store/database.py), bounded in time, one log line with a reason, never a traceback, never
SQL parameters, never a 401 or a 500."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from relay.app import create_app
from relay.errors import DatabaseUnavailable
from relay.store.database import Database, ensure_schema, make_engine
from tests.conftest import (
    PG_ADMIN,
    PUBLIC_URL,
    base_config,
    log_lines,
    postgres_database,
    run_migrations,
    sign_in,
)
from tests.provider import ProviderTransport, TestProvider


@pytest.mark.postgres
def test_sql_parameters_never_reach_the_error() -> None:
    """A failing statement's parameters appear neither in the relay error nor in the driver
    error it came from (the engine hides parameters)."""
    with postgres_database() as url:
        run_migrations(url)

        async def go() -> DatabaseUnavailable:
            db = Database(make_engine(url), timeout=2)
            try:
                async with db.autocommit() as conn:
                    await conn.exec_driver_sql("DROP TABLE sessions")
                async with db.autocommit() as conn:
                    await conn.exec_driver_sql(
                        "SELECT * FROM sessions WHERE id_hash = %(h)s", {"h": "secret-param-42"}
                    )
            except DatabaseUnavailable as exc:
                return exc
            finally:
                await db.dispose()
            raise AssertionError("no error")

        exc = asyncio.run(go())
        assert exc.status == 503 and exc.reason == "database.unavailable"
        assert "UndefinedTable" in exc.detail
        for text in (str(exc), exc.detail, str(exc.__cause__)):
            assert "secret-param-42" not in text


@pytest.mark.postgres
def test_a_statement_past_the_bound_is_a_timeout() -> None:
    """A statement that runs longer than [database] timeout is cancelled by the server and
    reported as database.timeout, well before a 30-second wait."""
    with postgres_database() as url:

        async def go() -> tuple[DatabaseUnavailable, float]:
            db = Database(make_engine(url, timeout=1), timeout=1)
            started = time.monotonic()
            try:
                async with db.autocommit() as conn:
                    await conn.exec_driver_sql("SELECT pg_sleep(10)")
            except DatabaseUnavailable as exc:
                return exc, time.monotonic() - started
            finally:
                await db.dispose()
            raise AssertionError("no error")

        exc, took = asyncio.run(go())
        assert exc.reason == "database.timeout"
        assert took < 2.5


@pytest.mark.postgres
def test_database_gone_is_503_with_one_reasoned_line(
    log_stream: io.StringIO, provider: TestProvider, clock: Any
) -> None:
    """With the database dropped, /auth for an uncached session, /login and /callback answer
    503 (JSON when asked, a page otherwise, request id on both), each with one access line
    naming the reason and no traceback; /healthz still answers."""
    with postgres_database() as url:
        run_migrations(url)
        app = create_app(
            base_config(url, cache={"max_entries": 0}),
            transport=ProviderTransport(provider),
            clock=clock,
            run_pruner_task=False,
        )
        with TestClient(app, base_url=PUBLIC_URL, follow_redirects=False) as relay:
            sign_in(relay, provider)
            assert relay.get("/auth").status_code == 200
            name = url.rsplit("/", 1)[1]
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            log_stream.truncate(0)
            log_stream.seek(0)
            api = relay.get("/auth", headers={"Accept": "application/json"})
            assert api.status_code == 503
            body = api.json()
            assert body["error"] == "database.unavailable"
            assert body["request_id"] == api.headers["x-request-id"]
            page = relay.get("/auth")
            assert page.status_code == 503 and "briefly unavailable" in page.text
            assert page.headers["x-request-id"] in page.text
            assert "www-authenticate" not in page.headers  # not a 401 in disguise
            assert relay.get("/login").status_code == 503
            assert relay.get("/healthz").status_code == 200
    lines = log_lines(log_stream)
    access = [e for e in lines if e["event"] == "http.request" and e["path"] != "/healthz"]
    assert [e["status"] for e in access] == [503, 503, 503]
    assert all(e["reason"] == "database.unavailable" and e["detail"] for e in access)
    assert not [e for e in lines if "exception" in e or "Traceback" in json.dumps(e)]


def test_sqlite_locked_is_503_within_the_bound(
    tmp_path: Path, log_stream: io.StringIO, provider: TestProvider, clock: Any
) -> None:
    """SQLite held by another writer: /login (which writes) waits at most [database] timeout
    and answers 503 instead of hanging or crashing; it works again once the lock goes."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}"
    run_migrations(url)
    app = create_app(
        base_config(url, database={"timeout": 1}),
        transport=ProviderTransport(provider),
        clock=clock,
        run_pruner_task=False,
    )
    with TestClient(app, base_url=PUBLIC_URL, follow_redirects=False) as relay:
        assert relay.get("/login").status_code == 302  # discovery warmed up
        holder = sqlite3.connect(tmp_path / "relay.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            started = time.monotonic()
            response = relay.get("/login")
            took = time.monotonic() - started
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert response.status_code == 503
        assert 0.9 < took < 3.0
        assert relay.get("/login").status_code == 302
    [line] = [
        e for e in log_lines(log_stream) if e["event"] == "http.request" and e["status"] == 503
    ]
    assert line["reason"] == "database.unavailable" and "locked" in line["detail"]


def test_schema_check_on_an_unreachable_database_is_a_database_error() -> None:
    """Checking the schema at startup translates a refused connection like every other path:
    a DatabaseUnavailable naming the reason, not the driver's exception."""
    engine = make_engine("postgresql+psycopg://relay@127.0.0.1:9/relay", timeout=2)

    async def check() -> None:
        try:
            await ensure_schema(engine)
        finally:
            await engine.dispose()

    with pytest.raises(DatabaseUnavailable) as caught:
        asyncio.run(check())
    assert caught.value.reason == "database.unavailable"
