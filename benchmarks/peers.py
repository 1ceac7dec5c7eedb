"""Benchmark 8: the relay beside its peers in one run, as issue 15's table was measured.

GET /auth with a valid session, 64 sessions round-robin over 32 connections, 10,000 sessions in
each table, one PostgreSQL, interleaved rounds of:

- bare: the Starlette endpoint (harness.BARE_APP);
- node: the Node stack the relay replaces (benchmarks/node: Express 5, express-session with
  ``resave: false, saveUninitialized: false, rolling: true``, connect-pg-simple on a pg.Pool
  of 10, NODE_ENV=production, one process), which writes its row on every check;
- relay: defaults (the session cache holds all 64);
- relay-uncached: ``[cache] max_entries = 8``, so almost every check misses the cache, reads
  the table, and is judged by the endpoint.

Each row gets its ratio to bare and to node, of the medians and per round.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

from benchmarks import harness as h

NODE_DIR = h.BENCH_DIR / "node"
NODE_SECRET = "benchmark-secret"
NODE_COOKIE = "connect.sid"
USER = {
    "sub": "user-1",
    "preferred_username": "alice",
    "email": "alice@example.com",
    "groups": ["admins", "staff"],
}
# connect-pg-simple's table.sql
NODE_TABLE = """
CREATE TABLE "session" (
  "sid" varchar NOT NULL COLLATE "default",
  "sess" json NOT NULL,
  "expire" timestamp(6) NOT NULL
);
ALTER TABLE "session" ADD CONSTRAINT "session_pkey" PRIMARY KEY ("sid");
CREATE INDEX "IDX_session_expire" ON "session" ("expire");
"""
UNCACHED_ENTRIES = 8
BARS = {"uncached_vs_node": 2.0, "uncached_vs_bare": 0.15, "cached_vs_bare": 0.75}


def install_node() -> None:
    """benchmarks/node's packages, from its lock file, when they are not there yet."""
    if (NODE_DIR / "node_modules" / "connect-pg-simple").exists():
        return
    if shutil.which("npm") is None:
        raise RuntimeError("the node peer needs Node.js and npm on PATH")
    print("  installing benchmarks/node (npm ci)", flush=True)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True)


def node_cookie(sid: str) -> str:
    """express-session's cookie value for ``sid``: cookie-signature's ``s:<sid>.<mac>``
    (HMAC-SHA256, base64 without padding), URI-encoded as the cookie module writes it."""
    mac = hmac.new(NODE_SECRET.encode(), sid.encode(), hashlib.sha256).digest()
    signed = "s:" + sid + "." + base64.b64encode(mac).decode().rstrip("=")
    return quote(signed, safe="")


def seed_node(url: str, rows: int, known: int) -> list[str]:
    """connect-pg-simple's table with ``rows`` signed-in sessions; the first ``known``
    cookies."""
    expire = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=8)
    sess = json.dumps(
        {
            "cookie": {
                "originalMaxAge": 8 * 3600 * 1000,
                "expires": expire.isoformat() + "Z",
                "httpOnly": True,
                "path": "/",
            },
            "user": USER,
        }
    )
    sids = [base64.urlsafe_b64encode(os.urandom(24)).decode() for _ in range(rows)]
    with psycopg.connect(h.psycopg_url(url)) as conn:
        conn.execute(NODE_TABLE)
        with (
            conn.cursor() as cur,
            cur.copy('COPY "session" (sid, sess, expire) FROM STDIN') as copy,
        ):
            for sid in sids:
                copy.write_row((sid, sess, expire))
    with psycopg.connect(h.psycopg_url(url), autocommit=True) as conn:
        conn.execute('VACUUM ANALYZE "session"')
    return [node_cookie(sid) for sid in sids[:known]]


def node_server(url: str, directory: Path) -> h.Server:
    port = h.free_port()
    env = {
        "NODE_ENV": "production",
        "PORT": str(port),
        "DATABASE_URL": h.psycopg_url(url),
        "SESSION_SECRET": NODE_SECRET,
    }
    argv = ["node", str(NODE_DIR / "server.js")]
    return h.Server("node", argv, port, directory / "node.log", env).start()


def _ratios(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    return h.compare(a, b)["ratio"]


def run(*, rows: int, seconds: float, rounds: int) -> dict[str, Any]:
    install_node()
    with h.database() as url, h.workdir() as tmp:
        print(f"  seeding {rows:,} sessions in each table", flush=True)
        relay_cookies = h.seed(url, rows, known=64)
        node_cookies = seed_node(url, rows, known=64)
        relay_script = h.cookie_script(tmp, relay_cookies)
        node_script = h.cookie_script(tmp, node_cookies, name="node", cookie_name=NODE_COOKIE)
        port, uncached_port = h.free_port(), h.free_port()
        servers = {
            "bare": h.bare_server(tmp),
            "node": node_server(url, tmp),
            "relay": h.relay_server(h.write_config(tmp, url, port), port, tmp),
            "relay-uncached": h.relay_server(
                h.write_config(
                    tmp,
                    url,
                    uncached_port,
                    cache={"max_entries": UNCACHED_ENTRIES},
                ),
                uncached_port,
                tmp,
                name="relay-uncached",
            ),
        }
        scripts = dict.fromkeys(servers, relay_script)
        scripts["node"] = node_script
        try:
            for name, server in servers.items():  # warm-up: caches, pools, JITs
                h.wrk(server, scripts[name], 2)

            def load(name: str) -> Any:
                return lambda: h.wrk(servers[name], scripts[name], seconds)

            results = h.interleave(rounds, {name: load(name) for name in servers})
        finally:
            for server in servers.values():
                server.stop()
        figures = {
            name: {k: h.spread([r[k] for r in runs]) for k in h.KEYS}
            for name, runs in results.items()
        }
        vs_bare = {name: _ratios(runs, results["bare"]) for name, runs in results.items()}
        vs_node = {name: _ratios(runs, results["node"]) for name, runs in results.items()}
        out: dict[str, Any] = {
            "rows": rows,
            "seconds": seconds,
            "uncached_max_entries": UNCACHED_ENTRIES,
            "rounds": results,
            "figures": figures,
            "vs_bare": vs_bare,
            "vs_node": vs_node,
            "errors": {name: sum(r["error_count"] for r in runs) for name, runs in results.items()},
        }
        out["targets"] = {
            "uncached_ge_2x_node": vs_node["relay-uncached"]["rps"]["of_medians"]
            >= BARS["uncached_vs_node"],
            "uncached_ge_0.15x_bare": vs_bare["relay-uncached"]["rps"]["of_medians"]
            >= BARS["uncached_vs_bare"],
            "cached_ge_0.75x_bare": vs_bare["relay"]["rps"]["of_medians"] >= BARS["cached_vs_bare"],
            "cached_p99_le_2x_bare": vs_bare["relay"]["p99_ms"]["of_medians"] <= 2.0,
        }
        out["relay_log_problems"] = (
            servers["relay"].problems()[:10] + servers["relay-uncached"].problems()[:10]
        )
        out["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return out
