"""The edge-of-stability threshold over the top eigenvalue trajectories: drawn from each
snapshot's optimizer (so it follows a learning-rate schedule), and replaced by a note for
an adaptive optimizer. Expected thresholds are computed here from lr and β (the bounds of
GD and heavy-ball momentum on a quadratic; ``tests/probe/loop/test_probe_optimizer.py``
checks them against torch's SGD)."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest

from curvscope.server import figures


def _snap(step: int, lam_max: float, optimizer: dict | None) -> dict:
    snap = {
        "run": "r",
        "step": step,
        "loss": 1.0,
        "groups": [{"name": "all", "eigvals": [lam_max, 1.0]}],
    }
    if optimizer is not None:
        snap["optimizer"] = optimizer
    return snap


def _sgd(lr: float, momentum: float = 0.0, **extra: object) -> dict:
    return {"name": "SGD", "lr": lr, "momentum": momentum, "adaptive": False} | extra


def _threshold(fig: go.Figure) -> go.Scatter:
    (line,) = [t for t in fig.data if t.name in figures.THRESHOLD_NAMES]
    return line


def test_the_threshold_follows_the_learning_rate_schedule_with_momentum() -> None:
    rates = [0.1, 0.1, 0.05, 0.01]
    series = [_snap(100 * i, 5.0 + i, _sgd(lr, 0.9)) for i, lr in enumerate(rates)]
    fig = figures.eigval_trajectories_figure(series, "all")
    line = _threshold(fig)
    assert line.name == "2(1+β)/η"
    assert list(line.x) == [0, 100, 200, 300]
    assert list(line.y) == pytest.approx([2 * 1.9 / lr for lr in rates])
    assert [list(c) for c in line.customdata] == [[lr, 0.9] for lr in rates]
    assert fig.data[-1] is line  # drawn over the trajectories
    assert not fig.layout.annotations
    go.Figure(fig.to_dict())


def test_plain_sgd_draws_two_over_eta() -> None:
    fig = figures.eigval_trajectories_figure([_snap(0, 3.0, _sgd(0.25))], "all")
    line = _threshold(fig)
    assert line.name == "2/η" and list(line.y) == [8.0]


def test_nesterov_and_dampening() -> None:
    nesterov = _sgd(0.1, 0.9, nesterov=True)
    assert figures.stability_threshold(nesterov) == pytest.approx(2 * 1.9 / (0.1 * 2.8))
    fig = figures.eigval_trajectories_figure([_snap(0, 1.0, nesterov)], "all")
    assert _threshold(fig).name == "2(1+β)/(η(1+2β))"
    assert figures.stability_threshold(_sgd(0.1, 0.9, dampening=0.5)) == pytest.approx(
        2 * 1.9 / 0.05
    )


def test_an_adaptive_optimizer_gets_a_note_and_no_line() -> None:
    adam = {"name": "AdamW", "lr": 1e-3, "momentum": None, "adaptive": True}
    fig = figures.eigval_trajectories_figure([_snap(s, 2.0, adam) for s in (0, 10)], "all")
    assert not [t for t in fig.data if t.name in figures.THRESHOLD_NAMES]
    (note,) = fig.layout.annotations
    assert note.text.startswith("2/η threshold not applicable: adaptive optimizer AdamW")
    assert "the GGN is not the preconditioned curvature" in note.text
    assert figures.stability_threshold(adam) is None
    go.Figure(fig.to_dict())


def test_snapshots_without_an_optimizer_leave_gaps_or_no_line() -> None:
    plain = figures.eigval_trajectories_figure([_snap(0, 2.0, None)], "all")
    assert [t.name for t in plain.data] == ["λ_1", "λ_2"] and not plain.layout.annotations
    series = [_snap(0, 2.0, _sgd(0.1)), _snap(10, 2.0, None), _snap(20, 2.0, _sgd(0.2))]
    line = _threshold(figures.eigval_trajectories_figure(series, "all"))
    assert list(line.y) == [20.0, None, 10.0] and not line.connectgaps


def test_a_zero_learning_rate_has_no_threshold() -> None:
    series = [_snap(0, 2.0, _sgd(0.0)), _snap(10, 2.0, _sgd(0.5))]
    line = _threshold(figures.eigval_trajectories_figure(series, "all"))
    assert list(line.y) == [None, 4.0]


def test_the_threshold_is_drawn_with_smoothing_too() -> None:
    series = [_snap(10 * i, 1.0 + i, _sgd(0.1)) for i in range(6)]
    fig = figures.eigval_trajectories_figure(series, "all", smooth="median", window=3)
    assert list(_threshold(fig).y) == pytest.approx([20.0] * 6)
