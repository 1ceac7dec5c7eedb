"""`relay serve` as an operator runs it: a real uvicorn process, JSON logs, SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
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
    # ...and said plainly, before it said it listens, that nobody can sign in.
    [unusable] = [e for e in events if e["event"] == "provider.unusable"]
    assert unusable["reason"] == "discovery.unreachable"  # it may be starting too: a warning
    assert unusable["level"] == "warning" and "provider.issuer" in unusable["hint"]
    assert names.index("provider.unusable") < names.index("relay.listening")
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


def answer(sock: socket.socket) -> bytes:
    """What the relay sends before it closes the connection (b"" if it reset it)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


@pytest.fixture
def bounded(tmp_path: Path) -> Iterator[tuple[int, RelayProcess]]:
    """`relay serve` with a 1-second header_timeout (the smallest) and default sizes."""
    port = free_port()
    config = write_config(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}", port)
    config.write_text(config.read_text().replace("[provider]", "header_timeout = 1\n[provider]"))
    with RelayProcess(config) as relay:
        yield port, relay


def test_a_request_head_over_max_header_bytes_gets_431_and_a_closed_connection(
    bounded: tuple[int, RelayProcess],
) -> None:
    """A 100 KiB Cookie header gets 431 and the connection closed; a 16 MiB one is cut off
    within the first megabytes sent (the relay closes, the client's writes fail), never
    read whole and answered; both logged as http.refused; a 60 KiB head is served."""
    port, relay = bounded
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /auth HTTP/1.1\r\nHost: x\r\nCookie: a=" + b"b" * 100_000 + b"\r\n\r\n")
        assert answer(sock).startswith(b"HTTP/1.1 431 ")
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(b"GET /auth HTTP/1.1\r\nHost: x\r\nCookie: a=")
            while sent < 16 * 1024 * 1024:
                sock.sendall(b"b" * 65536)
                sent += 65536
        except (ConnectionResetError, BrokenPipeError):
            pass  # the relay stopped reading and closed
    assert sent < 8 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"GET /auth HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: a="
            + b"b" * 60_000
            + b"\r\n\r\n"
        )
        assert answer(sock).startswith(b"HTTP/1.1 401 ")
    relay.wait_for('"headers_too_large"')
    relay.wait_for('"headers_too_large"')
    refused = [e for e in relay.collect() if e["event"] == "http.refused"]
    assert {e["reason"] for e in refused} == {"headers_too_large"}
    assert all(e["status"] == 431 and e["client"] == "127.0.0.1" for e in refused)


def test_a_head_not_complete_within_header_timeout_gets_408(
    bounded: tuple[int, RelayProcess],
) -> None:
    """A client trickling header lines, or connecting and sending nothing, is answered 408
    and disconnected header_timeout after it connected, however it keeps sending; a
    kept-alive connection's next request gets the same bound from its first byte."""
    port, relay = bounded
    # Before connecting: the relay's clock starts when it accepts, which this must not miss.
    start = time.monotonic()
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as trickle,
        socket.create_connection(("127.0.0.1", port), timeout=10) as silent,
    ):
        trickle.sendall(b"GET /auth HTTP/1.1\r\nHost: x\r\n")
        trickle.settimeout(0.2)
        lines = 0
        while True:  # one header line every 0.2 s, until the relay answers
            try:
                if trickle.recv(1, socket.MSG_PEEK):
                    break
            except TimeoutError:
                assert time.monotonic() - start < 5, "headers still being read after 5 s"
                trickle.sendall(b"X-Slow-%d: y\r\n" % lines)
                lines += 1
        trickle.settimeout(10)
        assert answer(trickle).startswith(b"HTTP/1.1 408 ")
        assert 1.0 <= time.monotonic() - start < 3.0
        assert lines >= 3
        assert answer(silent).startswith(b"HTTP/1.1 408 ")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as kept:
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while not first.endswith(b'{"status":"ok"}'):  # the whole response, head and body
            first += kept.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        kept.sendall(b"GET /healthz HTTP/1.1\r\n")
        start = time.monotonic()
        assert answer(kept).startswith(b"HTTP/1.1 408 ")
        assert 1.0 <= time.monotonic() - start < 3.0
    relay.wait_for('"header_timeout"')
