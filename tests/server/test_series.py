"""The light series: SQLite's fast path equals the generic path over any Store."""

from __future__ import annotations

import time
from pathlib import Path

from curvscope.server.protocol import SnapshotMessage
from curvscope.server.series import read_series
from curvscope.server.store import SQLiteStore, Store
from tests.web.seeding import seed_run, synthetic_snapshot


class _OtherStore(Store):
    """A Store that is not an SQLiteStore (forwards to one), to take the generic path."""

    def __init__(self, inner: SQLiteStore) -> None:
        self.inner = inner

    def append_snapshot(self, message, received_at):  # type: ignore[no-untyped-def]
        return self.inner.append_snapshot(message, received_at)

    def append_event(self, message, received_at):  # type: ignore[no-untyped-def]
        return self.inner.append_event(message, received_at)

    def list_runs(self):  # type: ignore[no-untyped-def]
        return self.inner.list_runs()

    def get_run(self, run):  # type: ignore[no-untyped-def]
        return self.inner.get_run(run)

    def read_snapshots(self, run, start=None, end=None, max_points=None):  # type: ignore[no-untyped-def]
        return self.inner.read_snapshots(run, start, end, max_points)

    def read_snapshot(self, run, step):  # type: ignore[no-untyped-def]
        return self.inner.read_snapshot(run, step)

    def iter_snapshots(self, run):  # type: ignore[no-untyped-def]
        return self.inner.iter_snapshots(run)

    def read_events(self, run):  # type: ignore[no-untyped-def]
        return self.inner.read_events(run)

    def delete_run(self, run):  # type: ignore[no-untyped-def]
        return self.inner.delete_run(run)

    def close(self) -> None:
        self.inner.close()


def test_fast_and_generic_paths_agree(tmp_path: Path) -> None:
    db = tmp_path / "series.sqlite"
    seed_run(db, "r", range(0, 300, 7), k=20, k_stats=5, groups=("a", "b"))
    store = SQLiteStore(db)
    # a snapshot without groups still has a point (its loss)
    store.append_snapshot(SnapshotMessage(**synthetic_snapshot("r", 1000, groups=())), time.time())
    try:
        for max_points in (None, 10, 2):
            fast, n_fast = read_series(store, "r", max_points=max_points, top=4)
            slow, n_slow = read_series(_OtherStore(store), "r", max_points=max_points, top=4)
            assert fast == slow and n_fast == n_slow == 44
            assert fast[-1] == {"step": 1000, "loss": fast[-1]["loss"], "groups": []}
            assert len(fast) == (44 if max_points is None else max_points)
        full, _ = read_series(store, "r", max_points=None, top=4)
        expected = synthetic_snapshot("r", 7, k=20, k_stats=5, groups=("a", "b"))
        assert full[1]["loss"] == expected["loss"]
        assert full[1]["groups"] == [
            {"name": g["name"], "eigvals": g["eigvals"][:4]} for g in expected["groups"]
        ]
        assert read_series(store, "missing", max_points=5, top=3) == ([], 0)
    finally:
        store.close()
