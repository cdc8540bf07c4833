"""The step-trust figures and λ_min over steps (pure functions of snapshots and summaries)."""

from __future__ import annotations

import json

import plotly.graph_objects as go
import pytest

from curvscope.server import figures
from curvscope.server.summaries import snapshot_summary
from tests.helpers.messages import make_group, make_snapshot


def _trusted_group(name: str = "all") -> dict:
    # K = 5 eigenvalues; statistics (and trust) for the selected directions 0, 2, 3, 4
    return make_group(name, k=5, k_stats=4) | {
        "eigvals": [50.0, 10.0, 5.0, 1.0, 0.5],
        "directions": [0, 2, 3, 4],
        "trust_damping": [0.01, None, 2.0, None],
        "trust_bound": [0.5, -0.25, 0.0, -3.0],
        "newton_reduction": 0.75,
    }


def _valid(fig: go.Figure) -> dict:
    go.Figure(fig.to_dict())  # plotly's validator: raises on an invalid property

    def refuse(token: str) -> None:
        raise AssertionError(f"non-finite {token} in figure JSON")

    return json.loads(fig.to_json(), parse_constant=refuse)


def test_trust_figure_splits_the_directions_by_the_sign_of_their_bound() -> None:
    snap = make_snapshot(config={"step_trust": True}, groups=[_trusted_group()])
    fig = figures.trust_figure(snap, "all")
    _valid(fig)
    trusted, untrusted, zero = fig.data
    # statistics direction j belongs to eigvals[directions[j]]
    assert list(trusted.x) == [50.0, 1.0] and list(trusted.y) == [0.5, 0.0]
    assert list(untrusted.x) == [5.0, 0.5] and list(untrusted.y) == [-0.25, -3.0]
    assert trusted.name == "bound ≥ 0: trusted step (2 of 4)"
    assert untrusted.name == "bound < 0: no trusted step (2 of 4)"
    assert [tuple(c) for c in trusted.customdata] == [(0, "0.01"), (2, "2")]
    assert [tuple(c) for c in untrusted.customdata] == [(1, "none"), (3, "none")]
    assert list(zero.x) == [0.5, 50.0] and list(zero.y) == [0.0, 0.0]


def test_trust_figure_says_why_it_is_empty() -> None:
    plain = make_snapshot(groups=[make_group()])
    for snap, group, note in (
        (plain, "all", "no step trust at this step"),
        (plain, "missing", "no step trust at this step"),
        (
            make_snapshot(
                groups=[make_group(k=2, k_stats=0) | {"trust_damping": [], "trust_bound": []}]
            ),
            "all",
            "no directions at this step",
        ),
    ):
        fig = figures.trust_figure(snap, group)
        assert not fig.data and [a.text for a in fig.layout.annotations] == [note]


def test_step_figures_include_trust_only_for_runs_that_compute_it() -> None:
    with_trust = make_snapshot(groups=[_trusted_group()])
    assert "trust" in figures.step_figures(with_trust, "all")
    skipped = make_snapshot(config={"step_trust": True}, groups=[make_group()])
    assert "trust" in figures.step_figures(skipped, "all")  # the plot stays, with a note
    assert "trust" not in figures.step_figures(make_snapshot(), "all")


def _summary(step: int, loss: float, **groups: dict) -> dict:
    return {
        "step": step,
        "loss": loss,
        "optimizer": None,
        "groups": [{"name": n} | values for n, values in groups.items()],
    }


SUMMARIES = [
    _summary(0, 2.0, a={"trust_share": 0.5, "newton_reduction": 0.25, "hessian_min": -1.0}),
    _summary(10, 1.5, a={"trust_share": 0.25, "newton_reduction": 0.125, "hessian_min": None}),
    _summary(20, 1.75, a={"trust_share": None, "newton_reduction": None, "hessian_min": 0.5}),
    _summary(30, 1.0, a={"trust_share": 1.0, "newton_reduction": 0.5, "hessian_min": 0.25}),
]


def test_observed_loss_changes_pair_each_snapshot_with_the_next() -> None:
    at, change, nxt = figures.observed_loss_changes(SUMMARIES)
    assert at == [0, 10, 20] and nxt == [10, 20, 30]
    assert change == [1.5 - 2.0, 1.75 - 1.5, 1.0 - 1.75]
    # with every stored step known, a summary whose next snapshot was not read has none
    at, change, nxt = figures.observed_loss_changes(
        [SUMMARIES[0], SUMMARIES[1], SUMMARIES[3]], steps=[0, 10, 20, 30]
    )
    assert (at, change, nxt) == ([0], [-0.5], [10])


def test_newton_reduction_figure_against_the_observed_change() -> None:
    fig = figures.newton_reduction_figure(SUMMARIES, "a")
    _valid(fig)
    predicted, observed = fig.data
    assert list(predicted.x) == [0, 10, 30] and list(predicted.y) == [-0.25, -0.125, -0.5]
    assert list(observed.x) == [0, 10, 20] and list(observed.y) == [-0.5, 0.25, -0.75]
    assert list(observed.customdata) == [10, 20, 30]


def test_one_wild_prediction_does_not_squeeze_the_rest() -> None:
    """Predicted changes of −0.1…−0.4 and one of −120 (a quadratic model far off); the
    observed changes ±0.1: the y axis spans the ordinary values, a note names the outlier."""
    reductions = [0.1, 0.2, 120.0, 0.3, 0.4, 0.15]
    losses = [1.0, 0.9, 1.0, 0.9, 0.8, 0.9, 0.8]
    summaries = [
        _summary(10 * i, loss, a={"newton_reduction": r})
        for i, (loss, r) in enumerate(zip(losses, [*reductions, 0.2], strict=True))
    ]
    fig = figures.newton_reduction_figure(summaries, "a")
    _valid(fig)
    lo, hi = fig.layout.yaxis.range
    assert -1.0 < lo < -0.4 and 0.1 < hi < 1.0  # every value but −120 inside, and 0
    assert -120.0 in list(fig.data[0].y)  # still plotted (zoom out), not dropped
    (note,) = fig.layout.annotations
    assert note.text == "1 value beyond the y range (-120 … -120): zoom out to see them"
    tame = [s for s in summaries if s["groups"][0]["newton_reduction"] != 120.0]
    plain = figures.newton_reduction_figure(tame, "a")
    assert plain.layout.yaxis.range is None and not plain.layout.annotations


def test_newton_reduction_figure_sums_the_groups_when_there_are_several() -> None:
    two = [
        _summary(0, 2.0, a={"newton_reduction": 0.25}, b={"newton_reduction": 0.5}),
        _summary(5, 1.0, a={"newton_reduction": 0.125}, b={"newton_reduction": None}),
    ]
    fig = figures.newton_reduction_figure(two, "b")
    _valid(fig)
    predicted, total, observed = fig.data
    assert list(predicted.x) == [0] and list(predicted.y) == [-0.5]
    assert total.name == "predicted, all groups" and total.visible == "legendonly"
    assert list(total.x) == [0, 5] and list(total.y) == [-0.75, -0.125]
    assert list(observed.y) == [-1.0]


def test_trust_share_and_hessian_min_over_steps() -> None:
    share = figures.trust_share_figure(SUMMARIES, "a")
    _valid(share)
    assert list(share.data[0].x) == [0, 10, 30] and list(share.data[0].y) == [0.5, 0.25, 1.0]
    lam_min = figures.hessian_min_figure(SUMMARIES, "a")
    _valid(lam_min)
    line, zero = lam_min.data
    assert list(line.x) == [0, 20, 30] and list(line.y) == [-1.0, 0.5, 0.25]
    assert list(zero.x) == [0, 30] and list(zero.y) == [0.0, 0.0]


def test_summary_series_figures_follow_what_the_run_has() -> None:
    assert set(figures.summary_series_figures(SUMMARIES, "a")) == {
        "trust_share",
        "newton",
        "hessian_min",
    }
    hessian_only = [_summary(0, 1.0, a={"hessian_min": -2.0, "newton_reduction": None})]
    assert set(figures.summary_series_figures(hessian_only, "a")) == {"hessian_min"}
    assert figures.summary_series_figures(SUMMARIES, "other") == {}
    for fig in (
        figures.trust_share_figure([], "a"),
        figures.newton_reduction_figure([], "a"),
        figures.hessian_min_figure([], "a"),
    ):
        assert not fig.data and len(fig.layout.annotations) == 1


def test_figures_from_the_summaries_of_wire_snapshots() -> None:
    snaps = [
        make_snapshot(step=0, loss=2.0, groups=[_trusted_group()]),
        make_snapshot(step=4, loss=1.5, groups=[_trusted_group() | {"newton_reduction": 0.0}]),
    ]
    summaries = [snapshot_summary(s) for s in snaps]
    share = figures.trust_share_figure(summaries, "all")
    assert list(share.data[0].y) == [pytest.approx(2 / 4)] * 2  # bounds 0.5 and 0.0 count
    predicted, observed = figures.newton_reduction_figure(summaries, "all").data
    assert list(predicted.y) == [-0.75, -0.0] and list(observed.y) == [-0.5]
