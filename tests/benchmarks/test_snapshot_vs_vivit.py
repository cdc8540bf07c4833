"""Smoke test: ``benchmarks.snapshot_vs_vivit --quick`` runs end to end (no timing asserted)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_prints_the_table() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.snapshot_vs_vivit", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.startswith("machine: ")
    assert "torch " in out.splitlines()[0]
    rows = [ln for ln in out.splitlines() if ln.startswith("| exact, N=4 |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert len(cells) == 10
    assert float(cells[1]) > 0 and float(cells[2]) > 0 and float(cells[4]) > 0  # plain, ours, RSS
    assert any(ln.startswith("| MC (M=1), N=4 |") for ln in out.splitlines())
    assert any(ln.startswith("| exact, N=4, curvature on 2 |") for ln in out.splitlines())
    if importlib.util.find_spec("vivit") is not None:
        assert "routed vivit's Tensor.symeig" in out
        assert float(cells[6]) > 0 and float(cells[8]) > 0  # vivit DirDeriv time, ours / it
    else:
        assert "vivit-for-pytorch cannot run" in out
