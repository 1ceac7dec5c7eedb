"""A rolling restart behind nginx drops no request: two `relay serve` replicas on one
PostgreSQL database, nginx balancing GET /auth over both (keepalive connections to them,
`proxy_next_upstream error timeout`, nginx's default for idempotent requests), client threads
asking all along while replica A, then replica B, is stopped by SIGTERM and started again."""

from __future__ import annotations

import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import create_engine, insert

from relay.crypto import hash_id, new_id
from relay.store.models import sessions
from tests.conftest import postgres_database, run_migrations
from tests.e2e.stack import Service, require
from tests.process import RelayProcess, free_port

pytestmark = pytest.mark.e2e

CLIENTS = 3  # threads, each with its own session and keepalive connection to nginx
PAUSE = 0.003  # between one thread's requests: steady traffic, not a flood
STEADY = 200  # answers to wait for with both replicas serving, before and after the restarts


def seed_sessions(database_url: str, count: int) -> list[str]:
    """Active sessions inserted directly; returns their cookie values."""
    now = int(time.time())
    cookies = [new_id() for _ in range(count)]
    engine = create_engine(database_url)
    with engine.begin() as conn:
        for n, cookie in enumerate(cookies):
            claims = {"sub": f"user-{n}", "email": f"user{n}@example.com", "groups": ["staff"]}
            conn.execute(
                insert(sessions).values(
                    id_hash=hash_id(cookie),
                    status="active",
                    subject=f"user-{n}",
                    claims=json.dumps(claims),
                    created_at=now,
                    last_accessed_at=now,
                    expires_at=now + 3600,
                )
            )
    engine.dispose()
    return cookies


def replica_config(workdir: Path, name: str, port: int, database_url: str, public: str) -> Path:
    path = workdir / f"relay-{name}.toml"
    path.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}
public_url = "{public}"
trusted_proxies = ["127.0.0.1/32"]
shutdown_delay = "1s"
shutdown_timeout = "5s"
[provider]
issuer = "http://127.0.0.1:9"
client_id = "relay"
client_secret = "provider-secret"
[database]
url = "{database_url}"
[session]
secret = "rolling-restart-secret-{"r" * 32}"
cookie_secure = false
[access]
email_domains = ["*"]
[logging]
level = "info"
"""
    )
    return path


def nginx_balancer(workdir: Path, port: int, replicas: list[int]) -> Service:
    """nginx with an upstream of both replicas. fail_timeout is short so a replica that was
    refusing connections while it restarted is tried again soon after it is back."""
    servers = "\n".join(
        f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=1s;" for p in replicas
    )
    temp = workdir / "nginx-temp"
    temp.mkdir(exist_ok=True)
    (workdir / "nginx.conf").write_text(
        f"""
daemon off;
worker_processes 1;
user root;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log info;
events {{ worker_connections 256; }}
http {{
    log_format upstreams '$msec $status "$upstream_addr" "$upstream_status" $request_time';
    access_log {workdir}/nginx-access.log upstreams;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    upstream relays {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location = /auth {{
            proxy_pass http://relays;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_next_upstream error timeout;
            proxy_connect_timeout 2s;
            add_header X-Upstream $upstream_addr always;
        }}
    }}
}}
"""
    )
    return Service("nginx", [require("nginx"), "-c", str(workdir / "nginx.conf")], workdir)


@dataclass
class Answer:
    at: float  # time.monotonic() when the answer arrived
    status: int | None  # None: no HTTP answer (the error says why)
    upstreams: list[str] = field(default_factory=list)  # nginx's tries, the last one answered
    error: str = ""


class Clients:
    """Threads asking nginx for GET /auth in a loop, every answer kept."""

    def __init__(self, url: str, cookies: list[str]) -> None:
        self.url = url
        self.cookies = cookies
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(c,)) for c in cookies]

    def _run(self, cookie: str) -> None:
        with httpx2.Client(timeout=10, headers={"Cookie": f"relay_session={cookie}"}) as client:
            while not self._stop.is_set():
                try:
                    response = client.get(self.url)
                    upstreams = response.headers.get("x-upstream", "").split(", ")
                    answer = Answer(time.monotonic(), response.status_code, upstreams)
                except httpx2.HTTPError as exc:
                    answer = Answer(time.monotonic(), None, error=repr(exc))
                with self._lock:
                    self.answers.append(answer)
                time.sleep(PAUSE)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def served_by(self, address: str, since: float, until: float = float("inf")) -> int:
        with self._lock:
            return sum(
                since <= a.at < until and a.upstreams[-1:] == [address] for a in self.answers
            )

    def wait_answers(self, count: int, timeout: float = 10) -> None:
        """Wait until ``count`` more answers have come back (from anyone)."""
        with self._lock:
            wanted = len(self.answers) + count
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if len(self.answers) >= wanted:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {count} answers within {timeout}s")
            time.sleep(0.05)

    def wait_served_by(self, address: str, since: float, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.served_by(address, since) < 20:
            if time.monotonic() > deadline:
                raise AssertionError(f"{address} served nothing within {timeout}s after {since}")
            time.sleep(0.05)


def assert_drained_and_stopped(replica: RelayProcess, code: int, log: Path) -> None:
    log.write_text("\n".join(replica.lines) + "\n")  # kept for a look when this fails
    assert code == -signal.SIGTERM, replica.lines[-20:]
    events = replica.events()
    names = [e["event"] for e in events]
    assert "relay.draining" in names and "relay.stopped" in names, names
    assert names.index("relay.draining") < names.index("relay.stopped")
    assert not [e for e in events if e["level"] in ("error", "critical")]


def test_rolling_restart_behind_nginx_drops_no_request(tmp_path: Path) -> None:
    ports = {"a": free_port(), "b": free_port(), "nginx": free_port()}
    address = {name: f"127.0.0.1:{ports[name]}" for name in ("a", "b")}
    public = f"http://127.0.0.1:{ports['nginx']}"
    replicas: dict[str, RelayProcess] = {}
    nginx = nginx_balancer(tmp_path, ports["nginx"], [ports["a"], ports["b"]])
    clients: Clients | None = None
    with postgres_database() as url:
        run_migrations(url)
        cookies = seed_sessions(url, CLIENTS)
        try:
            for name in ("a", "b"):
                config = replica_config(tmp_path, name, ports[name], url, public)
                replicas[name] = RelayProcess(config)
            with ThreadPoolExecutor() as pool:  # both start at once: a start takes seconds
                list(pool.map(RelayProcess.start, replicas.values()))
            nginx.start(ports["nginx"])
            clients = Clients(public + "/auth", cookies)
            began = time.monotonic()
            clients.start()
            for name in ("a", "b"):
                clients.wait_served_by(address[name], since=began)
            clients.wait_answers(STEADY)  # steady traffic on both before (and after)

            timings: dict[str, float] = {}
            draining: dict[str, int] = {}
            first_restart = time.monotonic()
            for name in ("a", "b"):
                # SIGTERM, wait for the exit, then a new process on the same port.
                old = replicas[name]
                sigterm = time.monotonic()
                code = old.stop()
                exited = time.monotonic()
                replicas[name] = RelayProcess(old.config)
                replicas[name].start()
                back = time.monotonic()
                assert_drained_and_stopped(old, code, tmp_path / f"relay-{name}-1.log")
                draining[name] = clients.served_by(address[name], sigterm, exited)
                clients.wait_served_by(address[name], since=back)
                timings[f"{name}_exit_s"] = exited - sigterm
                timings[f"{name}_start_s"] = back - exited
                timings[f"{name}_serving_again_s"] = time.monotonic() - back
            both_back = back
            for name in ("a", "b"):
                clients.wait_served_by(address[name], since=both_back)
            clients.wait_answers(STEADY)  # steady traffic on both before (and after)
            clients.stop()
            elapsed = time.monotonic() - began
        finally:
            if clients is not None:
                clients.stop()
            nginx.stop()
            codes = {n: r.stop() for n, r in replicas.items() if r.proc is not None}

    answers = clients.answers
    failed = [a for a in answers if a.status != 200]
    retried = [a for a in answers if len(a.upstreams) > 1]
    before = {n: clients.served_by(address[n], began, first_restart) for n in address}
    after = {n: clients.served_by(address[n], both_back) for n in address}
    print(
        f"\nrolling restart: {len(answers)} requests in {elapsed:.1f}s, {len(failed)} failed, "
        f"{len(retried)} retried by nginx on the other replica; served before the restarts "
        f"{before}, by each while it drained {draining}, after both {after}; "
        + ", ".join(f"{k}={v:.2f}" for k, v in timings.items())
    )
    assert not failed, (
        f"{len(failed)} of {len(answers)} failed, first: {failed[:5]}\n"
        f"nginx error log:\n{(tmp_path / 'nginx-error.log').read_text()[-3000:]}"
    )
    assert all(before.values()) and all(after.values()), (before, after)
    assert all(draining.values()), draining  # shutdown_delay: still serving after SIGTERM
    for name, replica in replicas.items():  # the new processes stop cleanly too
        assert_drained_and_stopped(replica, codes[name], tmp_path / f"relay-{name}-2.log")
