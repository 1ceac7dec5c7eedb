"""Load on the hot path: `relay serve`'s GET /auth with a valid session, against a bare
Starlette endpoint answering the same headers, both under uvicorn on this machine, in the same
run. Reports requests per second, latency percentiles, and the ratio.

    .venv/bin/python -m benchmarks.auth_hot_path [--database sqlite|postgres] [--seconds 10]

Needs wrk (Debian's package: apt-get install wrk). Everything listens on 127.0.0.1 and stops
by itself when the run ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from sqlalchemy import create_engine, insert

from relay.crypto import hash_id, new_id
from relay.store.database import make_engine, migrate
from relay.store.models import sessions
from tests.conftest import postgres_database
from tests.e2e.stack import wait_for_port
from tests.process import RelayProcess, free_port

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


def wrk(url: str, seconds: int, cookie: str) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", "-H", f"Cookie: {cookie}", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        raise RuntimeError(f"{url} answered {non_2xx.group(1)} errors:\n{out}")

    def ms(label: str) -> float:
        match = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out)
        assert match, out
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rps, out
    return {"requests_per_s": float(rps.group(1)), "p50_ms": ms("50%"), "p99_ms": ms("99%")}


def seed_session(database_url: str) -> str:
    async def schema() -> None:
        engine = make_engine(database_url)
        await migrate(engine)
        await engine.dispose()

    asyncio.run(schema())
    cookie = new_id()
    now = int(time.time())
    engine = create_engine(database_url.replace("+aiosqlite", ""))
    with engine.begin() as conn:
        conn.execute(
            insert(sessions).values(
                id_hash=hash_id(cookie),
                status="active",
                subject="user-1",
                claims=json.dumps(
                    {
                        "sub": "user-1",
                        "email": "alice@example.com",
                        "preferred_username": "alice",
                        "groups": ["admins", "staff"],
                    }
                ),
                created_at=now,
                last_accessed_at=now,
                expires_at=now + 86400,
            )
        )
    engine.dispose()
    return cookie


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--access-log", action="store_true", help="keep the access line on")
    args = parser.parse_args()

    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        if args.database == "postgres":
            url = stack.enter_context(postgres_database())
        else:
            url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        cookie = seed_session(url)
        relay_port, bare_port = free_port(), free_port()
        config = Path(tmp) / "relay.toml"
        config.write_text(
            f'[server]\nport = {relay_port}\npublic_url = "http://127.0.0.1:{relay_port}"\n'
            '[provider]\nissuer = "http://127.0.0.1:9"\nclient_id = "bench"\n'
            'client_secret = "bench"\n'
            f'[database]\nurl = "{url}"\n'
            f'[session]\nsecret = "{"b" * 40}"\ncookie_secure = false\n'
            '[logging]\nlevel = "info"\n'
            f"access_log = {'true' if args.access_log else 'false'}\n"
        )
        relay = RelayProcess(config)
        relay.start()
        stack.callback(relay.stop)
        (Path(tmp) / "bare.py").write_text(BARE_APP)
        bare = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bare:app",
                "--port",
                str(bare_port),
                "--log-level",
                "warning",
                "--no-access-log",
                "--app-dir",
                tmp,
            ],
        )
        stack.callback(bare.terminate)
        wait_for_port(bare_port, bare, "bare app")
        cookie_header = f"relay_session={cookie}"
        wrk(f"http://127.0.0.1:{relay_port}/auth", 2, cookie_header)  # warm up
        results = {
            "bare_starlette": wrk(f"http://127.0.0.1:{bare_port}/auth", args.seconds, ""),
            "relay_auth": wrk(f"http://127.0.0.1:{relay_port}/auth", args.seconds, cookie_header),
        }
        results["ratio_relay_to_bare"] = {
            "requests_per_s": round(
                results["relay_auth"]["requests_per_s"]
                / results["bare_starlette"]["requests_per_s"],
                3,
            )
        }
        print(json.dumps({"database": args.database, "seconds": args.seconds, **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
