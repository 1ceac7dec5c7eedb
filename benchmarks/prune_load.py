"""Benchmark 5: `relay prune --config` deleting ``expired`` expired rows while /auth is under
load. The relay starts first (its background pruner's first pass then finds nothing), the
expired rows are COPYed in, /auth is measured interleaved with the bare endpoint ("before"),
then `relay prune` runs while wrk windows of ``window`` seconds follow each other against
/auth until it has finished ("during"). Target: /auth p99 during <= 2x before."""

from __future__ import annotations

import subprocess
import time
from typing import Any

from benchmarks import harness as h


def run(*, expired: int, window: float, rounds: int) -> dict[str, Any]:
    with h.database() as url, h.workdir() as tmp:
        cookies = h.seed(url, 64, known=64)
        script = h.cookie_script(tmp, cookies)
        port = h.free_port()
        config = h.write_config(tmp, url, port)
        relay = h.relay_server(config, port, tmp)
        bare = h.bare_server(tmp)
        try:
            # The background pruner's first pass (an empty one) must be over before the
            # expired rows arrive, or it would prune them instead of the CLI.
            relay.wait_for_line('"prune.completed"')
            print(f"  seeding {expired:,} expired rows", flush=True)
            h.seed(url, expired, expired=True)
            rows_before = h.table_stats(url)["rows"]
            h.wrk(relay, script, 2)
            h.wrk(bare, script, 2)
            before = h.interleave(
                rounds,
                {
                    "bare": lambda: h.wrk(bare, script, window),
                    "relay": lambda: h.wrk(relay, script, window),
                },
            )
            started = time.monotonic()
            prune = subprocess.Popen(
                [str(h.BIN / "relay"), "prune", "--config", str(config)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            during: list[dict[str, Any]] = []
            while prune.poll() is None:
                result = h.wrk(relay, script, window)
                result["prune_running_at_end"] = prune.poll() is None
                during.append(result)
                print(f"    during prune: {h.describe(result)}", flush=True)
            out_text, err_text = prune.communicate()
            prune_seconds = time.monotonic() - started
            after = h.wrk(relay, script, window)
            rows_after = h.table_stats(url)["rows"]
        finally:
            relay.stop()
            bare.stop()
        # Only windows that lay wholly inside the prune count as "during"; the last one ran
        # partly after it ended.
        inside = [r for r in during if r["prune_running_at_end"]] or during
        before_p99 = h.spread([r["p99_ms"] for r in before["relay"]])
        during_p99 = h.spread([r["p99_ms"] for r in inside])
        return {
            "expired_rows": expired,
            "window_s": window,
            "rows_before": rows_before,
            "rows_after": rows_after,
            "prune_seconds": round(prune_seconds, 1),
            "prune_output": out_text.strip(),
            "prune_stderr_tail": err_text.strip().splitlines()[-3:],
            "before": h.compare(before["relay"], before["bare"]),
            "during": {k: h.spread([r[k] for r in inside]) for k in ("rps", "p50_ms", "p99_ms")}
            | {"windows": len(inside), "errors": sum(r["error_count"] for r in during)},
            "after": {k: after[k] for k in ("rps", "p50_ms", "p99_ms", "error_count")},
            "p99_during_over_before": {
                "median": round(during_p99["median"] / before_p99["median"], 3),
                "worst_window": round(during_p99["max"] / before_p99["median"], 3),
            },
            "targets": {
                "p99_during_le_2x_before": during_p99["median"] <= 2 * before_p99["median"]
            },
            "rounds": {"before": before, "during": during, "after": after},
            "relay_log_problems": relay.problems()[:20],
        }
