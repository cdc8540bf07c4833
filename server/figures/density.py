"""Spectral densities: log-spaced histograms with a smoothed estimate (KDE in log10 λ)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import plotly.graph_objects as go

from curvscope.server.figures.base import (
    COLORS,
    DensityMode,
    Snapshot,
    _eigvals,
    _figure,
    _fmt,
    _gaussian_sum,
    _note,
    _quantile,
)

__all__ = [
    "KDE_MIN_BANDWIDTH",
    "KDE_POINTS",
    "density_figure",
    "histogram",
    "kde_bandwidth",
    "log_edges",
]


def log_edges(values: Sequence[float], n_bins: int) -> list[float]:
    """``n_bins + 1`` log-spaced bin edges covering the positive ``values``.

    A single distinct value gets a bin one decade wide around it; no positive value gives
    the edges of ``[1e-1, 1e1]``.
    """
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    if positive:
        lo, hi = math.log10(min(positive)), math.log10(max(positive))
    else:
        lo, hi = -1.0, 1.0
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    width = (hi - lo) / n_bins
    edges = [10.0 ** (lo + i * width) for i in range(n_bins + 1)]
    edges[0], edges[-1] = 10.0**lo, 10.0**hi
    return edges


def _bin_index(value: float, edges: Sequence[float]) -> int | None:
    """The bin ``i`` with ``edges[i] <= value < edges[i+1]`` (the last bin includes its right
    edge), or ``None`` outside the edges. Tolerates the rounding of ``10**log10(v)`` at the
    outermost edges."""
    if not (edges[0] * (1 - 1e-12) <= value <= edges[-1] * (1 + 1e-12)):
        return None
    i = bisect.bisect_right(edges, value) - 1
    return min(max(i, 0), len(edges) - 2)


def histogram(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    """Counts of ``values`` in ``[edges[i], edges[i+1])`` (the last bin includes its right
    edge). Values outside the edges, zeros and negatives are not counted. Shape ``[len(edges)-1]``.
    """
    counts = [0] * (len(edges) - 1)
    for v in values:
        i = _bin_index(v, edges)
        if i is not None:
            counts[i] += 1
    return counts


def _density_trace(
    values: Sequence[float], edges: Sequence[float], mode: DensityMode, name: str, color: str
) -> go.Scatter:
    counts = histogram(values, edges)
    if mode == "density":
        total = max(len(values), 1)
        heights = [
            c / (total * (math.log10(edges[i + 1]) - math.log10(edges[i])))
            for i, c in enumerate(counts)
        ]
    else:
        heights = [float(c) for c in counts]
    custom = [[_fmt(edges[i]), _fmt(edges[i + 1]), counts[i]] for i in range(len(counts))] + [
        [_fmt(edges[-1]), _fmt(edges[-1]), 0]
    ]
    return go.Scatter(
        _validate=False,
        x=list(edges),
        y=[*heights, heights[-1] if heights else 0.0],
        mode="lines",
        line={"shape": "hv", "color": color, "width": 2},
        fill="tozeroy",
        opacity=0.8,
        name=name,
        customdata=custom,
        hovertemplate="λ in [%{customdata[0]}, %{customdata[1]})<br>"
        "%{customdata[2]} eigenvalues<br>height %{y:.3g}<extra>%{fullData.name}</extra>",
    )


KDE_POINTS = 200
"""Points of the smoothed spectral density's curve (more where its bandwidth needs them)."""


KDE_MIN_BANDWIDTH = 0.05
"""The narrowest kernel of the smoothed spectral density, in decades of λ: one distinct
eigenvalue (or several closer than this) is drawn as a bump this wide."""


def kde_bandwidth(values: Sequence[float]) -> float:
    """Silverman's rule of thumb for a Gaussian kernel density estimate of ``values``:
    ``0.9 · min(sd, IQR / 1.34) · n^(-1/5)`` (the sample standard deviation alone where
    the interquartile range is 0), at least :data:`KDE_MIN_BANDWIDTH`."""
    n = len(values)
    if n < 2:
        return KDE_MIN_BANDWIDTH
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    ordered = sorted(values)
    iqr = (_quantile(ordered, 0.75) - _quantile(ordered, 0.25)) / 1.34
    spread = min(sd, iqr) if iqr > 0 else sd
    return max(0.9 * spread * n**-0.2, KDE_MIN_BANDWIDTH)


def _kde_trace(
    values: Sequence[float], edges: Sequence[float], mode: DensityMode, name: str, color: str
) -> go.Scatter | None:
    """A Gaussian kernel density estimate of ``values`` in log10 λ (bandwidth
    :func:`kde_bandwidth` of the log values) on the histogram's scale: per decade
    (integrating to the histogram's area) in ``density`` mode, expected eigenvalues per bin
    of ``edges`` in ``count`` mode. ``None`` without a positive value."""
    logs = [math.log10(v) for v in values if v > 0 and math.isfinite(v)]
    if not logs:
        return None
    h = kde_bandwidth(logs)
    n_bins = len(edges) - 1
    bin_decades = (math.log10(edges[-1]) - math.log10(edges[0])) / n_bins
    scale = 1.0 / len(values) if mode == "density" else bin_decades
    grid, heights = _gaussian_sum(
        [(u, scale) for u in logs], h, min(logs) - 3 * h, max(logs) + 3 * h, KDE_POINTS
    )
    return go.Scatter(
        _validate=False,
        x=[10.0**u for u in grid],
        y=heights,
        mode="lines",
        line={"color": color, "width": 2.5, "shape": "spline", "smoothing": 0.6},
        name=name,
        hovertemplate=f"λ=%{{x:.3g}}<br>smoothed %{{y:.3g}}<br>Gaussian kernel in log10 λ, "
        f"bandwidth {h:.2g} decades<extra>%{{fullData.name}}</extra>",
    )


def density_figure(
    entries: Sequence[tuple[str, Snapshot]],
    group: str,
    *,
    mode: DensityMode = "density",
    n_bins: int = 40,
    range_values: Sequence[float] = (),
    uirevision: str = "density",
) -> go.Figure:
    """Spectral density of group ``group``'s eigenvalues: per entry a histogram (step line)
    and its smoothed estimate over it.

    ``entries`` are ``(label, snapshot)`` pairs (e.g. the selected step, then the first or
    latest as an overlay); all share one set of ``n_bins`` log-spaced bins covering their
    eigenvalues and ``range_values``. Traces: per entry its histogram, with ``n_bins + 1``
    points (the bin edges, the last height repeated to close the step line); then, per
    entry with a positive eigenvalue, its smoothed estimate (named ``"<label>, smoothed
    (KDE)"``): a Gaussian kernel density estimate in log10 λ (:func:`kde_bandwidth`) on
    the same scale as the bars, which reads as a curve however few eigenvalues there are.
    The x axis spans the bins with 5 % (at least 0.1 decade) to spare on either side.
    """
    values = [_eigvals(snap, group) for _, snap in entries]
    edges = log_edges([v for vs in values for v in vs] + list(range_values), n_bins)
    lo, hi = math.log10(edges[0]), math.log10(edges[-1])
    pad = max(0.05 * (hi - lo), 0.1)
    y_title = "density per decade" if mode == "density" else "number of eigenvalues"
    fig = _figure(
        f"Spectral density — {group}",
        uirevision,
        {"type": "log", "title": {"text": "eigenvalue λ"}, "range": [lo - pad, hi + pad]},
        {"title": {"text": y_title}, "rangemode": "tozero"},
    )
    curves = []
    for i, ((label, _), vals) in enumerate(zip(entries, values, strict=True)):
        color = COLORS[i % len(COLORS)]
        bars = _density_trace(vals, edges, mode, f"{label} (K={len(vals)})", color)
        smooth = _kde_trace(vals, edges, mode, f"{label}, smoothed (KDE)", color)
        if smooth is not None:
            bars.opacity, bars.line.width = 0.35, 1  # the curve reads first
            bars.legendgroup = smooth.legendgroup = label
            curves.append(smooth)
        fig.add_trace(bars)
    for curve in curves:  # drawn over every histogram
        fig.add_trace(curve)
    if not any(values):
        fig = _note(fig, "no non-zero eigenvalues at this step")
    return fig
