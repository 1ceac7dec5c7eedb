"""Operating a replica: a busy port is one line, probes and metrics on an internal port, the
drain before a stop, and the gauges and cache counters a scraper reads."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx2
from sqlalchemy import insert

from relay.metrics import Metrics
from relay.sampler import run_sampler
from relay.store.database import Database, make_engine, migrate
from relay.store.models import sessions
from tests.process import RELAY, RelayProcess, free_port
from tests.test_serve import write_config


def test_a_busy_port_is_one_line_naming_the_key(tmp_path: Path) -> None:
    """If server.port is taken, serve stops before starting anything, with one line."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", port)
        result = subprocess.run(
            [RELAY, "serve", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"relay: cannot listen on 127.0.0.1:{port} (server.port): Address already in use; "
        "is another process using it?"
    ]
    assert "relay.started" not in result.stdout


def test_internal_port_serves_probes_and_metrics_only(tmp_path: Path) -> None:
    """With internal_port, /metrics moves there (open to whoever reaches the port), the
    public port no longer serves it, and the internal port serves nothing but the probes."""
    port, internal = free_port(), free_port()
    config = write_config(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", port)
    config.write_text(
        config.read_text().replace("[server]\n", f"[server]\ninternal_port = {internal}\n")
    )
    with RelayProcess(config):
        public, inside = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{internal}"
        assert httpx2.get(public + "/metrics").status_code == 404
        assert httpx2.get(public + "/healthz").status_code == 200
        assert httpx2.get(public + "/auth").status_code == 401
        scrape = httpx2.get(inside + "/metrics")
        assert scrape.status_code == 200
        for name in (
            "relay_session_cache_hits_total",
            "relay_session_cache_misses_total",
            "relay_session_cache_entries",
            "relay_session_cache_trusted 1.0",
            "relay_provider_ready 0.0",  # nobody listens at the configured issuer
            'relay_request_duration_seconds_count{route="auth",status="401"} 1.0',
        ):
            assert name in scrape.text, name
        assert httpx2.get(inside + "/readyz").status_code == 200
        assert httpx2.get(inside + "/auth").status_code == 404
        assert httpx2.get(inside + "/login").status_code == 404


def test_sigterm_drains_before_stopping(tmp_path: Path) -> None:
    """After SIGTERM, for shutdown_delay, /readyz says 503 shutting_down while requests are
    still answered; then the process stops."""
    port = free_port()
    config = write_config(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", port)
    config.write_text(config.read_text().replace("[server]\n", "[server]\nshutdown_delay = 3\n"))
    relay = RelayProcess(config)
    relay.start()
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx2.Client(base_url=base) as client:
            assert client.get("/readyz").status_code == 200
            assert relay.proc is not None
            signalled = time.monotonic()
            relay.proc.send_signal(signal.SIGTERM)
            deadline = signalled + 2
            while (ready := client.get("/readyz")).status_code == 200:
                assert time.monotonic() < deadline, "readyz never said shutting_down"
            assert ready.status_code == 503 and ready.json()["status"] == "shutting_down"
            assert ready.headers["connection"] == "close"  # proxies drop the connection
            assert client.get("/auth").status_code == 401  # still answering
            assert time.monotonic() - signalled < 2.5
    finally:
        code = relay.stop()
    assert code == -signal.SIGTERM
    names = [e["event"] for e in relay.events()]
    assert names.index("relay.draining") < names.index("relay.stopped")


def test_sessions_gauge_is_sampled(tmp_path: Path) -> None:
    """relay_sessions reports the table by state without a count per request."""
    port = free_port()
    config = write_config(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", port)
    with RelayProcess(config):
        deadline = time.monotonic() + 10
        text = ""
        while 'relay_sessions{state="active"}' not in text:
            assert time.monotonic() < deadline
            text = httpx2.get(f"http://127.0.0.1:{port}/metrics").text
        assert 'relay_sessions{state="active"} 0.0' in text
        assert 'relay_sessions{state="pending"} 0.0' in text


def test_no_context_leaks_between_requests(tmp_path: Path) -> None:
    """On one keep-alive connection to a real server, a refusal's reason does not reach the
    next request's access line: each request starts with a clean log context."""
    port = free_port()
    config = write_config(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", port)
    relay = RelayProcess(config)
    relay.start()
    try:
        with httpx2.Client(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(3):
                assert client.get("/auth").status_code == 401
                assert client.get("/healthz").status_code == 200
    finally:
        relay.stop()
    access = [e for e in relay.events() if e["event"] == "http.request"]
    assert [e["path"] for e in access] == ["/auth", "/healthz"] * 3
    assert all(e["reason"] == "session.missing" for e in access if e["path"] == "/auth")
    assert not [e for e in access if e["path"] == "/healthz" and "reason" in e]
    assert len({e["request_id"] for e in access}) == 6


def test_the_sampler_stops_between_samples(tmp_path: Path) -> None:
    """Asked to stop, the sampler finishes the sample it is taking and returns by itself: it
    is never cancelled with a connection half checked out (which leaks the connection)."""

    async def scenario() -> asyncio.Task[None]:
        engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", pool_size=1)
        await migrate(engine)
        async with engine.begin() as conn:
            await conn.execute(
                insert(sessions).values(
                    id_hash="a" * 64,
                    status="active",
                    created_at=0,
                    last_accessed_at=0,
                    expires_at=4_000_000_000,
                )
            )
        db, metrics, stop = Database(engine, 2), Metrics(), asyncio.Event()
        task = asyncio.create_task(run_sampler(db, metrics, time.time, stop, interval=3600))
        active = metrics.sessions.labels(state="active")
        async with asyncio.timeout(10):
            while active._value.get() != 1:  # noqa: ASYNC110 (the gauge has no event to wait on)
                await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(asyncio.shield(task), 5)
        await db.dispose()
        return task

    task = asyncio.run(scenario())
    assert task.done() and not task.cancelled() and task.exception() is None
