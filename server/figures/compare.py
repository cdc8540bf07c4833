"""Several runs overlaid: the compare page's figures."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from curvscope.server.figures.base import (
    COLORS,
    DensityMode,
    Snapshot,
    _figure,
    _note,
    _relayout,
    plain,
)
from curvscope.server.figures.density import density_figure
from curvscope.server.figures.series import _trajectories

__all__ = ["compare_density_figure", "compare_loss_figure", "compare_trajectories_figure"]


def compare_density_figure(
    runs: Sequence[tuple[str, Snapshot]],
    group: str,
    *,
    mode: DensityMode = "density",
    n_bins: int = 40,
    uirevision: str = "compare-density",
) -> go.Figure:
    """The latest spectral density of several runs on shared bins (one trace per run)."""
    fig = density_figure(
        [(f"{run} @ step {snap['step']}", snap) for run, snap in runs],
        group,
        mode=mode,
        n_bins=n_bins,
        uirevision=uirevision,
    )
    title = {
        **fig.layout.title.to_plotly_json(),
        "text": plain(f"Spectral density, latest step — {group}"),
    }
    return _relayout(fig, title=title)


def compare_trajectories_figure(
    runs: Sequence[tuple[str, Sequence[Snapshot]]],
    group: str,
    *,
    top: int = 3,
    uirevision: str = "compare-eigvals",
) -> go.Figure:
    """λ_1 … λ_top over steps for several runs: colour = run, dash = k."""
    fig = _figure(
        f"Top-{top} eigenvalues over steps — {group}",
        uirevision,
        {"title": {"text": "step"}},
        {"type": "log", "title": {"text": "eigenvalue λ_k"}},
    )
    dashes = ("solid", "dash", "dot", "dashdot", "longdash")
    for r, (run, series) in enumerate(runs):
        for k, (steps, values) in enumerate(_trajectories(series, group, top)):
            fig.add_trace(
                go.Scatter(
                    _validate=False,
                    x=steps,
                    y=values,
                    mode="lines",
                    line={"color": COLORS[r % len(COLORS)], "dash": dashes[k % len(dashes)]},
                    name=f"{run} λ_{k + 1}",
                    legendgroup=run,
                )
            )
    if not fig.data:
        fig = _note(fig, "no eigenvalues in these runs")
    return fig


def compare_loss_figure(
    runs: Sequence[tuple[str, Sequence[Snapshot]]], *, uirevision: str = "compare-loss"
) -> go.Figure:
    """Training loss over steps for several runs (one trace per run)."""
    fig = _figure("Training loss", uirevision, {"title": {"text": "step"}}, {"title": "loss"})
    for r, (run, series) in enumerate(runs):
        fig.add_trace(
            go.Scatter(
                _validate=False,
                x=[s["step"] for s in series],
                y=[s["loss"] for s in series],
                mode="lines",
                line={"color": COLORS[r % len(COLORS)]},
                name=run,
            )
        )
    return fig
