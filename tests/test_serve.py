"""`relay serve` as an operator runs it: a real uvicorn process, JSON logs, SIGTERM."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx2
import pytest

from relay.store.database import head_revision
from tests.conftest import postgres_database, run_migrations
from tests.process import RELAY, RelayProcess, free_port


def write_config(tmp_path: Path, database_url: str, port: int) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}
public_url = "http://127.0.0.1:{port}"
[provider]
issuer = "http://127.0.0.1:9"
client_id = "relay"
client_secret = "provider-secret"
[database]
url = "{database_url}"
[session]
secret = "0123456789abcdef0123456789abcdef"
cookie_secure = false
[access]
email_domains = ["*"]
"""
    )
    return path


def test_serve_on_fresh_sqlite_migrates_itself_and_stops_gracefully(tmp_path: Path) -> None:
    """The embedded default just works: a new SQLite file is migrated, probes answer, and
    SIGTERM ends the process cleanly with JSON log lines all the way."""
    port = free_port()
    config = write_config(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}", port)
    relay = RelayProcess(config)
    relay.start()
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx2.get(base + "/healthz").status_code == 200
        # No provider listens at the configured issuer: said, but the replica is ready.
        ready = httpx2.get(base + "/readyz")
        assert ready.status_code == 200
        assert ready.json() == {
            "status": "ok",
            "database": "ok",
            "provider": "unavailable: discovery.unreachable",
            "session_cache": "trusted",  # the watcher's first poll came before serving
        }
        assert httpx2.get(base + "/auth").status_code == 401
    finally:
        code = relay.stop()
    # uvicorn shuts down gracefully, then re-raises the signal it caught, so a supervisor sees
    # the process end by SIGTERM as it asked; "relay.stopped" below shows the shutdown ran.
    assert code == -signal.SIGTERM
    events = relay.events()  # every line parses as a JSON object
    names = [e["event"] for e in events]
    assert "database.migrated" in names
    assert "provider.unavailable" in names  # the relay started anyway
    assert names.index("relay.started") < names.index("relay.stopped")
    assert not [n for n in names if n.startswith("setup plugin")]  # alembic's chatter is off
    access = [e for e in events if e["event"] == "http.request"]
    assert [a["path"] for a in access] == ["/healthz", "/readyz", "/auth"]
    assert all(a["request_id"] for a in access)
    assert (tmp_path / "fresh.db").exists()


@pytest.mark.postgres
def test_serve_refuses_a_postgres_schema_that_is_behind(tmp_path: Path) -> None:
    """On PostgreSQL, serve does not migrate: it stops with one line saying what to run."""
    with postgres_database() as url:
        config = write_config(tmp_path, url, free_port())
        result = subprocess.run(
            [RELAY, "serve", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [
            f"relay: database schema is at nothing, this relay needs {head_revision()}: "
            "run `relay migrate --config PATH` first"
        ]
        migrated = subprocess.run(
            [RELAY, "migrate", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert migrated.stdout.strip() == f"schema: empty -> {head_revision()}"
        run_migrations(url)  # idempotent: already at head
