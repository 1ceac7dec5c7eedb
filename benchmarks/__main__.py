"""Run the benchmarks against this machine's PostgreSQL and print a table; write JSON.

    .venv/bin/python -m benchmarks                      # all, full size (about 20 minutes)
    .venv/bin/python -m benchmarks --quick              # all, small and short
    .venv/bin/python -m benchmarks --only auth uncached # some (names below)

auth      1. /auth, valid session, 10,000 sessions in the table, cache on (the defaults)
uncached  2. the same with [cache] max_entries = 0: one SELECT per check
rows1m    3. the same as 1 with 1,000,000 sessions in the table
writes    4. database writes per 1,000 checks with touch_interval = 2 s
prune     5. `relay prune` of 1,000,000 expired rows while /auth is under load
rss       6. relay RSS while 100,000 distinct sessions are looked up
login     7. /login -> provider -> /callback round trips against the development provider
peers     8. bare, the Node stack (benchmarks/node), the relay cached and uncached, in one run
cache_bytes 9. the memory one cached session costs (tracemalloc, in this process)
users     10. 100,000 active sessions checked uniformly, defaults: hit rate, ratio, RSS
rolling   11. a rolling restart of two replicas with 100,000 sessions: p99 in the first minute
bearer    12. bearer-token checks (64 JWTs, each seen before) against bare, in one run

Needs wrk on PATH and py-spy in the virtualenv (for profiles when a target is missed).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import (
    auth_load,
    bearer,
    cache_bytes,
    login,
    peers,
    prune_load,
    rolling,
    rss,
    users,
    writes,
)
from benchmarks.harness import BENCH_DIR

Runner = Callable[[bool, int | None, float | None], dict[str, Any]]


def _auth(rows: int, quick_rows: int, max_entries: int | None = None) -> Runner:
    def go(quick: bool, rounds: int | None, seconds: float | None) -> dict[str, Any]:
        return auth_load.run(
            rows=quick_rows if quick else rows,
            max_entries=max_entries,
            seconds=seconds or (3 if quick else 10),
            rounds=rounds or (2 if quick else 3),
        )

    return go


BENCHMARKS: dict[str, Runner] = {
    "auth": _auth(10_000, 10_000),
    "uncached": _auth(10_000, 10_000, max_entries=0),
    "rows1m": _auth(1_000_000, 100_000),
    "writes": lambda quick, rounds, seconds: writes.run(
        seconds=seconds or (6 if quick else 20), rounds=rounds or (2 if quick else 3)
    ),
    "prune": lambda quick, rounds, seconds: prune_load.run(
        expired=100_000 if quick else 1_000_000,
        window=seconds or (3 if quick else 5),
        rounds=rounds or (2 if quick else 3),
    ),
    "rss": lambda quick, rounds, seconds: rss.run(
        sessions=10_000 if quick else 100_000,
        passes=2 if quick else 1.5,
        window=seconds or (3 if quick else 10),
        rounds=rounds or (2 if quick else 3),
    ),
    "login": lambda quick, rounds, seconds: login.run(
        seconds=seconds or (4 if quick else 10), rounds=rounds or (2 if quick else 3)
    ),
    "cache_bytes": lambda quick, rounds, seconds: cache_bytes.run(
        sessions=10_000 if quick else 50_000
    ),
    "users": lambda quick, rounds, seconds: users.run(
        sessions=10_000 if quick else 100_000,
        seconds=seconds or (3 if quick else 10),
        rounds=rounds or (2 if quick else 3),
    ),
    "rolling": lambda quick, rounds, seconds: rolling.run(
        sessions=10_000 if quick else 100_000,
        seconds=seconds or (5 if quick else 10),
        windows=rounds or (2 if quick else 3),
    ),
    "bearer": lambda quick, rounds, seconds: bearer.run(
        seconds=seconds or (3 if quick else 10), rounds=rounds or (2 if quick else 3)
    ),
    "peers": lambda quick, rounds, seconds: peers.run(
        rows=10_000, seconds=seconds or (3 if quick else 10), rounds=rounds or (2 if quick else 3)
    ),
}


def _fmt(spread: dict[str, float], unit: str = "") -> str:
    return f"{spread['median']:,.4g}{unit} ({spread['min']:,.4g}-{spread['max']:,.4g})"


def _ratio(ratio: dict[str, Any]) -> str:
    rounds = ratio["per_round"]
    return f"{ratio['of_medians']} ({rounds['min']:.3g}-{rounds['max']:.3g})"


FIGURES = (("rps", " req/s"), ("p50_ms", " ms"), ("p99_ms", " ms"), ("cpu_us_per_req", " us"))


def _together(name: str, r: dict[str, Any], targets: str) -> list[str]:
    """The rows of the benchmarks that run several servers or set-ups in one run."""
    lines: list[str] = []
    if name == "users":
        lines.append(
            f"| users | {r['sessions']:,} sessions: hit rate, req/s ratio (all / 64) |"
            f" {_fmt(r['hit_rate'])} | | {_ratio(r['ratio_everyone']['rps'])} /"
            f" {_ratio(r['ratio_64']['rps'])} | {targets} |"
        )
        lines.append(
            f"| users | RSS after warm start / end, warm start |"
            f" {r['rss_after_warm_start_kib']} / {r['rss_end_kib']} KiB | |"
            f" {r['warm_start']} | |"
        )
    elif name == "rolling":
        for restart in r["restarts"]:
            lines.append(
                f"| rolling | {restart['replica']}: worst p99 in its first minute |"
                f" {restart['worst_p99_ms']} ms | steady {_fmt(r['steady_p99_ms'], ' ms')} |"
                f" {restart['worst_over_steady']}x | {targets} |"
            )
    elif name == "peers":
        for row in ("bare", "node", "relay", "relay-uncached"):
            f = r["figures"][row]
            lines.append(
                f"| peers | {row}: req/s, p99, CPU/check | {_fmt(f['rps'])},"
                f" {_fmt(f['p99_ms'], ' ms')}, {_fmt(f['cpu_us_per_req'], ' us')} |"
                f" vs bare {_ratio(r['vs_bare'][row]['rps'])} |"
                f" vs node {_ratio(r['vs_node'][row]['rps'])} |"
                f" {targets if row == 'relay-uncached' else ''} |"
            )
    return lines


def table(results: dict[str, Any]) -> str:
    lines = ["| benchmark | figure | relay: median (min-max) | bare | ratio | targets |"]
    lines.append("|---|---|---|---|---|---|")
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | FAILED | {r['error'][:80]} | | | |")
            continue
        targets = ", ".join(
            f"{k}: {'met' if v else 'MISSED'}" for k, v in r.get("targets", {}).items()
        )
        if name in ("auth", "uncached", "rows1m", "writes", "bearer"):
            for key, unit in FIGURES:
                ratio = r["ratio"][key]
                lines.append(
                    f"| {name} | {key} | {_fmt(r['relay'][key], unit)} |"
                    f" {_fmt(r['bare'][key], unit)} | {ratio['of_medians']}"
                    f" (rounds {ratio['per_round']['min']}-{ratio['per_round']['max']}) |"
                    f" {targets} |"
                )
                targets = ""
            if name == "writes":
                lines.append(
                    f"| writes | writes / 1000 checks | {_fmt(r['writes_per_1000_checks'])} | |"
                    f" | updates {_fmt(r['updates'])} vs bound {_fmt(r['update_bound'])} |"
                )
        elif name == "prune":
            lines.append(
                f"| prune | p99 before | {_fmt(r['before']['relay']['p99_ms'], ' ms')} |"
                f" {_fmt(r['before']['bare']['p99_ms'], ' ms')} |"
                f" {r['before']['ratio']['p99_ms']['of_medians']} | {targets} |"
            )
            lines.append(
                f"| prune | p99 during ({r['during']['windows']} windows) |"
                f" {_fmt(r['during']['p99_ms'], ' ms')} | |"
                f" during/before {r['p99_during_over_before']['median']} (worst window"
                f" {r['p99_during_over_before']['worst_window']}) |"
                f" {r['prune_output']} in {r['prune_seconds']} s |"
            )
            lines.append(
                f"| prune | req/s before / during | {_fmt(r['before']['relay']['rps'])} /"
                f" {_fmt(r['during']['rps'])} | {_fmt(r['before']['bare']['rps'])} |"
                f" {r['before']['ratio']['rps']['of_medians']} (before) | |"
            )
        elif name == "rss":
            lines.append(
                f"| rss | RSS KiB start / after 1st pass / end / max | {r['rss_start_kib']} /"
                f" {r['rss_after_first_pass_kib']} / {r['rss_end_kib']} / {r['rss_max_kib']} |"
                f" | growth {r['growth_after_first_pass']:.2%} | {targets} |"
            )
            lines.append(
                f"| rss | req/s, p99 | {_fmt(r['relay_rps'])}, {_fmt(r['relay_p99_ms'], ' ms')}"
                f" | {_fmt(r['bare_rps'])}, {_fmt(r['bare_p99_ms'], ' ms')} |"
                f" {r['rps_ratio_of_medians']} | |"
            )
        elif name in ("users", "rolling", "peers"):
            lines.extend(_together(name, r, targets))
        elif name == "login":
            lines.append(
                f"| login | logins/s | {_fmt(r['logins_per_s'])} | {_fmt(r['bare_rps'])} req/s"
                f" | {r['logins_per_s_over_bare_rps']} | failures {r['failures']} |"
            )
            lines.append(
                f"| login | round trip p50 / p99 | {_fmt(r['p50_ms'], ' ms')} /"
                f" {_fmt(r['p99_ms'], ' ms')} | | | |"
            )
            lines.append(
                f"| login | relay CPU per login | {_fmt(r['relay_cpu_ms_per_login'], ' ms')} |"
                f" {_fmt(r['bare_cpu_us_per_req'], ' us')}/req |"
                f" {_fmt(r['login_cpu_in_bare_requests'])} bare requests | |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), metavar="NAME")
    parser.add_argument("--quick", action="store_true", help="small tables, short runs")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; quick 2)")
    parser.add_argument("--seconds", type=float, help="seconds per wrk run or window")
    parser.add_argument("--json", type=Path, help="where to write the results (JSON)")
    args = parser.parse_args()
    names = args.only or list(BENCHMARKS)
    out = args.json or BENCH_DIR / ("results-quick.json" if args.quick else "results.json")
    results: dict[str, Any] = {}
    meta = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick,
        "python": sys.version.split()[0],
        "machine": platform.platform(),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip(),
    }
    for name in names:
        print(f"== {name}", flush=True)
        began = time.monotonic()
        try:
            results[name] = BENCHMARKS[name](args.quick, args.rounds, args.seconds)
        except Exception as exc:  # noqa: BLE001 - one failed benchmark must not lose the rest
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"   FAILED: {exc}", flush=True)
        results[name]["elapsed_s"] = round(time.monotonic() - began, 1)
        out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print()
    print(table(results))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
