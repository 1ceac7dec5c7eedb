"""Benchmark 7: whole login round trips, /login -> the development provider's /authorize
(the login form posted) -> /callback, by ``concurrency`` simulated browsers (an asyncio
httpx2 driver in this process, one fresh cookie jar per login) for ``seconds``, interleaved
with wrk on the bare endpoint. Reports logins/s, round-trip p50/p99 and the relay's CPU time
per login (/proc), also as a multiple of the bare endpoint's CPU per request.

The provider is relay/demo/provider.py's DevProvider in its own uvicorn process. Config
differs from the defaults in one key: [limits] login_rate is raised, since every browser here
comes from 127.0.0.1 and the default (30/minute per address) would refuse nearly all logins."""

from __future__ import annotations

import asyncio
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx2

from benchmarks import harness as h
from relay.demo.provider import ACCOUNTS

PROVIDER_APP = """
import os
from relay.demo.provider import DevProvider

app = DevProvider(
    os.environ["BENCH_ISSUER"], "bench", os.environ["BENCH_SECRET"],
    redirect_uris=[os.environ["BENCH_REDIRECT"]], post_logout_redirect_uris=[],
).app
"""


def provider_server(directory: Path, relay_port: int, secret: str) -> h.Server:
    (directory / "provider_app.py").write_text(PROVIDER_APP)
    port = h.free_port()
    argv = [sys.executable, "-m", "uvicorn", "provider_app:app", "--port", str(port)]
    argv += ["--loop", "uvloop", "--http", "httptools", "--no-access-log"]
    argv += ["--log-level", "warning", "--app-dir", str(directory)]
    env = {
        "BENCH_ISSUER": f"http://127.0.0.1:{port}",
        "BENCH_SECRET": secret,
        "BENCH_REDIRECT": f"http://127.0.0.1:{relay_port}/callback",
    }
    return h.Server("provider", argv, port, directory / "provider.log", env).start()


async def _one_login(client: httpx2.AsyncClient, relay: str) -> None:
    account = next(iter(ACCOUNTS.values()))
    client.cookies.clear()
    start = await client.get(f"{relay}/login")
    assert start.status_code == 302, (start.status_code, start.text[:300])
    authorize = start.headers["location"]
    parts = urlsplit(authorize)
    form = dict(parse_qsl(parts.query))
    form.update(username=account.username, password=account.password)
    back = await client.post(f"{parts.scheme}://{parts.netloc}{parts.path}", data=form)
    assert back.status_code == 303, (back.status_code, back.text[:300])
    done = await client.get(back.headers["location"])
    assert done.status_code == 302, (done.status_code, done.text[:300])
    assert client.cookies.get(h.COOKIE_NAME), "no session cookie"


async def _drive(relay: str, seconds: float, concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []
    failures: list[str] = []
    deadline = time.monotonic() + seconds

    async def browser() -> None:
        async with httpx2.AsyncClient(timeout=10) as client:
            while time.monotonic() < deadline:
                began = time.monotonic()
                try:
                    await _one_login(client, relay)
                except (AssertionError, httpx2.HTTPError) as exc:
                    failures.append(repr(exc)[:300])
                else:
                    latencies.append(time.monotonic() - began)

    started = time.monotonic()
    await asyncio.gather(*(browser() for _ in range(concurrency)))
    wall = time.monotonic() - started
    latencies.sort()
    return {
        "logins": len(latencies),
        "wall_s": round(wall, 3),
        "logins_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 2) if latencies else None,
        "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 2)
        if latencies
        else None,
        "failures": len(failures),
        "failure_samples": failures[:5],
    }


def run(
    *, seconds: float, rounds: int, concurrency: int = 8, profile: bool = True
) -> dict[str, Any]:
    with h.database() as url, h.workdir() as tmp:
        cookies = h.seed(url, 64, known=64)
        script = h.cookie_script(tmp, cookies)
        relay_port = h.free_port()
        secret = secrets.token_urlsafe(32)
        provider = provider_server(tmp, relay_port, secret)
        config = h.write_config(
            tmp,
            url,
            relay_port,
            provider={"issuer": f"http://127.0.0.1:{provider.port}", "client_id": "bench"}
            | {"client_secret": secret},
            limits={"login_rate": "1000000/second"},
        )
        relay = h.relay_server(config, relay_port, tmp)
        bare = h.bare_server(tmp)
        relay_url = f"http://127.0.0.1:{relay_port}"
        bare_runs: list[dict[str, Any]] = []
        login_runs: list[dict[str, Any]] = []
        try:
            asyncio.run(_drive(relay_url, 2, 2))  # warm-up: discovery, JWKS, pools
            h.wrk(bare, script, 2)
            for number in range(rounds):
                bare_runs.append(h.wrk(bare, script, seconds))
                relay_cpu, provider_cpu = relay.cpu_seconds(), provider.cpu_seconds()
                result = asyncio.run(_drive(relay_url, seconds, concurrency))
                relay_cpu = relay.cpu_seconds() - relay_cpu
                provider_cpu = provider.cpu_seconds() - provider_cpu
                logins = max(result["logins"], 1)
                result["relay_cpu_ms_per_login"] = round(1000 * relay_cpu / logins, 3)
                result["provider_cpu_ms_per_login"] = round(1000 * provider_cpu / logins, 3)
                result["login_cpu_in_bare_requests"] = round(
                    1000 * result["relay_cpu_ms_per_login"] / bare_runs[-1]["cpu_us_per_req"], 1
                )
                login_runs.append(result)
                print(
                    f"    round {number + 1}: bare {bare_runs[-1]['rps']:.0f} req/s;"
                    f" {result['logins_per_s']:.1f} logins/s, p50 {result['p50_ms']} ms,"
                    f" p99 {result['p99_ms']} ms, relay {result['relay_cpu_ms_per_login']} ms"
                    f" CPU/login, failures {result['failures']}",
                    flush=True,
                )
            driver = (h.BENCH_DIR / "profiles", tmp / "login.txt")
            if profile:  # an extra round, not counted: where a login's CPU time goes
                spy = h.py_spy(
                    relay.pid,
                    int(seconds) + 2,
                    driver[1],
                    lambda: asyncio.run(_drive(relay_url, seconds, concurrency)),
                )
                driver[0].mkdir(exist_ok=True)
                if driver[1].exists():
                    driver[1].replace(driver[0] / "login.txt")
                    spy["file"] = "benchmarks/profiles/login.txt"
        finally:
            relay.stop()
            bare.stop()
            provider.stop()
        bare_rps = h.spread([r["rps"] for r in bare_runs])
        logins_per_s = h.spread([r["logins_per_s"] for r in login_runs])
        return {
            "seconds": seconds,
            "concurrency": concurrency,
            "logins_per_s": logins_per_s,
            "p50_ms": h.spread([r["p50_ms"] for r in login_runs]),
            "p99_ms": h.spread([r["p99_ms"] for r in login_runs]),
            "relay_cpu_ms_per_login": h.spread([r["relay_cpu_ms_per_login"] for r in login_runs]),
            "provider_cpu_ms_per_login": h.spread(
                [r["provider_cpu_ms_per_login"] for r in login_runs]
            ),
            "login_cpu_in_bare_requests": h.spread(
                [r["login_cpu_in_bare_requests"] for r in login_runs]
            ),
            "bare_rps": bare_rps,
            "bare_cpu_us_per_req": h.spread([r["cpu_us_per_req"] for r in bare_runs]),
            "logins_per_s_over_bare_rps": round(logins_per_s["median"] / bare_rps["median"], 4),
            "failures": sum(r["failures"] for r in login_runs),
            "rounds": {"bare": bare_runs, "login": login_runs},
            "profile": spy if profile else None,
            "relay_log_problems": relay.problems()[:20],
        }
