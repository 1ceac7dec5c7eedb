"""Migrations keep every session: a schema upgrade under live data loses nothing."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from starlette.testclient import TestClient

from relay.app import create_app
from relay.crypto import hash_id, new_id
from relay.store.database import head_revision, make_engine, migrate
from tests.conftest import PUBLIC_URL, base_config, postgres_database
from tests.provider import ProviderTransport, TestProvider


def upgrade(url: str, revision: str) -> tuple[str | None, str | None]:
    async def go() -> tuple[str | None, str | None]:
        engine = make_engine(url)
        try:
            return await migrate(engine, revision)
        finally:
            await engine.dispose()

    return asyncio.run(go())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_database(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    else:
        with postgres_database() as url:
            yield url


def test_sessions_survive_every_upgrade(
    empty_database: str, provider: TestProvider, clock: Any
) -> None:
    """A session written under the first schema still signs its user in after the upgrade to
    head; the upgrade is idempotent."""
    url = empty_database
    assert upgrade(url, "0001") == (None, "0001")
    cookie = new_id()
    now = int(clock())
    db = create_engine(url.replace("+aiosqlite", ""))
    with db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO sessions (id_hash, status, subject, claims, created_at,"
                " last_accessed_at, expires_at) VALUES (:h, 'active', 'old-user', :c, :n, :n, :e)"
            ),
            {"h": hash_id(cookie), "c": json.dumps({"sub": "old-user"}), "n": now, "e": now + 600},
        )
    db.dispose()
    assert upgrade(url, "head") == ("0001", head_revision())
    assert upgrade(url, "head") == (head_revision(), head_revision())

    app = create_app(base_config(url), transport=ProviderTransport(provider), clock=clock)
    with TestClient(app, base_url=PUBLIC_URL) as relay:
        relay.cookies.set("__Host-relay_session", cookie, domain="relay.test")
        response = relay.get("/auth")
    assert response.status_code == 200
    assert response.headers["x-auth-request-subject"] == "old-user"
