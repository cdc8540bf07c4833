"""Per-direction plots of one step: SNR(λ_k), SNR(γ_k), |γ_k| and the gradient overlap."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from curvscope.server.figures.base import (
    _GREY,
    _LAYOUT,
    COLORS,
    Snapshot,
    _figure,
    _note,
    _quantile,
    _relayout,
    find_group,
)
from curvscope.server.figures.density import _bin_index
from curvscope.server.protocol import SNR_UNDEFINED

__all__ = ["aligned_edges", "gamma_figure", "overlap_bars", "overlap_figure", "snr_figure"]


def _stats(snapshot: Snapshot, group: str) -> tuple[list[float], Mapping[str, Any] | None]:
    found = find_group(snapshot, group)
    if found is None:
        return [], None
    k_stats = len(found["gamma"])
    chosen = found.get("directions")
    if chosen is None:
        return [float(v) for v in found["eigvals"][:k_stats]], found
    return [float(found["eigvals"][i]) for i in chosen], found


def _direction_markers(
    lam: Sequence[float],
    values: Sequence[float],
    *,
    label: str,
    color: str,
    symbol: str = "circle",
    left_out: Sequence[str] = (),
    within: tuple[float, float] = (0.0, math.inf),
) -> tuple[go.Scatter, int]:
    """Markers at ``(λ_k, values[k])`` for every direction k with ``values[k] > 0`` (a log
    axis cannot show the rest; ``left_out`` says in the legend what was dropped) inside
    ``within`` (bounds included), and how many were drawn."""
    low, high = within
    keep = [k for k, v in enumerate(values) if v > 0 and low <= v <= high]
    name = label + (f" — not shown: {', '.join(left_out)}" if left_out else "")
    trace = go.Scatter(
        _validate=False,
        x=[lam[k] for k in keep],
        y=[values[k] for k in keep],
        customdata=keep,
        mode="markers",
        marker={"color": color, "symbol": symbol, "size": 7, "opacity": 0.8},
        name=name,
        hovertemplate=f"k=%{{customdata}}<br>λ=%{{x:.3g}}<br>{label}=%{{y:.3g}}<extra></extra>",
    )
    return trace, len(keep)


def _direction_figure(
    snapshot: Snapshot, group: str, title: str, y_title: str, uirevision: str
) -> tuple[go.Figure, list[float], Mapping[str, Any] | None]:
    """A log–log figure over λ_k with the group's per-direction statistics.

    Returns ``(fig, λ_k, stats)``; ``stats`` is ``None`` (and the figure says so) when the
    step has no directions with statistics for this group.
    """
    lam, found = _stats(snapshot, group)
    fig = _figure(
        title,
        uirevision,
        {"type": "log", "title": {"text": "eigenvalue λ_k"}},
        {"type": "log", "title": {"text": y_title}},
    )
    if found is None or not lam:
        return _note(fig, "no directions at this step"), lam, None
    return fig, lam, found


def snr_figure(snapshot: Snapshot, group: str, *, uirevision: str = "snr") -> go.Figure:
    """SNR(λ_k) and SNR(γ_k) against λ_k (log–log), with the SNR = 1 line.

    Each marker trace has one point per direction k < K' whose SNR is positive; undefined
    SNRs (the sentinel −1: zero per-sample variance) and zeros are left out and counted in
    the legend. The y range (:func:`_robust_log_range`, always including SNR = 1) is not
    stretched by a few extreme SNRs: those are drawn as triangles at its edge, in a trace
    of their own (after the SNR = 1 line) whose hover gives their values.
    """
    fig, lam, found = _direction_figure(
        snapshot, group, f"Signal-to-noise ratio — {group}", "SNR", uirevision
    )
    if found is None:
        return fig
    series = [
        (label, [float(v) for v in found[field]], symbol)
        for label, field, symbol in (
            ("SNR(λ_k)", "snr_lambda", "circle"),
            ("SNR(γ_k)", "snr_gamma", "diamond"),
        )
    ]
    positive = [v for _, snr, _ in series for v in snr if v > 0]
    log_range = _robust_log_range(positive) if positive else None
    within = (0.0, math.inf)
    if log_range is not None:  # (the extremes' own 10**log10 may round to either side)
        within = (10.0 ** log_range[2] * (1 - 1e-9), 10.0 ** log_range[3] * (1 + 1e-9))
    shown = 0
    outside: list[tuple[int, str, float]] = []
    for i, (label, snr, symbol) in enumerate(series):
        undefined = sum(1 for s in snr if s == SNR_UNDEFINED)
        zero = sum(1 for s in snr if s == 0)
        left_out = [f"{undefined} undefined (zero variance)"] if undefined else []
        left_out += [f"{zero} zero"] if zero else []
        trace, drawn = _direction_markers(
            lam, snr, label=label, color=COLORS[i], symbol=symbol, left_out=left_out, within=within
        )
        fig.add_trace(trace)
        shown += drawn
        outside += [
            (k, label, v) for k, v in enumerate(snr) if v > 0 and not within[0] <= v <= within[1]
        ]
    fig.add_trace(
        go.Scatter(
            _validate=False,
            x=[min(lam), max(lam)] if min(lam) > 0 else [],
            y=[1.0, 1.0] if min(lam) > 0 else [],
            mode="lines",
            line={"color": _GREY, "dash": "dash", "width": 1.5},
            name="SNR = 1",
            hoverinfo="skip",
        )
    )
    if outside:
        fig.add_trace(
            go.Scatter(
                _validate=False,
                x=[lam[k] for k, _, _ in outside],
                y=[within[0] if v < within[0] else within[1] for _, _, v in outside],
                customdata=[[k, label, v] for k, label, v in outside],
                mode="markers",
                marker={
                    "color": "#444",
                    "size": 9,
                    "symbol": [
                        "triangle-down" if v < within[0] else "triangle-up" for _, _, v in outside
                    ],
                },
                name=f"{len(outside)} outside the y range (drawn at its edge)",
                hovertemplate="k=%{customdata[0]}<br>λ=%{x:.3g}<br>%{customdata[1]}="
                "%{customdata[2]:.3g}, outside the y range<extra></extra>",
            )
        )
    if log_range is not None:
        yaxis = {**fig.layout.yaxis.to_plotly_json(), "range": [log_range[0], log_range[1]]}
        fig = _relayout(fig, yaxis=yaxis)
    if not shown and not outside:
        fig = _note(fig, "every SNR is undefined (zero variance) at this step")
    return fig


def _robust_log_range(values: Sequence[float]) -> tuple[float, float, float, float]:
    """A log10 axis range for positive ``values`` that a few extreme ones cannot stretch.

    In log10: Tukey's far fences ``Q1 - 3·IQR`` and ``Q3 + 3·IQR`` (the IQR taken as at
    least half a decade), so a lone 1e-9 among SNRs of 0.1 to 10 falls outside. Returns
    ``(axis_lo, axis_hi, shown_lo, shown_hi)``: the values within ``[shown_lo, shown_hi]``
    (the fences, or the data's extremes where those lie inside them) are drawn, the axis
    spans them and 0 (SNR = 1) with 5 % (at least 0.1 decade) to spare.
    """
    logs = sorted(math.log10(v) for v in values)
    q1, q3 = _quantile(logs, 0.25), _quantile(logs, 0.75)
    spread = 3 * max(q3 - q1, 0.5)
    shown_lo, shown_hi = max(logs[0], q1 - spread), min(logs[-1], q3 + spread)
    lo, hi = min(shown_lo, 0.0), max(shown_hi, 0.0)
    pad = max(0.05 * (hi - lo), 0.1)
    return lo - pad, hi + pad, shown_lo, shown_hi


def gamma_figure(snapshot: Snapshot, group: str, *, uirevision: str = "gamma") -> go.Figure:
    """|γ_k| against λ_k (log–log): one point per direction k < K' with γ_k ≠ 0."""
    fig, lam, found = _direction_figure(
        snapshot, group, f"Directional gradient |γ_k| — {group}", "|γ_k| = |e_kᵀ g|", uirevision
    )
    if found is None:
        return fig
    gamma = [abs(float(v)) for v in found["gamma"]]
    zero = sum(1 for v in gamma if v == 0)
    trace, _ = _direction_markers(
        lam, gamma, label="|γ_k|", color=COLORS[2], left_out=[f"{zero} zero"] if zero else []
    )
    fig.add_trace(trace)
    return _relayout(fig, showlegend=True)


def overlap_bars(
    eigvals: Sequence[float], overlap: Sequence[float], edges: Sequence[float]
) -> tuple[list[float], list[int], float]:
    """Summed gradient overlap per curvature bin.

    Args:
        eigvals: λ_k of the K' directions with statistics, shape ``[K']``.
        overlap: γ_k² / ‖g‖², shape ``[K']``.
        edges: bin edges, shape ``[B + 1]``.

    Returns:
        ``(sums [B], directions per bin [B], remainder)`` where the remainder is
        ``1 − Σ_k overlap_k``: the share of ‖g‖² outside the K' directions (the flat space,
        plus any directions beyond ``top_k``).
    """
    sums = [0.0] * (len(edges) - 1)
    counts = [0] * (len(edges) - 1)
    for lam, share in zip(eigvals, overlap, strict=True):
        i = _bin_index(lam, edges)
        if i is not None:
            sums[i] += share
            counts[i] += 1
    return sums, counts, 1.0 - math.fsum(overlap)


_BIN_DECADES = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
"""Widths (in decades of λ) of the overlap plot's curvature bins, the narrowest first."""


def aligned_edges(values: Sequence[float], max_bins: int) -> list[float]:
    """Bin edges at the multiples of a width in log10 λ (a quarter, half, 1, 2, 5, ...
    decades: the narrowest giving at most ``max_bins`` bins) covering the positive
    ``values``: short, round bin labels (``1e-2–1e-1``). No positive value: ``[0.1, 1]``."""
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    if not positive:
        return [0.1, 1.0]
    lo, hi = math.log10(min(positive)), math.log10(max(positive))
    for width in _BIN_DECADES:
        first = math.floor(lo / width)
        last = max(math.ceil(hi / width), first + 1)
        if last - first <= max_bins:
            break
    return [10.0 ** (k * width) for k in range(first, last + 1)]


def _short(value: float) -> str:
    """A positive bin edge in few characters: ``1e-2``, ``3.2e-1``, ``1e3``."""
    exponent = math.floor(math.log10(value))
    mantissa = f"{value / 10.0**exponent:.2g}"
    if mantissa == "10":
        exponent, mantissa = exponent + 1, "1"
    return f"{mantissa}e{exponent}"


def overlap_figure(
    snapshot: Snapshot, group: str, *, n_bins: int = 8, uirevision: str = "overlap"
) -> go.Figure:
    """Gradient overlap γ_k²/‖g‖² summed over curvature bins, plus the remainder.

    One bar trace with at most ``n_bins`` bars (one per bin of :func:`aligned_edges`:
    whole, half or quarter decades, labelled by their λ range, ``1e-2–1e-1``) and one bar
    ``1 − Σ`` for ``1 − Σ_k γ_k²/‖g‖²`` (the flat space; also directions beyond top-K'
    when K' < K: the legend says which). The bin labels stand upright (the bottom margin
    grows to fit them) and the legend sits above the plot, clear of them and of the axis
    title.
    """
    lam, found = _stats(snapshot, group)
    fig = _figure(
        f"Gradient overlap by curvature — {group}",
        uirevision,
        {
            "type": "category",
            "title": {"text": "curvature bin (λ range)", "standoff": 8},
            "tickangle": -90,  # upright labels never run into each other
            "tickfont": {"size": 11},
            "automargin": True,
        },
        {"title": {"text": "Σ γ_k² / ‖g‖²"}, "rangemode": "tozero"},
        legend={"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom", "font": {"size": 11}},
        margin={**_LAYOUT["margin"], "t": 84},
    )
    fig = _relayout(fig, title={**fig.layout.title.to_plotly_json(), "y": 0.98, "yanchor": "top"})
    if found is None or not lam:
        return _note(fig, "no directions at this step")
    overlap = [float(v) for v in found["grad_overlap"]]
    edges = aligned_edges(lam, n_bins)
    sums, counts, remainder = overlap_bars(lam, overlap, edges)
    labels = [f"{_short(edges[i])}–{_short(edges[i + 1])}" for i in range(len(sums))]
    fig.add_trace(
        go.Bar(
            _validate=False,
            x=labels,
            y=sums,
            customdata=counts,
            marker={"color": COLORS[0]},
            name="curved directions (top K')",
            hovertemplate="λ in %{x}<br>%{customdata} directions<br>overlap %{y:.3g}"
            "<extra></extra>",
        )
    )
    rest = (
        "flat space"
        if len(lam) == len(found["eigvals"])
        else "flat space + directions without statistics"
    )
    fig.add_trace(
        go.Bar(
            _validate=False,
            x=["1 − Σ"],
            y=[remainder],
            marker={"color": _GREY},
            name=f"1 − Σ = {remainder:.3g} ({rest})",
            hovertemplate=f"1 − Σ γ_k²/‖g‖² = %{{y:.3g}}<br>{rest}<extra></extra>",
        )
    )
    return _relayout(fig, bargap=0.1, showlegend=True)
