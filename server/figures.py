"""Plotly figure definitions of the dashboard and the HTML report (no torch, no numpy).

Every function takes snapshots in their REST JSON shape (``GET /api/runs/{run}/snapshots``
entries: ``run, step, wall_time, loss, batch_size, config, groups[...]``; see
:class:`curvscope.server.protocol.SnapshotMessage`) and returns a
:class:`plotly.graph_objects.Figure`. The same functions serve the browser (as figure JSON
from :mod:`curvscope.server.routes.figure_api`) and the standalone report
(:mod:`curvscope.server.report`).

Conventions:

- Eigenvalues ``eigvals`` (K of them) are in descending order; the per-direction statistics
  (``gamma``, ``snr_gamma``, ``snr_lambda``, ``grad_overlap``) cover the top K' <= K, so
  direction k's curvature is ``eigvals[k]`` for ``k < K'``.
- Log axes cannot show zero or negative values: SNRs equal to the sentinel
  :data:`~curvscope.server.protocol.SNR_UNDEFINED` (zero variance) and exact zeros are left
  out, and the trace's legend says how many.
- Spectral densities are histograms on log-spaced bins, drawn as step lines (bars have no
  usable width on a log axis). ``mode="density"`` divides the counts by
  ``K · Δlog10(λ)`` (a density per decade that integrates to 1 over ``log10 λ``);
  ``mode="count"`` shows the counts.
- Figures are built with plotly's property validation switched off (``_validate=False``):
  it costs more than the rest of a request for K ≈ 1,000; the tests validate every figure.
"""

from __future__ import annotations

import bisect
import html
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import plotly.graph_objects as go

from curvscope.server.protocol import SNR_UNDEFINED

__all__ = [
    "COLORS",
    "DensityMode",
    "Overlay",
    "Snapshot",
    "compare_density_figure",
    "compare_loss_figure",
    "compare_trajectories_figure",
    "density_figure",
    "eigval_trajectories_figure",
    "find_group",
    "gamma_figure",
    "group_names",
    "has_hessian",
    "hessian_figure",
    "histogram",
    "log_edges",
    "loss_figure",
    "overlap_bars",
    "overlap_figure",
    "series_figures",
    "snr_figure",
    "step_figures",
]

Snapshot = Mapping[str, Any]
"""One snapshot in its REST JSON shape."""
DensityMode = Literal["density", "count"]

COLORS = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
)
"""Trace colours, in order."""

_GREY = "#9a9a9a"
_LAYOUT: dict[str, Any] = {
    # No template: the styling is ours, and plotly.py would otherwise embed its 7 kB default
    # in every figure. (Plotly.js treats the name "none" as no template.)
    "template": "none",
    "font": {"family": "system-ui, -apple-system, Segoe UI, sans-serif", "size": 12},
    "margin": {"l": 64, "r": 16, "t": 44, "b": 52},
    "hovermode": "closest",
    "legend": {"orientation": "h", "y": -0.22, "x": 0, "font": {"size": 11}},
    "paper_bgcolor": "white",
    "plot_bgcolor": "white",
}
_AXIS: dict[str, Any] = {
    "showgrid": True,
    "gridcolor": "#ececec",
    "zeroline": False,
    "showline": True,
    "linecolor": "#888",
    "ticks": "outside",
    "exponentformat": "power",
}


def plain(text: str) -> str:
    """``text`` as literal characters in a Plotly label: Plotly reads ``<a href>``, ``<b>``
    ... in titles as markup, and group names come from the probe (untrusted)."""
    return html.escape(text, quote=False)


def _figure(
    title: str, uirevision: str, x: Mapping[str, Any], y: Mapping[str, Any], **layout: Any
) -> go.Figure:
    # The whole layout goes to the constructor: plotly's update_layout parses every
    # property path and costs ~50x more (it was most of a step figure's 190 ms).
    return go.Figure(
        layout={
            **_LAYOUT,
            "title": {"text": plain(title), "x": 0.01, "font": {"size": 14}},
            "uirevision": uirevision,
            "xaxis": {**_AXIS, **x},
            "yaxis": {**_AXIS, **y},
            **layout,
        },
        _validate=False,
    )


def _relayout(fig: go.Figure, **layout: Any) -> go.Figure:
    """``fig`` with these layout properties set (without plotly's slow update path)."""
    return go.Figure(
        data=fig.data, layout={**fig.layout.to_plotly_json(), **layout}, _validate=False
    )


def _note(fig: go.Figure, text: str) -> go.Figure:
    """Write ``text`` in the middle of the plot (so an empty plot says why it is empty)."""
    note = {
        "text": text,
        "xref": "paper",
        "yref": "paper",
        "x": 0.5,
        "y": 0.5,
        "showarrow": False,
        "font": {"size": 13, "color": "#666"},
    }
    return _relayout(fig, annotations=[*fig.layout.to_plotly_json().get("annotations", []), note])


def _fmt(value: float) -> str:
    return f"{value:.3g}"


# -- data access ---------------------------------------------------------------------------
def group_names(snapshot: Snapshot) -> list[str]:
    """The parameter-group names of a snapshot, in wire order."""
    return [g["name"] for g in snapshot.get("groups", ())]


def find_group(snapshot: Snapshot, name: str) -> Mapping[str, Any] | None:
    """The group called ``name`` in a snapshot, or ``None``."""
    for group in snapshot.get("groups", ()):
        if group["name"] == name:
            return group
    return None


def _eigvals(snapshot: Snapshot | None, group: str) -> list[float]:
    found = None if snapshot is None else find_group(snapshot, group)
    return [] if found is None else [float(v) for v in found["eigvals"]]


# -- histograms ----------------------------------------------------------------------------
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


def density_figure(
    entries: Sequence[tuple[str, Snapshot]],
    group: str,
    *,
    mode: DensityMode = "density",
    n_bins: int = 40,
    range_values: Sequence[float] = (),
    uirevision: str = "density",
) -> go.Figure:
    """Spectral density of group ``group``'s eigenvalues, one step line per entry.

    ``entries`` are ``(label, snapshot)`` pairs (e.g. the selected step, then the first or
    latest as an overlay); all share one set of ``n_bins`` log-spaced bins covering their
    eigenvalues and ``range_values``. Each trace has ``n_bins + 1`` points: the bin edges,
    with the last height repeated to close the step line.
    """
    values = [_eigvals(snap, group) for _, snap in entries]
    edges = log_edges([v for vs in values for v in vs] + list(range_values), n_bins)
    y_title = "density per decade" if mode == "density" else "number of eigenvalues"
    fig = _figure(
        f"Spectral density — {group}",
        uirevision,
        {"type": "log", "title": {"text": "eigenvalue λ"}},
        {"title": {"text": y_title}, "rangemode": "tozero"},
    )
    for i, ((label, _), vals) in enumerate(zip(entries, values, strict=True)):
        fig.add_trace(
            _density_trace(vals, edges, mode, f"{label} (K={len(vals)})", COLORS[i % len(COLORS)])
        )
    if not any(values):
        fig = _note(fig, "no non-zero eigenvalues at this step")
    return fig


# -- per-direction scatter plots -----------------------------------------------------------
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
) -> tuple[go.Scatter, int]:
    """Markers at ``(λ_k, values[k])`` for every direction k with ``values[k] > 0`` (a log
    axis cannot show the rest; ``left_out`` says in the legend what was dropped), and how
    many were drawn."""
    keep = [k for k, v in enumerate(values) if v > 0]
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
    the legend.
    """
    fig, lam, found = _direction_figure(
        snapshot, group, f"Signal-to-noise ratio — {group}", "SNR", uirevision
    )
    if found is None:
        return fig
    shown = 0
    for i, (label, field, symbol) in enumerate(
        (("SNR(λ_k)", "snr_lambda", "circle"), ("SNR(γ_k)", "snr_gamma", "diamond"))
    ):
        snr = [float(v) for v in found[field]]
        undefined = sum(1 for s in snr if s == SNR_UNDEFINED)
        zero = sum(1 for s in snr if s == 0)
        left_out = [f"{undefined} undefined (zero variance)"] if undefined else []
        left_out += [f"{zero} zero"] if zero else []
        trace, drawn = _direction_markers(
            lam, snr, label=label, color=COLORS[i], symbol=symbol, left_out=left_out
        )
        fig.add_trace(trace)
        shown += drawn
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
    if not shown:
        fig = _note(fig, "every SNR is undefined (zero variance) at this step")
    return fig


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


def overlap_figure(
    snapshot: Snapshot, group: str, *, n_bins: int = 8, uirevision: str = "overlap"
) -> go.Figure:
    """Gradient overlap γ_k²/‖g‖² summed over log-spaced curvature bins, plus the remainder.

    One bar trace with ``n_bins`` bars (one per bin, labelled by its λ range) and one bar
    for ``1 − Σ_k γ_k²/‖g‖²`` (the flat space; also directions beyond top-K' when K' < K).
    """
    lam, found = _stats(snapshot, group)
    fig = _figure(
        f"Gradient overlap by curvature — {group}",
        uirevision,
        {"type": "category", "title": {"text": "curvature bin (λ range)"}, "tickangle": -35},
        {"title": {"text": "Σ γ_k² / ‖g‖²"}, "rangemode": "tozero"},
    )
    if found is None or not lam:
        return _note(fig, "no directions at this step")
    overlap = [float(v) for v in found["grad_overlap"]]
    edges = log_edges(lam, n_bins)
    sums, counts, remainder = overlap_bars(lam, overlap, edges)
    labels = [f"{_fmt(edges[i])}–{_fmt(edges[i + 1])}" for i in range(len(sums))]
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
            x=[rest],
            y=[remainder],
            marker={"color": _GREY},
            name=f"1 − Σ = {remainder:.3g} ({rest})",
            hovertemplate="1 − Σ γ_k²/‖g‖² = %{y:.3g}<extra></extra>",
        )
    )
    return _relayout(fig, bargap=0.1, showlegend=True)


# -- over steps ----------------------------------------------------------------------------
def _trajectories(
    series: Sequence[Snapshot], group: str, top: int
) -> list[tuple[list[int], list[float]]]:
    """``(steps, λ_k)`` for k = 0, 1, ... < ``top``: the snapshots whose group has a positive
    k-th eigenvalue; stops at the first k no snapshot has."""
    rows = [(snap["step"], _eigvals(snap, group)) for snap in series]
    out = []
    for k in range(top):
        points = [(step, vals[k]) for step, vals in rows if len(vals) > k and vals[k] > 0]
        if not points:
            break
        out.append(([p[0] for p in points], [p[1] for p in points]))
    return out


def eigval_trajectories_figure(
    series: Sequence[Snapshot], group: str, *, top: int = 8, uirevision: str = "eigvals"
) -> go.Figure:
    """λ_1 … λ_top of group ``group`` over steps (log y): trace k has one point per
    snapshot of ``series`` whose group has more than k eigenvalues."""
    fig = _figure(
        f"Top-{top} eigenvalues over steps — {group}",
        uirevision,
        {"title": {"text": "step"}},
        {"type": "log", "title": {"text": "eigenvalue λ_k"}},
    )
    for k, (steps, values) in enumerate(_trajectories(series, group, top)):
        fig.add_trace(
            go.Scatter(
                _validate=False,
                x=steps,
                y=values,
                mode="lines+markers" if len(steps) < 60 else "lines",
                marker={"size": 4},
                line={"color": COLORS[k % len(COLORS)], "width": 1.5},
                name=f"λ_{k + 1}",
                hovertemplate=f"step %{{x}}<br>λ_{k + 1}=%{{y:.4g}}<extra></extra>",
            )
        )
    if not fig.data:
        fig = _note(fig, "no eigenvalues yet")
    return fig


def loss_figure(series: Sequence[Snapshot], *, uirevision: str = "loss") -> go.Figure:
    """Training loss over steps: one point per snapshot of ``series``."""
    fig = _figure("Training loss", uirevision, {"title": {"text": "step"}}, {"title": "loss"})
    fig.add_trace(
        go.Scatter(
            _validate=False,
            x=[s["step"] for s in series],
            y=[s["loss"] for s in series],
            mode="lines+markers" if len(series) < 60 else "lines",
            marker={"size": 4},
            line={"color": COLORS[0], "width": 1.5},
            name="loss",
            hovertemplate="step %{x}<br>loss %{y:.4g}<extra></extra>",
        )
    )
    if not series:
        fig = _note(fig, "no snapshots yet")
    return fig


# -- run comparison ------------------------------------------------------------------------
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


# -- the Hessian (Lanczos extremes and SLQ density) -----------------------------------------
def has_hessian(snapshot: Snapshot) -> bool:
    """Whether the run computes the Hessian (``config.hessian_top_k``) or this step has it."""
    if (snapshot.get("config") or {}).get("hessian_top_k", 0):
        return True
    return any(g.get("hessian_eigvals") is not None for g in snapshot.get("groups", ()))


def _gaussian_density(
    nodes: Sequence[Sequence[float]], weights: Sequence[Sequence[float]], n_points: int
) -> tuple[list[float], list[float]]:
    """The SLQ quadrature ``(1/P) Σ_p Σ_j w_pj δ(λ - node_pj)`` broadened by Gaussians of
    width ``σ = 0.02 · (max - min)`` of the nodes, on ``n_points`` points spanning
    ``[min - 3σ, max + 3σ]`` (pure Python: the server has no numpy)."""
    flat = [
        (float(x), float(w))
        for xs, ws in zip(nodes, weights, strict=True)
        for x, w in zip(xs, ws, strict=True)
    ]
    if not flat:
        return [], []
    lo, hi = min(x for x, _ in flat), max(x for x, _ in flat)
    sigma = 0.02 * (hi - lo) or 0.02 * max(abs(hi), 1e-30)
    start, stop = lo - 3 * sigma, hi + 3 * sigma
    grid = [start + (stop - start) * i / (n_points - 1) for i in range(n_points)]
    norm = 1.0 / (max(len(nodes), 1) * sigma * math.sqrt(2 * math.pi))
    heights = [
        norm * math.fsum(w * math.exp(-0.5 * ((x - c) / sigma) ** 2) for c, w in flat if w)
        for x in grid
    ]
    return grid, heights


def _verticals(xs: Sequence[float], top: float) -> tuple[list[float | None], list[float | None]]:
    """One vertical segment ``[0, top]`` at each x (gaps between them)."""
    x: list[float | None] = []
    y: list[float | None] = []
    for v in xs:
        x += [v, v, None]
        y += [0.0, top, None]
    return x, y


def hessian_figure(
    snapshot: Snapshot, group: str, *, n_points: int = 200, uirevision: str = "hessian"
) -> go.Figure:
    """The Hessian's spectrum at this step: the SLQ density (Gaussian-broadened, linear axes:
    Hessian eigenvalues may be negative) with vertical lines at the top-k eigenvalues and at
    λ_min, and the GGN's eigenvalues as a rug for comparison.

    Traces, in order: ``SLQ density`` (when the probe sent one), ``top-k of H``,
    ``λ_min(H)``, ``GGN eigenvalues``. A step without the Hessian says so.
    """
    fig = _figure(
        f"Hessian spectrum — {group}",
        uirevision,
        {"title": {"text": "eigenvalue λ of the Hessian ∇²L"}},
        {"title": {"text": "SLQ spectral density"}, "rangemode": "tozero"},
    )
    found = find_group(snapshot, group)
    top = None if found is None else found.get("hessian_eigvals")
    if found is None or top is None:
        return _note(fig, "no Hessian at this step")
    top = [float(v) for v in top]
    lam_min = found.get("hessian_min")
    density = found.get("hessian_density")
    height = 1.0
    if density:
        grid, heights = _gaussian_density(density["nodes"], density["weights"], n_points)
        if heights and max(heights) > 0:
            height = 1.05 * max(heights)
        fig.add_trace(
            go.Scatter(
                _validate=False,
                x=grid,
                y=heights,
                mode="lines",
                fill="tozeroy",
                line={"color": COLORS[0], "width": 2},
                opacity=0.8,
                name=f"SLQ density ({len(density['nodes'])} probes)",
                hovertemplate="λ=%{x:.3g}<br>density %{y:.3g}<extra></extra>",
            )
        )
    x, y = _verticals(top, height)
    fig.add_trace(
        go.Scatter(
            _validate=False,
            x=x,
            y=y,
            mode="lines",
            line={"color": COLORS[1], "width": 1.5},
            name=f"top-{len(top)} of H",
            hovertemplate="λ=%{x:.4g}<extra>top-k of H</extra>",
        )
    )
    if lam_min is not None:
        x, y = _verticals([float(lam_min)], height)
        fig.add_trace(
            go.Scatter(
                _validate=False,
                x=x,
                y=y,
                mode="lines",
                line={"color": COLORS[4], "width": 1.5, "dash": "dash"},
                name=f"λ_min(H) = {_fmt(float(lam_min))}",
                hovertemplate="λ_min=%{x:.4g}<extra></extra>",
            )
        )
    ggn = _eigvals(snapshot, group)
    fig.add_trace(
        go.Scatter(
            _validate=False,
            x=ggn,
            y=[0.0] * len(ggn),
            mode="markers",
            marker={"color": _GREY, "symbol": "line-ns-open", "size": 12},
            name=f"GGN eigenvalues (K={len(ggn)})",
            hovertemplate="GGN λ=%{x:.3g}<extra></extra>",
        )
    )
    return fig


# -- bundles (what the run view and the report show) ---------------------------------------
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
    and ``hessian`` when the run computes the Hessian (:func:`has_hessian` of ``current``).

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
    return out


def series_figures(
    series: Sequence[Snapshot], group: str, *, top: int = 8, run: str = ""
) -> dict[str, go.Figure]:
    """The figures over steps of one group: ``eigvals`` (top-k trajectories)."""
    return {
        "eigvals": eigval_trajectories_figure(
            series, group, top=top, uirevision=f"{run}:{group}:eigvals"
        )
    }
