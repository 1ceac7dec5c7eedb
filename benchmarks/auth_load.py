"""Benchmarks 1-3: GET /auth with a valid session under wrk (64 session cookies over 32
connections), interleaved with the bare Starlette endpoint: requests/s, p50, p99, server CPU
per check, and the ratios. ``rows`` sessions are in the table; ``max_entries=0`` is the
uncached path (one SELECT per check)."""

from __future__ import annotations

from typing import Any

from benchmarks import harness as h

RATIO_TARGET = 0.75
P99_TARGET = 2.0  # relay p99 at most this many times the bare p99


def run(
    *, rows: int, seconds: float, rounds: int, max_entries: int | None = None, profile: bool = True
) -> dict[str, Any]:
    with h.database() as url, h.workdir() as tmp:
        print(f"  seeding {rows:,} sessions", flush=True)
        cookies = h.seed(url, rows, known=64)
        sections: dict[str, dict[str, Any]] = {}
        if max_entries is not None:
            sections["cache"] = {"max_entries": max_entries}
        port = h.free_port()
        relay = h.relay_server(h.write_config(tmp, url, port, **sections), port, tmp)
        bare = h.bare_server(tmp)
        try:
            script = h.cookie_script(tmp, cookies)
            h.wrk(relay, script, 2)  # warm-up: the cache, the pool, SQLAlchemy's caches
            h.wrk(bare, script, 2)
            results = h.interleave(
                rounds,
                {
                    "bare": lambda: h.wrk(bare, script, seconds),
                    "relay": lambda: h.wrk(relay, script, seconds),
                },
            )
            out = {
                "rows": rows,
                "max_entries": max_entries,
                "seconds": seconds,
                "rounds": results,
                **h.compare(results["relay"], results["bare"]),
            }
            ratio = out["ratio"]["rps"]["of_medians"]
            p99 = out["ratio"]["p99_ms"]["of_medians"]
            out["targets"] = {
                "rps_ratio_ge_0.75": ratio >= RATIO_TARGET,
                "p99_le_2x_bare": p99 <= P99_TARGET,
            }
            if not (h.BIN / "py-spy").exists():
                profile = False  # not installed (pip install py-spy): the figures stand alone
            if profile and not all(out["targets"].values()):
                print("  target missed: py-spy on the relay under the same load", flush=True)
                out["profile"] = h.py_spy(
                    relay.pid,
                    int(seconds),
                    tmp / "profile.txt",
                    lambda: h.wrk(relay, script, seconds - 2),
                )
                keep = h.BENCH_DIR / "profiles"
                keep.mkdir(exist_ok=True)
                cache = "default" if max_entries is None else max_entries
                name = f"auth_rows{rows}_cache{cache}.txt"
                (tmp / "profile.txt").replace(keep / name)
                out["profile"]["file"] = f"benchmarks/profiles/{name}"
        finally:
            relay.stop()
            bare.stop()
        out["relay_log_problems"] = relay.problems()[:20]
        out["cache_stats_line"] = None
        return out
