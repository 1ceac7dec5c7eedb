"""Benchmark 10: a user base of ``sessions`` active sessions, checked uniformly, with the
relay's defaults (issue 15: 100,000 sessions, the default cache of 100,000 entries).

The sessions are rows COPYed into the table before the relay starts, so its warm start
(store/warm.py) loads them; the benchmark waits for its ``cache.warmed`` line. Then, in
interleaved rounds: bare and the relay with wrk cycling through *all* the cookies (each
thread continuing where it stopped), and the relay with the usual 64 cookies (the small
case), for the ratio "within 10% of the small case". Per round: the cache's hit rate (from
the relay's /metrics), req/s, p99, and the relay's RSS.
"""

from __future__ import annotations

import json
import time
from typing import Any

from benchmarks import harness as h

WITHIN = 0.10


def run(*, sessions: int, seconds: float, rounds: int) -> dict[str, Any]:
    with h.database() as url, h.workdir() as tmp:
        print(f"  seeding {sessions:,} sessions with known cookies", flush=True)
        # Last accesses spread over the touch interval (60 s), as a user base's are.
        cookies = h.seed(url, sessions, known=sessions, spread=60)
        everyone = h.cookie_script(tmp, cookies, name="everyone")
        few = h.cookie_script(tmp, cookies[:64], name="few")
        port = h.free_port()
        started = time.monotonic()
        relay = h.relay_server(h.write_config(tmp, url, port), port, tmp)
        bare = h.bare_server(tmp)
        try:
            relay.wait_for_line('"cache.warmed"', timeout=120)
            warm = next(
                json.loads(line)
                for line in relay.log.read_text().splitlines()
                if '"cache.warmed"' in line
            )
            warm["after_start_s"] = round(time.monotonic() - started, 1)
            print(f"  warm start: {warm}", flush=True)
            rss_warm = relay.rss_kib()
            offset = [0]

            def relay_everyone() -> dict[str, Any]:
                result = h.wrk(relay, everyone, seconds, offset=offset[0])
                offset[0] += result["requests"] // h.WRK_THREADS
                lookups = result.get("cache_hits", 0) + result.get("cache_misses", 0)
                result["hit_rate"] = round(result.get("cache_hits", 0) / max(lookups, 1), 4)
                result["rss_kib"] = relay.rss_kib()
                return result

            results = h.interleave(
                rounds,
                {
                    "bare": lambda: h.wrk(bare, everyone, seconds),
                    "relay": relay_everyone,
                    "relay-64": lambda: h.wrk(relay, few, seconds),
                },
            )
        finally:
            relay.stop()
            bare.stop()
        everyone_ratio = h.compare(results["relay"], results["bare"])["ratio"]
        few_ratio = h.compare(results["relay-64"], results["bare"])["ratio"]
        out: dict[str, Any] = {
            "sessions": sessions,
            "seconds": seconds,
            "warm_start": warm,
            "rss_after_warm_start_kib": rss_warm,
            "rss_end_kib": results["relay"][-1]["rss_kib"],
            "hit_rate": h.spread([r["hit_rate"] for r in results["relay"]]),
            "rounds": results,
            "ratio_everyone": everyone_ratio,
            "ratio_64": few_ratio,
            "relay_log_problems": relay.problems()[:20],
        }
        small = few_ratio["rps"]["of_medians"]
        out["targets"] = {
            "ratio_within_10pct_of_small_case": abs(everyone_ratio["rps"]["of_medians"] - small)
            <= WITHIN * small,
        }
        print(f"  hit rate {out['hit_rate']}, targets {out['targets']}", flush=True)
        return out
