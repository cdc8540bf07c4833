"""Light-weight series for the plots over steps: step, loss and the top eigenvalues only.

The plots over steps (loss, eigenvalue trajectories) need a few numbers per snapshot, but a
stored snapshot of K = 1,000 directions is ~100 kB of JSON; decoding hundreds of them in
Python costs seconds. For :class:`~curvscope.server.store.SQLiteStore` (schema version 1)
the few numbers are extracted inside SQLite (its C JSON functions) on a separate read-only
connection; any other store falls back to :meth:`Store.read_snapshots`. Both paths return
the same thing (``tests/server/test_series.py``).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from curvscope.server.store import SQLiteStore, Store, downsample_indices

__all__ = ["read_series"]

_SQLITE_LAYOUT = 1
"""The SQLite schema version whose table layout the fast path knows."""

_SERIES_SQL = """
SELECT s.step, s.payload ->> '$.loss', g.value ->> '$.name', g.value -> '$.eigvals'
FROM snapshots AS s LEFT JOIN json_each(s.payload, '$.groups') AS g
WHERE s.run = ? AND s.step IN (SELECT value FROM json_each(?))
ORDER BY s.step, g.key
"""


def read_series(
    store: Store, run: str, *, max_points: int | None, top: int
) -> tuple[list[dict[str, Any]], int]:
    """Down-sampled series of ``run`` and the run's total number of snapshots.

    Each entry is ``{"step", "loss", "groups": [{"name", "eigvals": [<= top values]}]}``
    (the shape :mod:`curvscope.server.figures` reads), in step order; the down-sampling is
    :func:`~curvscope.server.store.downsample_indices` (first and latest kept).
    """
    if isinstance(store, SQLiteStore) and store.schema_version() == _SQLITE_LAYOUT:
        return _read_sqlite(store, run, max_points, top)
    summary = store.get_run(run)
    total = summary.snapshots if summary is not None else 0
    series = []
    for record in store.read_snapshots(run, max_points=max_points):
        snap = record.to_dict()
        series.append(
            {
                "step": snap["step"],
                "loss": snap["loss"],
                "groups": [
                    {"name": g["name"], "eigvals": g["eigvals"][:top]} for g in snap["groups"]
                ],
            }
        )
    return series, total


def _head(array_text: str, top: int) -> list[float]:
    """The first ``top`` numbers of a JSON array of numbers, parsing only those.

    SQLite hands back the array with each number's original text, so this is exact
    (re-encoding through SQL REAL values would round to 15 digits).
    """
    inner = array_text.strip()[1:-1]
    if not inner.strip():
        return []
    return [float(v) for v in inner.split(",", top)[:top]]


def _read_sqlite(
    store: SQLiteStore, run: str, max_points: int | None, top: int
) -> tuple[list[dict[str, Any]], int]:
    conn = sqlite3.connect(f"{store.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
    try:
        steps = [
            row[0]
            for row in conn.execute(
                "SELECT step FROM snapshots WHERE run = ? ORDER BY step", (run,)
            )
        ]
        chosen = [steps[i] for i in downsample_indices(len(steps), max_points)]
        series: list[dict[str, Any]] = []
        for step, loss, name, eigvals in conn.execute(_SERIES_SQL, (run, json.dumps(chosen))):
            if not series or series[-1]["step"] != step:
                series.append({"step": step, "loss": float(loss), "groups": []})
            if name is not None:  # a snapshot without groups has one row of NULLs
                series[-1]["groups"].append({"name": name, "eigvals": _head(eigvals, top)})
        return series, len(steps)
    finally:
        conn.close()
