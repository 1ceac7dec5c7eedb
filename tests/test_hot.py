"""The uncached check's two statements on psycopg directly (store/hot.py): the same answers
as their SQLAlchemy forms in store/sessions.py, prepared on the server unless a transaction
pooler is in between, and their failures translated like every other database error."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from sqlalchemy import create_engine, insert

from relay.errors import DatabaseUnavailable
from relay.store.database import Database, make_engine
from relay.store.hot import HotStatements
from relay.store.models import sessions
from relay.store.sessions import _LOOKUP, LOOKUP_SQL
from tests.conftest import postgres_database, run_migrations

pytestmark = pytest.mark.postgres

NOW = int(time.time())


def rows(url: str) -> None:
    """Sessions of every kind a lookup must tell apart."""
    base: dict[str, Any] = {
        "subject": "alice",
        "claims": json.dumps({"sub": "alice", "groups": ["a", "b"]}),
        "created_at": NOW - 100,
        "last_accessed_at": NOW - 90,
        "expires_at": NOW + 1000,
    }
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            insert(sessions),
            [
                {**base, "id_hash": "active", "status": "active"},
                {
                    **base,
                    "id_hash": "refreshing",
                    "status": "active",
                    "refresh_token": "x",
                    "access_token": "sealed",
                    "access_expires_at": NOW + 60,
                },
                {**base, "id_hash": "expired", "status": "active", "expires_at": NOW - 1},
                {**base, "id_hash": "pending", "status": "pending"},
            ],
        )
    engine.dispose()


def test_the_hot_statements_answer_as_their_sqlalchemy_forms() -> None:
    """Every kind of row: the same lookup answer."""
    with postgres_database() as url:
        run_migrations(url)
        rows(url)

        async def go() -> None:
            db = Database(make_engine(url), 2)
            hot = HotStatements(url, timeout=2, size=2, pooled=False)
            await hot.open()
            try:
                for key in ("active", "refreshing", "expired", "pending", "missing"):
                    async with db.autocommit() as conn:
                        expected = (await conn.execute(_LOOKUP, {"key": key})).first()
                    got = await hot.fetch_one(LOOKUP_SQL, (key,))
                    assert (None if expected is None else tuple(expected)) == got, key
            finally:
                await hot.close()
                await db.dispose()

        asyncio.run(go())


@pytest.mark.parametrize("pooled", [False, True])
def test_prepared_on_the_server_unless_pooled(pooled: bool) -> None:
    """The lookup runs as a server-side prepared statement (one round trip, no parse or plan
    per check); behind a transaction pooler nothing is prepared, as prepared statements do
    not survive from one transaction to the next there."""
    with postgres_database() as url:
        run_migrations(url)

        async def go() -> int:
            hot = HotStatements(url, timeout=2, size=1, pooled=pooled)
            await hot.open()
            try:
                for _ in range(3):
                    await hot.fetch_one(LOOKUP_SQL, ("nobody",))
                found = await hot.fetch_one(
                    "SELECT count(*) FROM pg_prepared_statements WHERE statement = %s",
                    (LOOKUP_SQL.replace("%s", "$1"),),
                )
                assert found is not None
                return int(found[0])
            finally:
                await hot.close()

        assert asyncio.run(go()) == (0 if pooled else 1)


def test_a_refused_connection_is_a_database_error() -> None:
    """No server: a DatabaseUnavailable within the bound, not the driver's exception."""

    async def go() -> None:
        hot = HotStatements(
            "postgresql+psycopg://relay@127.0.0.1:9/relay", timeout=1, size=1, pooled=False
        )
        await hot.open()
        try:
            started = time.monotonic()
            with pytest.raises(DatabaseUnavailable):
                await hot.fetch_one(LOOKUP_SQL, ("x",))
            assert time.monotonic() - started < 1 + 1.5
        finally:
            await hot.close()

    asyncio.run(go())
