"""The gradient-noise spectrum over the GGN's (``gradient_spectrum=True``)."""

from __future__ import annotations

import math

import plotly.graph_objects as go

from curvscope.server.figures.base import (
    COLORS,
    DensityMode,
    Snapshot,
    _figure,
    _fmt,
    _note,
    find_group,
)
from curvscope.server.figures.density import _density_trace, _kde_trace, log_edges

__all__ = ["has_noise", "noise_figure"]


def has_noise(snapshot: Snapshot) -> bool:
    """Whether the run computes the gradient-noise spectrum or this step has it."""
    if (snapshot.get("config") or {}).get("gradient_spectrum", False):
        return True
    return any(g.get("gradient_eigvals") is not None for g in snapshot.get("groups", ()))


def noise_figure(
    snapshot: Snapshot,
    group: str,
    *,
    mode: DensityMode = "density",
    n_bins: int = 40,
    uirevision: str = "noise",
) -> go.Figure:
    """The gradient-noise spectrum over the GGN's at this step, on shared log-spaced bins.

    Traces, in order: ``GGN`` (the curvature eigenvalues), ``gradient covariance`` (the
    eigenvalues of ``C``, the covariance over samples of ``N·g_n``: along a GGN direction
    ``e_kᵀ C e_k`` is the variance behind SNR(γ_k)) and ``second moment`` (uncentred,
    hidden until clicked in the legend) as histograms, then the first two smoothed
    (:func:`_kde_trace`, as in :func:`density_figure`). The covariance trace's name carries
    ``tr C`` and ``tr C / ‖g‖²``, the simple noise scale (McCandlish et al., 2018) from this
    batch.
    The two spectra have different units (curvature, squared gradient): the overlay compares
    their shapes and ranks, not their heights.
    """
    y_title = "density per decade" if mode == "density" else "number of eigenvalues"
    fig = _figure(
        f"Gradient noise vs curvature — {group}",
        uirevision,
        {"type": "log", "title": {"text": "eigenvalue"}},
        {"title": {"text": y_title}, "rangemode": "tozero"},
    )
    found = find_group(snapshot, group)
    noise = None if found is None else found.get("gradient_eigvals")
    if found is None or noise is None:
        return _note(fig, "no gradient-noise spectrum at this step")
    ggn = [float(v) for v in found["eigvals"]]
    cov = [float(v) for v in noise]
    moment = [float(v) for v in found.get("gradient_moment_eigvals") or []]
    edges = log_edges(ggn + cov + moment, n_bins)
    trace_c = math.fsum(cov)
    norm_sq = float(found.get("grad_norm_sq") or 0.0)
    scale = f", tr C/‖g‖² = {_fmt(trace_c / norm_sq)}" if norm_sq > 0 else ""
    bars = [
        _density_trace(ggn, edges, mode, f"GGN (K={len(ggn)})", COLORS[0]),
        _density_trace(
            cov,
            edges,
            mode,
            f"gradient covariance (K={len(cov)}, tr C = {_fmt(trace_c)}{scale})",
            COLORS[1],
        ),
    ]
    for bar in bars:
        bar.opacity, bar.line.width = 0.35, 1  # the curves read first
        fig.add_trace(bar)
    if moment:
        second = _density_trace(moment, edges, mode, f"second moment (K={len(moment)})", COLORS[2])
        second.visible = "legendonly"
        fig.add_trace(second)
    for values, name, color in ((ggn, "GGN", COLORS[0]), (cov, "covariance", COLORS[1])):
        smooth = _kde_trace(values, edges, mode, f"{name}, smoothed (KDE)", color)
        if smooth is not None:
            fig.add_trace(smooth)
    if not cov:
        fig = _note(
            fig, "no gradient noise at this step: the per-sample gradients are identical (or zero)"
        )
    return fig
