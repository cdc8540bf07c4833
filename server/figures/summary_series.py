"""Plots over steps from the per-snapshot summaries (:mod:`curvscope.server.summaries`):
step trust, predicted vs observed loss change, λ_min."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from curvscope.server.figures.base import (
    _GREY,
    COLORS,
    _figure,
    _fmt,
    _note,
    _quantile,
    _relayout,
)
from curvscope.server.figures.trust import _TRUSTED, Summary

__all__ = [
    "hessian_min_figure",
    "newton_reduction_figure",
    "observed_loss_changes",
    "summary_series_figures",
    "trust_share_figure",
]


def _summary_of(summary: Summary, group: str) -> Mapping[str, Any] | None:
    return next((g for g in summary.get("groups") or () if g.get("name") == group), None)


def _summary_points(
    summaries: Sequence[Summary], group: str, key: str
) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of the summaries whose group has a number under ``key``."""
    steps, values = [], []
    for summary in summaries:
        found = _summary_of(summary, group)
        value = None if found is None else found.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            steps.append(summary["step"])
            values.append(float(value))
    return steps, values


def _series_trace(
    steps: Sequence[int], values: Sequence[float], name: str, color: str, hover: str, **extra: Any
) -> go.Scatter:
    return go.Scatter(
        _validate=False,
        x=list(steps),
        y=list(values),
        mode="lines+markers" if len(steps) < 60 else "lines",
        marker={"size": 5},
        line={"color": color, "width": 1.5},
        name=name,
        hovertemplate=f"step %{{x}}<br>{hover}=%{{y:.4g}}<extra></extra>",
        **extra,
    )


def trust_share_figure(
    summaries: Sequence[Summary], group: str, *, uirevision: str = "trust-share"
) -> go.Figure:
    """The share of the group's K' directions with a non-negative bound (``trust_share``),
    over steps: one point per summary that has it."""
    fig = _figure(
        f"Directions a Newton step could use — {group}",
        uirevision,
        {"title": {"text": "step"}},
        {"title": {"text": "share of directions with bound ≥ 0"}, "range": [-0.02, 1.02]},
    )
    steps, shares = _summary_points(summaries, group, "trust_share")
    if not steps:
        return _note(fig, "no step trust yet")
    fig.add_trace(_series_trace(steps, shares, "trusted share", _TRUSTED, "share"))
    return fig


def observed_loss_changes(
    summaries: Sequence[Summary], steps: Sequence[int] | None = None
) -> tuple[list[int], list[float], list[int]]:
    """``(at, loss_next − loss_now, next)`` for each summary whose next scheduled snapshot
    is among ``summaries`` too.

    ``steps``: every stored step of the run, ascending (its successor of a step is that
    step's next snapshot); ``None``: ``summaries`` are consecutive snapshots already.
    """
    by_step = {s["step"]: s for s in summaries}
    ordered = sorted(by_step)
    if steps is None:
        successor = dict(itertools.pairwise(ordered))
    else:
        successor = dict(itertools.pairwise(sorted(steps)))
    at, change, nxt = [], [], []
    for step in ordered:
        after = successor.get(step)
        now, later = by_step[step].get("loss"), by_step.get(after, {}).get("loss")
        if after is None or not isinstance(now, int | float) or not isinstance(later, int | float):
            continue
        at.append(step)
        change.append(float(later) - float(now))
        nxt.append(after)
    return at, change, nxt


def newton_reduction_figure(
    summaries: Sequence[Summary],
    group: str,
    *,
    steps: Sequence[int] | None = None,
    uirevision: str = "newton",
) -> go.Figure:
    """The loss change the damped Newton step predicts against the one observed.

    Traces, in order: ``predicted`` (``−newton_reduction`` of this group: the change its
    GGN quadratic model predicts for the damped Newton step, ``<= 0``), ``predicted, all
    groups`` (the sum over groups, the block-diagonal prediction for the whole model; only
    with several groups) and ``observed`` (``loss_next − loss_now`` between this snapshot
    and the next scheduled one, plotted at this snapshot's step; the optimizer took its own
    steps in between, on other batches). ``steps``: as in :func:`observed_loss_changes`.
    """
    fig = _figure(
        f"Predicted vs observed loss change — {group}",
        uirevision,
        {"title": {"text": "step"}},
        {"title": {"text": "loss change to the next snapshot"}},
    )
    at, predicted = _summary_points(summaries, group, "newton_reduction")
    if not at:
        return _note(fig, "no step trust yet")
    fig.add_trace(
        _series_trace(
            at, [-r for r in predicted], "predicted: damped Newton step", COLORS[0], "predicted"
        )
    )
    totals: list[tuple[int, float]] = []
    several = False
    for summary in summaries:
        values = [
            g.get("newton_reduction")
            for g in summary.get("groups") or ()
            if isinstance(g.get("newton_reduction"), int | float)
        ]
        several = several or len(values) > 1
        if values:
            totals.append((summary["step"], -math.fsum(values)))
    if several:
        fig.add_trace(
            _series_trace(
                [t[0] for t in totals],
                [t[1] for t in totals],
                "predicted, all groups",
                COLORS[4],
                "all groups",
                visible="legendonly",
            )
        )
    changed_at, change, nxt = observed_loss_changes(summaries, steps)
    observed = _series_trace(changed_at, change, "observed: loss_next − loss", COLORS[3], "")
    observed.customdata = nxt
    observed.hovertemplate = "step %{x} → %{customdata}<br>observed change=%{y:.4g}<extra></extra>"
    fig.add_trace(observed)
    return _robust_y(fig, [-r for r in predicted] + [float(c) for c in change])


def _robust_y(fig: go.Figure, values: Sequence[float]) -> go.Figure:
    """Keep a few extreme values from squeezing the rest into a line: the y axis spans
    Tukey's far fences ``Q1 − 3·IQR``, ``Q3 + 3·IQR`` of ``values`` (and 0), padded by 5 %,
    when some value lies beyond them; a note at the top says how many and how far (their
    points are cut off by the frame; zooming out or the hover shows them)."""
    ordered = sorted(v for v in values if math.isfinite(v))
    if len(ordered) < 4:
        return fig
    q1, q3 = _quantile(ordered, 0.25), _quantile(ordered, 0.75)
    spread = 3 * (q3 - q1)
    lo, hi = q1 - spread, q3 + spread
    outside = [v for v in ordered if v < lo or v > hi]
    if not outside or spread <= 0:
        return fig
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    pad = 0.05 * (hi - lo)
    yaxis = {**fig.layout.yaxis.to_plotly_json(), "range": [lo - pad, hi + pad]}
    note = {
        "text": f"{len(outside)} value{'s' if len(outside) > 1 else ''} beyond the y range "
        f"({_fmt(min(outside))} … {_fmt(max(outside))}): zoom out to see them",
        "xref": "paper",
        "yref": "paper",
        "x": 1.0,
        "y": 1.0,
        "xanchor": "right",
        "yanchor": "bottom",
        "showarrow": False,
        "font": {"size": 11, "color": "#666"},
    }
    return _relayout(fig, yaxis=yaxis, annotations=[note])


def hessian_min_figure(
    summaries: Sequence[Summary], group: str, *, uirevision: str = "hessian-min"
) -> go.Figure:
    """The Hessian's smallest eigenvalue λ_min (``hessian_min``) over steps (linear y, it may
    be negative), with the zero line: one point per summary that has it."""
    fig = _figure(
        f"Smallest Hessian eigenvalue over steps — {group}",
        uirevision,
        {"title": {"text": "step"}},
        {"title": {"text": "λ_min of the Hessian ∇²L"}},
    )
    steps, values = _summary_points(summaries, group, "hessian_min")
    if not steps:
        return _note(fig, "no Hessian yet")
    fig.add_trace(_series_trace(steps, values, "λ_min(H)", COLORS[4], "λ_min"))
    fig.add_trace(
        go.Scatter(
            _validate=False,
            x=[steps[0], steps[-1]],
            y=[0.0, 0.0],
            mode="lines",
            line={"color": _GREY, "dash": "dash", "width": 1.5},
            name="0",
            hoverinfo="skip",
        )
    )
    return fig


def summary_series_figures(
    summaries: Sequence[Summary],
    group: str,
    *,
    steps: Sequence[int] | None = None,
    run: str = "",
) -> dict[str, go.Figure]:
    """The figures over steps drawn from the stored summaries, for the quantities the run
    has: ``trust_share`` and ``newton`` (step trust), ``hessian_min`` (the Hessian).
    ``steps``: every stored step (see :func:`observed_loss_changes`)."""
    rev = f"{run}:{group}"
    out: dict[str, go.Figure] = {}
    if _summary_points(summaries, group, "newton_reduction")[0]:
        out["trust_share"] = trust_share_figure(summaries, group, uirevision=f"{rev}:trust_share")
        out["newton"] = newton_reduction_figure(
            summaries, group, steps=steps, uirevision=f"{rev}:newton"
        )
    if _summary_points(summaries, group, "hessian_min")[0]:
        out["hessian_min"] = hessian_min_figure(summaries, group, uirevision=f"{rev}:hessian_min")
    return out
