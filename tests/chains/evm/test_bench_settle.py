"""The settlement bench runs (briefly): it cannot rot unnoticed. Its figures are not checked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_bench_settle_quick_run_settles_everything():
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_settle.py"), "--quick", "--parts", "chain"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("chain ")]
    assert len(lines) == 2, out.stdout
    for line in lines:  # single and batch: every authorization settled, none failed
        assert "{'settled': 20}" in line, line
