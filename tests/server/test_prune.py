"""Retention: ``curvscope prune`` and ``serve --retention`` on real databases and servers."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from curvscope.server.cli import main
from curvscope.server.protocol import SnapshotMessage
from curvscope.server.prune import parse_duration
from curvscope.server.stores import SQLiteStore
from tests.helpers.messages import make_snapshot
from tests.helpers.server_process import running_server

HOUR = 3600.0


def _seed(db: Path) -> None:
    """Run "old": steps 0..9 two days ago; run "new": steps 0..9 now."""
    store = SQLiteStore(db)
    now = time.time()
    for step in range(10):
        store.append_snapshot(SnapshotMessage(**make_snapshot("old", step)), now - 48 * HOUR)
        store.append_snapshot(SnapshotMessage(**make_snapshot("new", step)), now)
    store.close()


def _steps(db: Path) -> dict[str, list[int]]:
    store = SQLiteStore(db)
    try:
        return {r.run: store.list_steps(r.run) for r in store.list_runs()}
    finally:
        store.close()


def test_durations() -> None:
    assert parse_duration("90s") == 90 and parse_duration("2w") == 14 * 24 * HOUR
    assert parse_duration("1.5h") == 1.5 * HOUR and parse_duration("30") == 30
    for bad in ("", "3y", "-1d", "0s"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_prune_drops_old_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "db.sqlite"
    _seed(db)
    assert main(["prune", "--db", str(db), "--older-than", "1d", "--drop-runs"]) == 0
    assert "10 snapshots deleted, 1 runs removed" in capsys.readouterr().out
    assert _steps(db) == {"new": list(range(10))}


def test_prune_thins_old_snapshots_and_the_views_keep_working(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    _seed(db)
    assert main(["prune", "--db", str(db), "--older-than", "1d", "--keep-every", "4"]) == 0
    assert _steps(db) == {"old": [0, 4, 8, 9], "new": list(range(10))}
    with running_server(db) as server:
        for step in (None, 4, 9):
            params = {} if step is None else {"step": step}
            figures = httpx.get(server.url("/api/runs/old/figures"), params=params, timeout=30)
            assert figures.status_code == 200
            body = figures.json()
            assert body["steps"] == [0, 4, 8, 9] and body["step"] == (9 if step is None else step)
        assert httpx.get(server.url("/api/runs/old/figures"), params={"step": 5}).status_code == 404


def test_prune_refuses_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "db.sqlite")
    assert main(["prune", "--db", db, "--older-than", "1d", "--keep-every", "0"]) == 2
    with pytest.raises(SystemExit):
        main(["prune", "--db", db, "--older-than", "soon", "--drop-runs"])
    with pytest.raises(SystemExit):  # one rule or the other
        main(["prune", "--db", db, "--older-than", "1d"])


def test_serve_retention_removes_old_runs(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    _seed(db)
    with running_server(db, extra_args=["--retention", "1d"]) as server:
        deadline = time.monotonic() + 30
        runs = None
        while time.monotonic() < deadline:
            runs = [r["run"] for r in httpx.get(server.url("/api/runs"), timeout=10).json()]
            if runs == ["new"]:
                break
        assert runs == ["new"]
