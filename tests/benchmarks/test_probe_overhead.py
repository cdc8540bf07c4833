"""Smoke test of benchmarks/probe_overhead.py (the table, not the timings)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "probe_overhead.py"


def test_quick_run_prints_the_table() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split("  ")[0].strip(): line.split() for line in result.stdout.splitlines()}
    for variant in ("no probe", "unscheduled", "in-loop scheduled", "held-out scheduled"):
        assert variant in rows, result.stdout
    assert rows["no probe"][-1] == "1.000"
