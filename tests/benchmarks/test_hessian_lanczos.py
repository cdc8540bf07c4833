"""Smoke test: ``benchmarks.hessian_lanczos --quick`` runs end to end (~6 s on an idle CPU)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_prints_every_row() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.hessian_lanczos", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,  # generous for a busy machine; it takes ~6 s on an idle one
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("machine: ") and "torch " in lines[0]
    (ref,) = [ln for ln in lines if ln.startswith("reference λ_max = ")]
    assert "converged: True" in ref
    kinds = ["lanczos", "lanczos-for", "power"]
    if importlib.util.find_spec("pyhessian") is not None:
        kinds.append("pyhessian")
    else:
        assert any(ln.startswith("pyhessian cannot be imported") for ln in lines)
    cells = {}
    for kind in kinds:
        rows = [ln for ln in lines if ln.startswith(f"| {kind} |")]
        assert len(rows) == 1, (kind, proc.stdout)
        cells[kind] = [c.strip() for c in rows[0].strip("|").split("|")]
        row = cells[kind]
        assert len(row) == 10, row
        assert int(row[2]) > 0  # products
        assert float(row[3]) > 0 and float(row[4]) > 0  # time, ratio
        assert float(row[6]) >= 0  # relative error
        assert float(row[8]) > 0  # peak RSS
    for kind in ("lanczos", "lanczos-for"):  # the residual test guarantees the accuracy
        assert float(cells[kind][6]) < 1e-3
        assert int(cells[kind][7]) <= int(cells[kind][2])  # the oracle needs no more
