"""What the run view and the report draw: the figures of one step and over steps of a group."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import plotly.graph_objects as go

from curvscope.server.figures.base import DensityMode, Snapshot, _eigvals
from curvscope.server.figures.density import density_figure
from curvscope.server.figures.directions import gamma_figure, overlap_figure, snr_figure
from curvscope.server.figures.hessian import has_hessian, hessian_figure
from curvscope.server.figures.noise import has_noise, noise_figure
from curvscope.server.figures.series import (
    DEFAULT_SMOOTH_WINDOW,
    Smoothing,
    eigval_trajectories_figure,
)
from curvscope.server.figures.trust import has_trust, trust_figure

__all__ = ["Overlay", "series_figures", "step_figures"]


Overlay = Literal["none", "first", "latest", "both"]


def step_figures(
    current: Snapshot,
    group: str,
    *,
    first: Snapshot | None = None,
    latest: Snapshot | None = None,
    overlay: Overlay = "none",
    mode: DensityMode = "density",
    run: str = "",
) -> dict[str, go.Figure]:
    """The figures of one step of one group: ``density``, ``snr``, ``gamma``, ``overlap``,
    ``hessian`` when the run computes the Hessian (:func:`has_hessian` of ``current``) and
    ``noise`` when it computes the gradient-noise spectrum (:func:`has_noise`).

    The density's bins cover the eigenvalues of ``current``, ``first`` and ``latest`` (when
    given), so they stay put while a slider moves between steps. ``overlay`` adds the first
    and/or latest snapshot's density as extra traces (skipped when it is ``current``).
    """
    entries: list[tuple[str, Snapshot]] = [(f"step {current['step']}", current)]
    for which, snap in (("first", first), ("latest", latest)):
        if snap is None or overlay not in (which, "both") or snap["step"] == current["step"]:
            continue
        entries.append((f"{which} (step {snap['step']})", snap))
    range_values = _eigvals(first, group) + _eigvals(latest, group)
    rev = f"{run}:{group}"
    out = {
        "density": density_figure(
            entries, group, mode=mode, range_values=range_values, uirevision=f"{rev}:density:{mode}"
        ),
        "snr": snr_figure(current, group, uirevision=f"{rev}:snr"),
        "gamma": gamma_figure(current, group, uirevision=f"{rev}:gamma"),
        "overlap": overlap_figure(current, group, uirevision=f"{rev}:overlap"),
    }
    if has_hessian(current):
        out["hessian"] = hessian_figure(current, group, uirevision=f"{rev}:hessian")
    if has_noise(current):
        out["noise"] = noise_figure(current, group, mode=mode, uirevision=f"{rev}:noise:{mode}")
    if has_trust(current):
        out["trust"] = trust_figure(current, group, uirevision=f"{rev}:trust")
    return out


def series_figures(
    series: Sequence[Snapshot],
    group: str,
    *,
    top: int = 8,
    run: str = "",
    smooth: Smoothing = "none",
    window: int = DEFAULT_SMOOTH_WINDOW,
) -> dict[str, go.Figure]:
    """The figures over steps of one group: ``eigvals`` (top-k trajectories, smoothed as
    ``smooth`` says, with the optimizer's stability threshold)."""
    return {
        "eigvals": eigval_trajectories_figure(
            series,
            group,
            top=top,
            smooth=smooth,
            window=window,
            uirevision=f"{run}:{group}:eigvals",
        )
    }
