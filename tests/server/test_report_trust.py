"""The offline report carries the step-trust figures and λ_min over steps where the run has them."""

from __future__ import annotations

import time
from pathlib import Path

from curvscope.server.protocol import SnapshotMessage
from curvscope.server.report import render_report
from curvscope.server.stores import SQLiteStore
from tests.server.test_report import _figures
from tests.web.seeding import synthetic_snapshot

TRUST = {
    "trust_damping": [0.5, None, 0.25],
    "trust_bound": [1.0, -1.0, 0.5],
    "newton_reduction": 0.125,
    "hessian_eigvals": [3.0],
    "hessian_min": -0.5,
}


def test_report_has_the_trust_figures_of_a_run_with_trust(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "runs.sqlite")
    try:
        for step in (0, 10, 20):
            for run, extra in (("trust", TRUST), ("plain", {})):
                message = synthetic_snapshot(run, step, k=5, k_stats=3)
                message["groups"] = [g | extra for g in message["groups"]]
                store.append_snapshot(SnapshotMessage(**message), time.time())
        figures = _figures(render_report(store, "trust"))
        plain = _figures(render_report(store, "plain"))
    finally:
        store.close()
    for name in ("trust", "trust_share", "newton", "hessian_min"):
        assert f"g0-{name}" in figures and f"g0-{name}" not in plain
    trusted, untrusted, _ = figures["g0-trust"]["data"]
    assert trusted["y"] == [1.0, 0.5] and untrusted["y"] == [-1.0]
    assert figures["g0-trust_share"]["data"][0]["y"] == [2 / 3] * 3
    assert figures["g0-hessian_min"]["data"][0]["y"] == [-0.5] * 3
