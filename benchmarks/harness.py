"""What the benchmarks share: a PostgreSQL database per run, fast seeding, configs, the relay
and a bare Starlette app as real uvicorn processes, wrk with a cookie-spreading Lua script,
/proc readings (CPU time, RSS), interleaved rounds with medians and ranges, py-spy profiles.

Everything listens on 127.0.0.1; every process started here is stopped here.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from relay.crypto import hash_id, new_id
from relay.store.database import make_engine, migrate

PG_ADMIN = os.environ.get("RELAY_TEST_PG", "postgresql://root@127.0.0.1:5432/postgres")
BIN = Path(sys.executable).parent
BENCH_DIR = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
WRK_THREADS = 2
WRK_CONNECTIONS = 32
SECRET = "b" * 40
COOKIE_NAME = "relay_session"
CLAIMS = json.dumps(
    {
        "sub": "user-1",
        "email": "alice@example.com",
        "preferred_username": "alice",
        "groups": ["admins", "staff"],
    },
    separators=(",", ":"),
)

BARE_APP = """
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

async def auth(request):
    return PlainTextResponse("", headers={
        "x-auth-request-subject": "user-1", "x-auth-request-user": "alice",
        "x-auth-request-email": "alice@example.com", "x-auth-request-groups": "admins,staff"})

app = Starlette(routes=[Route("/auth", auth)])
"""

# Every wrk thread reads the cookie file; thread k starts k/threads of the way through it, at
# the offset given as the script's argument, and steps one cookie per request. done() prints
# one JSON line that wrk() parses.
WRK_LUA = """
local cookies = {}
for line in io.lines("%(path)s") do cookies[#cookies + 1] = line end
local n = #cookies
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
local i = 0
function init(args)
  i = tonumber(args[1] or "0") + (tid or 0) * math.floor(n / %(threads)d)
end
function request()
  i = i + 1
  return wrk.format(nil, nil, {["%(header)s"] = "%(prefix)s" .. cookies[(i %% n) + 1]})
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests": %%d, "duration_us": %%d, "p50_us": %%.1f, "p90_us": %%.1f, ' ..
    '"p99_us": %%.1f, "max_us": %%.1f, "errors": {"connect": %%d, "read": %%d, ' ..
    '"write": %%d, "status": %%d, "timeout": %%d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


# ---------------------------------------------------------------- the database


def psycopg_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@contextmanager
def database() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL, migrated to head, dropped afterwards."""
    name = "relay_bench_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name
    try:

        async def schema() -> None:
            engine = make_engine(url)
            try:
                await migrate(engine)
            finally:
                await engine.dispose()

        asyncio.run(schema())
        yield url
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(
    url: str, rows: int, *, known: int = 0, expired: bool = False, spread: int = 0
) -> list[str]:
    """COPY ``rows`` active sessions into the table (all expired a day ago if ``expired``);
    return the cookies of the first ``known`` of them. The others get random hashes. With
    ``spread``, their last accesses are spread over that many seconds before now, as a real
    user base's are (otherwise every session's touch comes due in the same second)."""
    now = int(time.time())
    if expired:
        created, last, expires = now - 3 * 86400, now - 2 * 86400, now - 86400
    else:
        created, last, expires = now, now, now + 86400
    cookies = [new_id() for _ in range(known)]
    tail = f"\tactive\tuser-%d\t{CLAIMS}\t{created}\t%d\t{expires}\n"
    with (
        psycopg.connect(psycopg_url(url)) as conn,
        conn.cursor() as cur,
        cur.copy(
            "COPY sessions (id_hash, status, subject, claims, created_at, last_accessed_at,"
            " expires_at) FROM STDIN"
        ) as copy,
    ):
        buffer = io.StringIO()
        for i in range(rows):
            key = hash_id(cookies[i]) if i < known else os.urandom(32).hex()
            buffer.write(key + tail % (i, last - (i % spread if spread else 0)))
            if i % 50_000 == 49_999:
                copy.write(buffer.getvalue())
                buffer = io.StringIO()
        copy.write(buffer.getvalue())
    with psycopg.connect(psycopg_url(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE sessions")
    return cookies


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Poll ``condition`` until it holds; fail loudly, naming ``what``, past ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def wait_for_backends_gone(url: str) -> None:
    """Until no other connection is open on the database: a backend flushes its statistics
    as it exits, so the counters read after this include everything it did."""

    def gone() -> bool:
        with psycopg.connect(psycopg_url(url), autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        return row is not None and row[0] == 0

    wait_until(gone, "the relay's database connections to close")


def table_stats(url: str) -> dict[str, int]:
    """Cumulative row counters of the sessions table and commits of the database, read on a
    new connection (so no stats snapshot is reused)."""
    with psycopg.connect(psycopg_url(url), autocommit=True) as conn:
        tup = conn.execute(
            "SELECT n_tup_ins, n_tup_upd, n_tup_del, n_live_tup FROM pg_stat_user_tables"
            " WHERE relname = 'sessions'"
        ).fetchone()
        xact = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        count = conn.execute("SELECT count(*) FROM sessions").fetchone()
    assert tup is not None
    assert xact is not None
    assert count is not None
    return {
        "ins": tup[0],
        "upd": tup[1],
        "del": tup[2],
        "live": tup[3],
        "rows": count[0],
        "xact_commit": xact[0],
    }


# ---------------------------------------------------------------- configs and processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def write_config(directory: Path, url: str, port: int, **sections: dict[str, Any]) -> Path:
    """A relay config with its defaults, except what ``sections`` name (and what a local
    benchmark needs: a port, an http public URL, a secret, a provider address)."""
    data: dict[str, dict[str, Any]] = {
        "server": {"port": port, "public_url": f"http://127.0.0.1:{port}"},
        "provider": {"issuer": "http://127.0.0.1:9", "client_id": "bench"},
        "database": {"url": url},
        "session": {"secret": SECRET, "cookie_secure": False},
        "access": {"email_domains": ["*"]},
    }
    data["provider"]["client_secret"] = "bench"
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    text = "".join(
        f"[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in values.items())
        for name, values in data.items()
    )
    path = directory / f"relay-{port}.toml"
    path.write_text(text)
    return path


@dataclass
class Server:
    """A server process whose stdout and stderr go to a log file."""

    name: str
    argv: list[str]
    port: int
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> Server:
        began = self.log.stat().st_size if self.log.exists() else 0  # this run's lines follow
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                this_run = self.log.read_bytes()[began:].decode(errors="replace")
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}: {this_run[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not listen on {self.port}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """utime + stime from /proc/<pid>/stat."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_kib(self) -> int:
        fields = Path(f"/proc/{self.pid}/statm").read_text().split()
        return int(fields[1]) * PAGE_KIB

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def wait_for_line(self, marker: str, timeout: float = 30) -> None:
        """Until the server's log has a line containing ``marker``."""
        wait_until(lambda: marker in self.log.read_text(errors="replace"), marker, timeout)

    def problems(self) -> list[str]:
        """Log lines at warning level or above, 5xx access lines, tracebacks."""
        bad = []
        for line in self.log.read_text(errors="replace").splitlines():
            # The auth benchmarks run without a provider: its discovery retries are expected.
            if "provider.unavailable" not in line and re.search(
                r'"level":\s*"(warning|error|critical)"|"status":\s*5\d\d|Traceback', line
            ):
                bad.append(line)
        return bad


def relay_server(config: Path, port: int, directory: Path, name: str = "relay") -> Server:
    return Server(
        name,
        [str(BIN / "relay"), "serve", "--config", str(config)],
        port,
        directory / f"{name}.log",
    ).start()


def bare_server(directory: Path) -> Server:
    """The bare Starlette endpoint under the relay's uvicorn settings: uvloop, httptools, one
    worker, no access log."""
    (directory / "bare_app.py").write_text(BARE_APP)
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(port)]
    argv += ["--loop", "uvloop", "--http", "httptools", "--workers", "1", "--no-access-log"]
    argv += ["--log-level", "warning", "--app-dir", str(directory)]
    return Server("bare", argv, port, directory / "bare.log").start()


@contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        yield Path(tmp)


# ---------------------------------------------------------------- load and measurement


def cookie_script(
    directory: Path, cookies: list[str], name: str = "cookies", cookie_name: str = COOKIE_NAME
) -> Path:
    return _script(directory, cookies, name, "Cookie", cookie_name + "=")


def bearer_script(directory: Path, tokens: list[str], name: str = "tokens") -> Path:
    """wrk sending ``Authorization: Bearer <token>``, one token of the list per request."""
    return _script(directory, tokens, name, "Authorization", "Bearer ")


def _script(directory: Path, values: list[str], name: str, header: str, prefix: str) -> Path:
    (directory / f"{name}.txt").write_text("\n".join(values) + "\n")
    script = directory / f"{name}.lua"
    script.write_text(
        WRK_LUA
        % {
            "path": directory / f"{name}.txt",
            "threads": WRK_THREADS,
            "header": header,
            "prefix": prefix,
        }
    )
    return script


def wrk(
    server: Server,
    script: Path,
    seconds: float,
    *,
    offset: int = 0,
    connections: int = WRK_CONNECTIONS,
    path: str = "/auth",
) -> dict[str, Any]:
    """One wrk run against the server; its figures plus the server's CPU time per request."""
    # wrk reads whole units only ("8.0s" is a usage error).
    argv = ["wrk", f"-t{WRK_THREADS}", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    argv += ["-s", str(script), f"http://127.0.0.1:{server.port}{path}", "--", str(offset)]
    metrics_before = cache_metrics(server)
    cpu_before = server.cpu_seconds()
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited {done.returncode}: {(done.stderr or done.stdout)[-500:]}")
    out = done.stdout
    wall = time.monotonic() - started
    cpu = server.cpu_seconds() - cpu_before
    metrics = {k: v - metrics_before[k] for k, v in cache_metrics(server).items()}
    match = re.search(r"^BENCHJSON (.*)$", out, re.MULTILINE)
    assert match, out
    raw = json.loads(match.group(1))
    requests = raw["requests"]
    return {
        "requests": requests,
        "wall_s": round(wall, 3),
        "rps": round(requests / (raw["duration_us"] / 1e6), 1),
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "cpu_us_per_req": round(cpu * 1e6 / max(requests, 1), 1),
        "errors": raw["errors"],
        "error_count": sum(raw["errors"].values()),
        **metrics,
    }


_CACHE_METRICS = {
    "relay_session_cache_hits": "cache_hits",
    "relay_session_cache_misses": "cache_misses",
    "relay_invalidation_listener_connects": "listener_connects",
}


def cache_metrics(server: Server) -> dict[str, float]:
    """The relay's session cache counters from /metrics (table reads = misses; a listener
    reconnect means the cache was flushed and untrusted for a while). Empty for others."""
    if not server.name.startswith("relay"):
        return {}
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    found = {}
    for line in b"".join(chunks).decode(errors="replace").splitlines():
        name, _, value = line.partition(" ")
        for metric, key in _CACHE_METRICS.items():
            if name in (metric, metric + "_total"):
                found[key] = float(value)
    return found


def describe(result: dict[str, Any]) -> str:
    text = (
        f"{result['rps']:9.0f} req/s  p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:7.2f}"
        f" ms  cpu {result['cpu_us_per_req']:6.1f} us/req  errors {result['error_count']}"
    )
    if "cache_misses" in result:
        text += (
            f"  table reads {result['cache_misses']:.0f}"
            f"  listener reconnects {result.get('listener_connects', 0):.0f}"
        )
    return text


def spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


KEYS = ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")


def interleave(
    rounds: int, runs: dict[str, Callable[[], dict[str, Any]]]
) -> dict[str, list[dict[str, Any]]]:
    """Run each callable once per round, in order, ``rounds`` times: a, b, a, b, ..."""
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
    for number in range(rounds):
        for name, run in runs.items():
            result = run()
            results[name].append(result)
            print(f"    round {number + 1} {name:>10}: {describe(result)}", flush=True)
    return results


def compare(relay: list[dict[str, Any]], bare: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians and ranges of both, and relay/bare ratios: of the medians, and per round."""
    out: dict[str, Any] = {
        "relay": {k: spread([r[k] for r in relay]) for k in KEYS},
        "bare": {k: spread([r[k] for r in bare]) for k in KEYS},
        "relay_errors": sum(r["error_count"] for r in relay),
        "bare_errors": sum(r["error_count"] for r in bare),
    }
    out["ratio"] = {
        k: {
            "of_medians": round(out["relay"][k]["median"] / out["bare"][k]["median"], 3),
            "per_round": spread([r[k] / b[k] for r, b in zip(relay, bare, strict=True)]),
        }
        for k in KEYS
    }
    return out


# ---------------------------------------------------------------- sampling and profiles


class RssSampler:
    """Samples a process's RSS every ``interval`` seconds in a thread."""

    def __init__(self, server: Server, interval: float = 1.0) -> None:
        self.server = server
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((round(time.monotonic() - self._start, 1), self.server.rss_kib()))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _frame(raw: str) -> str:
    """'handle (relay/x.py:12)' -> 'handle (relay/x.py)': lines merged for the totals."""
    return re.sub(r":\d+\)$", ")", raw.strip())


def py_spy(pid: int, seconds: int, out: Path, load: Callable[[], Any]) -> dict[str, Any]:
    """Record a raw (collapsed) py-spy profile of ``pid`` while ``load`` runs; summarize it:
    the top frames by own samples (self) and by samples with the frame anywhere on the stack
    (inclusive), as shares of all samples."""
    argv = [str(BIN / "py-spy"), "record", "-f", "raw", "-o", str(out), "--pid", str(pid)]
    argv += ["--duration", str(seconds), "--rate", "200", "--nonblocking"]
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # py-spy says nothing when it has attached; the load runs longer than this margin and
    # the profile is a sample of it, so an attach a little late costs samples, not truth.
    time.sleep(1)
    load()
    _, err = spy.communicate(timeout=seconds + 60)
    if not out.exists():
        return {"error": err.decode(errors="replace")[-500:]}
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        frames = [_frame(f) for f in stack.split(";")]
        total += samples
        own[frames[-1]] += samples
        for name in set(frames):
            inclusive[name] += samples
    if total == 0:
        return {"error": "no samples"}

    def top(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(name, round(100 * c / total, 1)) for name, c in counter.most_common(n)]

    return {
        "samples": total,
        "file": str(out),
        "top_self_pct": top(own, 15),
        "top_inclusive_pct": top(inclusive, 25),
    }
