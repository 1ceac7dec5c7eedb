"""Benchmark 4: database writes per 1,000 checks. 64 sessions, touch_interval = 2 s, wrk for
a known duration against a freshly started relay (stopped right after, so its backends flush
their statistics); pg_stat_user_tables deltas for the sessions table and pg_stat_database's
xact_commit. Bound: updates <= sessions * (duration / touch_interval) + sessions."""

from __future__ import annotations

from typing import Any

from benchmarks import harness as h

SESSIONS = 64
TOUCH_INTERVAL = 2


def run(*, seconds: float, rounds: int) -> dict[str, Any]:
    with h.database() as url, h.workdir() as tmp:
        cookies = h.seed(url, SESSIONS, known=SESSIONS)
        script = h.cookie_script(tmp, cookies)
        unknown = h.cookie_script(tmp, [h.new_id() for _ in range(SESSIONS)], "unknown")
        port = h.free_port()
        config = h.write_config(tmp, url, port, session={"touch_interval": f"{TOUCH_INTERVAL}s"})
        bare = h.bare_server(tmp)
        problems: list[str] = []
        bare_runs: list[dict[str, Any]] = []
        relay_runs: list[dict[str, Any]] = []
        try:
            h.wrk(bare, script, 2)
            for number in range(rounds):
                bare_runs.append(h.wrk(bare, script, seconds))
                before = h.table_stats(url)
                relay = h.relay_server(config, port, tmp, name=f"relay-{number}")
                try:
                    # Warm-up on unknown cookies: reads, no writes (its transactions do count
                    # in xact_commit, hence warmup_requests in the result).
                    warmup = h.wrk(relay, unknown, 1)["requests"]
                    result = h.wrk(relay, script, seconds)
                    result["warmup_requests"] = warmup
                finally:
                    relay.stop()
                h.wait_for_backends_gone(url)  # their statistics are flushed as they exit
                after = h.table_stats(url)
                problems += relay.problems()
                delta = {k: after[k] - before[k] for k in ("ins", "upd", "del", "xact_commit")}
                duration = result["wall_s"]
                bound = SESSIONS * (duration / TOUCH_INTERVAL) + SESSIONS
                writes = delta["ins"] + delta["upd"] + delta["del"]
                result.update(
                    delta=delta,
                    writes_per_1000_checks=round(1000 * writes / result["requests"], 3),
                    commits_per_1000_checks=round(
                        1000 * delta["xact_commit"] / result["requests"], 3
                    ),
                    update_bound=round(bound, 1),
                    within_bound=delta["upd"] <= bound,
                )
                relay_runs.append(result)
                print(
                    f"    round {number + 1}: bare {bare_runs[-1]['rps']:.0f} req/s, relay"
                    f" {result['rps']:.0f} req/s, {result['requests']} checks in"
                    f" {duration:.1f} s: upd {delta['upd']} ins {delta['ins']} del"
                    f" {delta['del']} commits {delta['xact_commit']} (bound {bound:.0f});"
                    f" {h.describe(result)}",
                    flush=True,
                )
        finally:
            bare.stop()
        return {
            "sessions": SESSIONS,
            "touch_interval_s": TOUCH_INTERVAL,
            "seconds": seconds,
            "rounds": {"bare": bare_runs, "relay": relay_runs},
            **h.compare(relay_runs, bare_runs),
            "writes_per_1000_checks": h.spread([r["writes_per_1000_checks"] for r in relay_runs]),
            "commits_per_1000_checks": h.spread([r["commits_per_1000_checks"] for r in relay_runs]),
            "updates": h.spread([r["delta"]["upd"] for r in relay_runs]),
            "update_bound": h.spread([r["update_bound"] for r in relay_runs]),
            "targets": {"updates_within_bound": all(r["within_bound"] for r in relay_runs)},
            "relay_log_problems": problems[:20],
        }
