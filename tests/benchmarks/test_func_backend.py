"""Smoke test: ``benchmarks.func_backend --quick`` runs end to end (no timing asserted)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROWS = ["1", "2a", "2b", "3a", "3b"]


def test_quick_run_prints_every_row() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.func_backend", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.startswith("machine: ")
    assert "torch " in out.splitlines()[0]
    lines = out.splitlines()
    for key in ROWS:
        rows = [ln for ln in lines if ln.startswith(f"| {key} |")]
        assert len(rows) == 1, (key, out)
        cells = [c.strip() for c in rows[0].strip("|").split("|")]
        assert len(cells) == 12
        times, ratios = (cells[3], cells[4]), (cells[5], cells[6], cells[9])
        assert all(float(c) > 0 for c in times), rows[0]
        assert all(math.isfinite(float(c)) and float(c) > 0 for c in ratios), rows[0]
        assert float(cells[7]) > 0 and float(cells[8]) > 0  # peak RSS, GiB
        expected = "—" if key.startswith("3") else "time "
        assert cells[11].startswith(expected), rows[0]
    refusal = [ln for ln in lines if ln.startswith("2c. GPT, exact curvature: refused after")]
    assert len(refusal) == 1, out
    assert "CostError" in refusal[0]
    assert any(ln.startswith("sanity (2b): GGN trace estimates") for ln in lines)
