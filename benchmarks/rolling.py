"""Benchmark 11: a rolling restart of two replicas with ``sessions`` active sessions (issue 15:
100,000, defaults), checked uniformly on both replicas throughout.

Both replicas start on one table of ``sessions`` rows and warm their caches (store/warm.py).
Steady state: ``windows`` windows of wrk on each replica at once, every cookie in turn. Then
each replica in turn is stopped (SIGTERM) and started again on the same port. As a load
balancer does in a rolling deploy, the other replica takes all the load (one-second windows)
until the restarted one's /readyz answers 200 (it waits for its first warm start, 30 s at
most); then the load resumes on both, window by window, for a minute. The figures: the
seconds until ready, and the worst p99 of the restarted replica within its first minute of
load, against the steady p99 (the bar is 3x).
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from typing import Any

from benchmarks import harness as h

BAR = 3.0


def _both(
    first: tuple[h.Server, Any], second: tuple[h.Server, Any], seconds: float, offset: int
) -> list[dict[str, Any]]:
    """wrk on two replicas at once; their results in order."""
    results: list[dict[str, Any]] = [{}, {}]

    def load(index: int, server: h.Server, script: Any) -> None:
        results[index] = h.wrk(server, script, seconds, offset=offset)

    threads = [
        threading.Thread(target=load, args=(n, server, script))
        for n, (server, script) in enumerate((first, second))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _ready(server: h.Server) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/readyz", timeout=2):
            return True
    except (OSError, urllib.error.HTTPError):
        return False


def run(*, sessions: int, seconds: float, windows: int) -> dict[str, Any]:
    with h.database() as url, h.workdir() as tmp:
        print(f"  seeding {sessions:,} sessions with known cookies", flush=True)
        # Last accesses spread over the touch interval (60 s), as a user base's are.
        cookies = h.seed(url, sessions, known=sessions, spread=60)
        # Each replica gets every cookie; the second starts half way through the list.
        script = h.cookie_script(tmp, cookies, name="everyone")
        ports = (h.free_port(), h.free_port())
        replicas = [
            h.relay_server(h.write_config(tmp, url, port), port, tmp, name=f"relay-{n}")
            for n, port in enumerate(ports)
        ]
        offset = 0
        out: dict[str, Any] = {"sessions": sessions, "seconds": seconds, "windows": windows}
        try:
            for replica in replicas:
                replica.wait_for_line('"cache.warmed"', timeout=120)
            steady: list[dict[str, Any]] = []
            for _ in range(windows):
                pair = _both((replicas[0], script), (replicas[1], script), seconds, offset)
                offset += pair[0]["requests"] // h.WRK_THREADS
                steady.extend(pair)
                print(f"    steady: {h.describe(pair[0])} | {h.describe(pair[1])}", flush=True)
            out["steady_p99_ms"] = h.spread([r["p99_ms"] for r in steady])
            out["steady_rps"] = h.spread([r["rps"] for r in steady])
            restarts = []
            for n, replica in enumerate(replicas):
                other = replicas[1 - n]
                replica.stop()
                began = time.monotonic()
                replica.start()
                while not _ready(replica):  # the other carries the load meanwhile
                    result = h.wrk(other, script, 1, offset=offset)
                    offset += result["requests"] // h.WRK_THREADS
                ready_s = round(time.monotonic() - began, 1)
                print(f"    {replica.name} ready after {ready_s} s", flush=True)
                after: list[dict[str, Any]] = []
                while time.monotonic() - began - ready_s < 60:
                    pair = _both((replica, script), (other, script), seconds, offset)
                    offset += pair[0]["requests"] // h.WRK_THREADS
                    pair[0]["since_start_s"] = round(time.monotonic() - began, 1)
                    after.append(pair[0])
                    print(
                        f"    {replica.name} restarted, {pair[0]['since_start_s']} s:"
                        f" {h.describe(pair[0])}",
                        flush=True,
                    )
                worst = max(r["p99_ms"] for r in after)
                restarts.append(
                    {
                        "replica": replica.name,
                        "ready_after_s": ready_s,
                        "windows": after,
                        "worst_p99_ms": worst,
                        "worst_over_steady": round(worst / out["steady_p99_ms"]["median"], 2),
                    }
                )
            out["restarts"] = restarts
        finally:
            for replica in replicas:
                replica.stop()
        out["targets"] = {
            "first_minute_p99_le_3x_steady": all(
                r["worst_over_steady"] <= BAR for r in out["restarts"]
            )
        }
        out["relay_log_problems"] = [p for r in replicas for p in r.problems()[:10]]
        return out
