"""``curvscope report``: a self-contained HTML file from a real SQLite database."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import plotly
import pytest

from curvscope.server.cli import main
from curvscope.server.protocol import EventMessage, SnapshotMessage
from curvscope.server.report import render_report
from curvscope.server.stores import SQLiteStore
from tests.web.seeding import seed_run, synthetic_snapshot


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "runs.sqlite"
    seed_run(path, "alpha", range(0, 60, 10), k=25, k_stats=10, groups=("l1", "l2"))
    store = SQLiteStore(path)
    store.append_event(
        EventMessage(run="alpha", step=50, wall_time=1.0, message="NaN <loss> detected"),
        time.time(),
    )
    store.append_event(EventMessage(run="crashed", wall_time=2.0, message="OOM"), time.time())
    store.close()
    return path


def _figures(text: str) -> dict[str, dict]:
    """div id -> figure JSON of every draw(...) call in the report."""
    found = {}
    for div, body in re.findall(
        r'draw\("([^"]+)", (\{.*?\})\);\n?(?=draw\(|</script>)', text, re.S
    ):
        found[div] = json.loads(body)
    return found


def test_report_command_writes_a_self_contained_file(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "alpha.html"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "curvscope.server.cli",
            "report",
            "alpha",
            "--db",
            str(db),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    text = out.read_text(encoding="utf-8")
    plotly_js = (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_text()
    assert plotly_js in text  # inlined
    own = text.replace(plotly_js, "")
    assert "<script src=" not in own and "http" not in own  # nothing else is fetched
    figs = _figures(text)
    expected = {"loss"} | {
        f"g{g}-{n}" for g in (0, 1) for n in ("density", "eigvals", "snr", "gamma", "overlap")
    }
    assert set(figs) == expected
    assert len(figs["loss"]["data"][0]["x"]) == 6
    density = figs["g0-density"]["data"]
    assert [t["name"] for t in density] == [
        "step 50 (K=25)",
        "first (step 0) (K=25)",
        "step 50, smoothed (KDE)",
        "first (step 0), smoothed (KDE)",
    ]
    assert "NaN &lt;loss&gt; detected" in text  # events shown, escaped
    assert text.count("K' = 10, backend backpack</p>") == 2  # each group's header


def test_report_group_header_names_the_backend(tmp_path: Path) -> None:
    db, out = tmp_path / "func.sqlite", tmp_path / "func.html"
    store = SQLiteStore(db)
    message = synthetic_snapshot("func-run", 0, k=5, k_stats=5) | {"config": {"backend": "func"}}
    store.append_snapshot(SnapshotMessage(**message), time.time())
    store.close()
    assert main(["report", "func-run", "--db", str(db), "-o", str(out)]) == 0
    assert "K = 5, K' = 5, backend func</p>" in out.read_text(encoding="utf-8")


def test_report_of_a_run_without_snapshots_says_so(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "crashed.html"
    assert main(["report", "crashed", "--db", str(db), "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "This run has no snapshots." in text and "OOM" in text


def test_report_errors(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "nope", "--db", str(db), "-o", str(tmp_path / "x.html")]) == 1
    assert "no run named 'nope'" in capsys.readouterr().err
    assert main(["report", "alpha", "--db", str(tmp_path / "missing.sqlite")]) == 2
    assert "no database" in capsys.readouterr().err
    assert not (tmp_path / "missing.sqlite").exists()


def test_report_has_the_noise_and_hessian_figures_of_a_run_with_them(tmp_path: Path) -> None:
    """Was: the report's list of optional figures missed ``noise`` and ``hessian``: runs with
    ``gradient_spectrum=True`` or ``hessian_top_k`` lost those plots in the report."""
    extra = {
        "gradient_eigvals": [4.0, 1.0],
        "gradient_moment_eigvals": [5.0, 1.0, 0.5],
        "hessian_eigvals": [3.0, 1.0],
        "hessian_min": -0.5,
    }
    store = SQLiteStore(tmp_path / "runs.sqlite")
    try:
        for run, fields in (("rich", extra), ("plain", {})):
            message = synthetic_snapshot(run, 0, k=5, k_stats=3)
            message["groups"] = [g | fields for g in message["groups"]]
            store.append_snapshot(SnapshotMessage(**message), time.time())
        rich = _figures(render_report(store, "rich"))
        plain = _figures(render_report(store, "plain"))
    finally:
        store.close()
    for name in ("noise", "hessian"):
        assert f"g0-{name}" in rich and f"g0-{name}" not in plain
    names = [t["name"] for t in rich["g0-noise"]["data"]]
    assert names[1].startswith("gradient covariance (K=2, tr C = 5")
