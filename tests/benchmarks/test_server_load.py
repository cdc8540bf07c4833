"""Smoke test: ``benchmarks/server_load.py --quick`` runs end to end (no timing asserted).

SQLite rows only, unless ``CURVSCOPE_TEST_POSTGRES_URL`` names a PostgreSQL cluster
(``eval "$(bash .ci/postgres.sh)"``): then the SIGKILL row (PostgreSQL x 2 workers with
readers, one worker killed midway) runs too; the other PostgreSQL rows are left out to keep
the test short.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "server_load.py"
HEADER = "| row "


def _table(out: str) -> dict[str, dict[str, str]]:
    """The printed table as row name -> column -> cell."""
    lines = [ln for ln in out.splitlines() if ln.startswith("|") and not ln.startswith("|-")]
    header = [ln for ln in lines if ln.startswith(HEADER)]
    assert len(header) == 1, out
    columns = [c.strip() for c in header[0].strip("|").split("|")]
    rows = {}
    for line in lines:
        if line.startswith(HEADER):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(columns), line
        rows[cells[0]] = dict(zip(columns, cells, strict=True))
    return rows


def test_quick_run_prints_the_table_and_loses_nothing() -> None:
    postgres_url = os.environ.get("CURVSCOPE_TEST_POSTGRES_URL")
    argv = [sys.executable, str(SCRIPT), "--quick"]
    expected = ["sqlite", "sqlite+r"]
    if postgres_url:
        # the SIGKILL row is PostgreSQL x 2 workers + readers, with a worker killed midway
        argv += ["--seconds", "2", "--rows", "sqlite+r", "--kill", "--postgres-url", postgres_url]
        expected = ["sqlite+r", "pg2+r+kill"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    lines = out.splitlines()
    assert lines[0].startswith("machine: ") and "CPUs" in lines[0], out
    assert lines[1].startswith("command: "), out
    if not postgres_url:
        assert any(ln.startswith("skipped pg1, pg1+r, pg2, pg2+r: ") for ln in lines), out

    table = _table(out)
    assert list(table) == expected, out
    for name, row in table.items():
        assert int(row["acked"]) > 0, (name, out)
        assert row["lost"] == "0" and row["dup"] == "0", (name, out)
        assert float(row["snaps/s"]) > 0, (name, out)
        assert float(row["ack p95 ms"]) >= float(row["ack p50 ms"]) > 0, (name, out)
        assert float(row["i→b p50 ms"]) > 0, (name, out)  # the browsers saw snapshots
        assert float(row["peak RSS MiB"]) > 0, (name, out)
        if name.endswith("+r") or "+r+" in name:
            assert float(row["reads/s"]) >= 0, (name, out)  # a slow box may finish none
        else:
            assert row["reads/s"] == "—", (name, out)
    if postgres_url:
        kill_notes = [ln for ln in lines if ln.startswith("note, pg2+r+kill: SIGKILLed worker")]
        assert len(kill_notes) == 1, out
