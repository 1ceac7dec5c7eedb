"""The pruner: expired rows go, in bounded batches; live rows stay; one pruner per database."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, insert, select
from starlette.testclient import TestClient

from relay.app import create_app
from relay.crypto import hash_id, new_id
from relay.metrics import Metrics
from relay.pruner import run_pruner
from relay.store.database import Database, make_engine
from relay.store.models import sessions
from relay.store.prune import ADVISORY_LOCK_KEY, PruneResult, prune
from tests.conftest import base_config, count_statements, postgres_database, run_migrations
from tests.provider import ProviderTransport, TestProvider

NOW = 1_800_000_000


def add_rows(db: Engine, expires: list[int]) -> list[str]:
    ids = [hash_id(new_id()) for _ in expires]
    with db.begin() as conn:
        conn.execute(
            insert(sessions),
            [
                {
                    "id_hash": id_hash,
                    "status": "active" if i % 2 else "pending",
                    "created_at": NOW - 100,
                    "last_accessed_at": NOW - 100,
                    "expires_at": expires_at,
                }
                for i, (id_hash, expires_at) in enumerate(zip(ids, expires, strict=True))
            ],
        )
    return ids


def remaining(db: Engine) -> set[str]:
    with db.connect() as conn:
        return set(conn.execute(select(sessions.c.id_hash)).scalars())


def run_prune(url: str, batch_size: int) -> tuple[PruneResult, int]:
    async def go() -> tuple[PruneResult, int]:
        db = Database(make_engine(url), timeout=2)
        try:
            with count_statements(db.engine.sync_engine, "DELETE FROM SESSIONS") as deletes:
                result = await prune(db, NOW, batch_size)
            return result, len(deletes)
        finally:
            await db.dispose()

    return asyncio.run(go())


def test_prune_removes_expired_rows_only_in_batches(database_url: str, db: Engine) -> None:
    """23 expired rows with a batch size of 5 go in 5 DELETEs; the 4 live ones stay."""
    expired = add_rows(db, [NOW - 1000 + i for i in range(22)] + [NOW])  # expires_at == now too
    live = add_rows(db, [NOW + 1, NOW + 60, NOW + 86400, NOW + 10**6])
    result, deletes = run_prune(database_url, batch_size=5)
    assert result.removed == len(expired) == 23
    assert deletes == result.batches == 5
    assert remaining(db) == set(live)


def test_prune_with_nothing_expired(database_url: str, db: Engine) -> None:
    """A pass over a table with nothing expired removes nothing, in one statement."""
    live = add_rows(db, [NOW + 10, NOW + 20])
    result, deletes = run_prune(database_url, batch_size=100)
    assert (result.removed, deletes) == (0, 1)
    assert remaining(db) == set(live)


@pytest.mark.postgres
def test_prune_skips_while_another_process_holds_the_lock() -> None:
    """On PostgreSQL, a pass while another relay prunes (holds the advisory lock) does nothing."""
    with postgres_database() as url:
        run_migrations(url)
        sync_url = url.replace("postgresql+psycopg://", "postgresql://")
        db = create_engine(url)
        try:
            add_rows(db, [NOW - 10, NOW - 20])
            with psycopg.connect(sync_url, autocommit=True) as other:
                assert other.execute(
                    "SELECT pg_try_advisory_lock(%s)", (ADVISORY_LOCK_KEY,)
                ).fetchone() == (True,)
                result, deletes = run_prune(url, batch_size=10)
                assert result.skipped and result.removed == 0 and deletes == 0
                assert len(remaining(db)) == 2
            result, _ = run_prune(url, batch_size=10)  # lock released with that connection
            assert result.removed == 2
        finally:
            db.dispose()


def test_background_pruner_runs_passes(database_url: str, db: Engine) -> None:
    """The loop prunes at once and again every interval, and stops when cancelled."""
    add_rows(db, [NOW - 1, NOW - 2, NOW + 500])
    passes: list[PruneResult] = []

    async def go() -> None:
        database = Database(make_engine(database_url), timeout=2)
        done = asyncio.Event()

        def on_pass(result: PruneResult) -> None:
            passes.append(result)
            if len(passes) == 2:
                done.set()

        task = asyncio.create_task(
            run_pruner(
                database,
                interval=1,
                batch_size=100,
                clock=lambda: NOW + 1000 * len(passes),
                metrics=Metrics(),
                on_pass=on_pass,
            )
        )
        try:
            await asyncio.wait_for(done.wait(), timeout=10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await database.dispose()

    asyncio.run(go())
    assert [p.removed for p in passes] == [2, 1]
    assert remaining(db) == set()


def test_lifespan_starts_and_stops_the_pruner(
    database_url: str, provider: TestProvider, clock: Any
) -> None:
    """The app's lifespan owns the pruner task: running while serving, done after."""
    app = create_app(base_config(database_url), transport=ProviderTransport(provider), clock=clock)
    with TestClient(app):
        task: Any = app.state.pruner
        assert task is not None and not task.done()
    assert task.done()


def test_relay_prune_command(tmp_path: Path) -> None:
    """`relay prune` runs one pass and prints how many rows it removed."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}"
    run_migrations(url)
    db = create_engine(url.replace("+aiosqlite", ""))
    add_rows(db, [100, 200, 300, 2**40])
    db.dispose()
    config = tmp_path / "relay.toml"
    config.write_text(
        f"""
[server]
public_url = "https://relay.test"
[provider]
issuer = "https://idp.test"
client_id = "c"
client_secret = "s"
[database]
url = "{url}"
[session]
secret = "{"x" * 40}"
[access]
email_domains = ["*"]
"""
    )
    result = subprocess.run(
        [sys.executable, "-m", "relay.cli", "prune", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.strip() == "removed 3 expired rows"
