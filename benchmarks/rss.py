"""Benchmark 6: relay RSS while ``sessions`` distinct sessions are looked up, under load.

The sessions are rows COPYed into the table (not real logins); wrk cycles through all their
cookies, so with more sessions than [cache] max_entries (default 10,000) nearly every check
misses the cache and reads the table. RSS is read from /proc every second; the relay runs with
its defaults. Flat means: RSS after the last pass within 10% of RSS after the first."""

from __future__ import annotations

from typing import Any

from benchmarks import harness as h

FLAT = 0.10


def run(*, sessions: int, passes: float, window: float, rounds: int) -> dict[str, Any]:
    with h.database() as url, h.workdir() as tmp:
        print(f"  seeding {sessions:,} sessions with known cookies", flush=True)
        cookies = h.seed(url, sessions, known=sessions)
        script = h.cookie_script(tmp, cookies)
        port = h.free_port()
        relay = h.relay_server(h.write_config(tmp, url, port), port, tmp)
        bare = h.bare_server(tmp)
        rss_start = relay.rss_kib()
        checks = 0
        marks: list[dict[str, Any]] = []
        bare_runs: list[dict[str, Any]] = []
        relay_runs: list[dict[str, Any]] = []
        try:
            with h.RssSampler(relay) as sampler:
                # Load until every cookie was used ``passes`` times; a bare window every
                # ``rounds``-th of the way, for the ratio.
                bare_every = max(1, int(passes * sessions / rounds))
                next_bare = 0
                while checks < passes * sessions:
                    if checks >= next_bare:
                        bare_runs.append(h.wrk(bare, script, window))
                        next_bare += bare_every
                    # Each thread continues where it stopped: the offset advances by the
                    # requests one thread made.
                    result = h.wrk(relay, script, window, offset=checks // h.WRK_THREADS)
                    relay_runs.append(result)
                    checks += result["requests"]
                    marks.append(
                        {
                            "checks": checks,
                            "distinct": min(checks, sessions),
                            "rss_kib": relay.rss_kib(),
                        }
                    )
                    print(
                        f"    {checks:>8} checks: rss {marks[-1]['rss_kib'] / 1024:.1f} MiB,"
                        f" {h.describe(result)}",
                        flush=True,
                    )
        finally:
            relay.stop()
            bare.stop()
        first_pass = next(m for m in marks if m["checks"] >= sessions)
        last = marks[-1]
        growth = (last["rss_kib"] - first_pass["rss_kib"]) / first_pass["rss_kib"]
        relay_rps = h.spread([r["rps"] for r in relay_runs])
        bare_rps = h.spread([r["rps"] for r in bare_runs])
        return {
            "sessions": sessions,
            "passes": passes,
            "window_s": window,
            "rss_start_kib": rss_start,
            "rss_after_first_pass_kib": first_pass["rss_kib"],
            "rss_end_kib": last["rss_kib"],
            "rss_max_kib": max([kib for _, kib in sampler.samples] + [m["rss_kib"] for m in marks]),
            "growth_after_first_pass": round(growth, 4),
            "marks": marks,
            "samples": sampler.samples,
            "relay_rps": relay_rps,
            "relay_p99_ms": h.spread([r["p99_ms"] for r in relay_runs]),
            "bare_rps": bare_rps,
            "bare_p99_ms": h.spread([r["p99_ms"] for r in bare_runs]),
            "rps_ratio_of_medians": round(relay_rps["median"] / bare_rps["median"], 3),
            "relay_errors": sum(r["error_count"] for r in relay_runs),
            "targets": {"rss_flat_within_10pct": abs(growth) <= FLAT},
            "rounds": {"bare": bare_runs, "relay": relay_runs},
            "relay_log_problems": relay.problems()[:20],
        }
