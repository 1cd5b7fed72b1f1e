"""bench/bench_all.py --quick runs end to end and reports every figure.

No timing thresholds: the figures of a loaded test machine mean nothing. The point is that
the benchmark keeps working as the gateway changes (wrk when installed, otherwise the
script's own aiohttp load generator).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HTTP_PATHS = ["origin directly", "aiohttp hello", "bare proxy", "free route", "session-paid",
              "x402 deferred", "x402 after"]


@pytest.mark.timeout(300)  # a generous bound for a loaded machine; it takes ~30 s alone
def test_bench_all_quick_reports_every_figure():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.run([sys.executable, str(REPO / "bench/bench_all.py"), "--quick", "--json"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    out = run.stdout
    res = json.loads(out[out.index("\n{") + 1:])

    for name in HTTP_PATHS:
        row = res["paths"][name]
        assert row["requests"] > 0, (name, row)
        for key in ("rps", "p50_ms", "p99_ms", "p50_c1_ms", "cpu_us_per_req", "x_rps", "x_cpu",
                    "added_p50_c1_ms"):
            assert row[key] is not None, (name, key, row)
        assert row["requests"] > row["non2xx"], (name, row)  # some were served, not refused
        assert f"| {name} |" in out
    assert "skipped" in res["paths"]["/v1/authorize"] or res["paths"]["/v1/authorize"]["rps"]

    assert res["ready_s"] > 0 and res["ready_hedera_s"] > 0
    assert res["rss_sessions"]["rss_mb"] > 0
    assert res["rss_sessions"]["called_once"] > 0
    assert set(res["ledger"]) == {"sqlite charges/s", "sqlite calls/s", "postgres charges/s",
                                  "postgres calls/s"}
    assert all(v > 0 for v in res["ledger"].values())
    assert res["queue"], "no queue depth samples"
    for key in ("queue_peak", "oldest_open_peak_s", "open_at_end", "settled_per_s_load",
                "settled_per_s_drain"):
        assert key in res["settlement"]
    for label in ("start to /readyz", "RSS:", "ledger sqlite charges/s",
                  "ledger postgres charges/s", "x402 deferred queue", "queue depth"):
        assert label in out
