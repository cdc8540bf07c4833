"""The Hessian's spectrum: Lanczos extremes and the SLQ density, next to the GGN's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from curvscope.server.figures.base import (
    _GREY,
    COLORS,
    Snapshot,
    _eigvals,
    _figure,
    _fmt,
    _gaussian_sum,
    _note,
    find_group,
)

__all__ = ["has_hessian", "hessian_figure"]


def has_hessian(snapshot: Snapshot) -> bool:
    """Whether the run computes the Hessian (``config.hessian_top_k``) or this step has it."""
    if (snapshot.get("config") or {}).get("hessian_top_k", 0):
        return True
    return any(g.get("hessian_eigvals") is not None for g in snapshot.get("groups", ()))


def _gaussian_density(
    nodes: Sequence[Sequence[float]],
    weights: Sequence[Sequence[float]],
    n_points: int,
    ggn: tuple[Sequence[float], int] | None = None,
) -> tuple[list[float], list[float], list[float]]:
    """The SLQ quadrature ``(1/P) Σ_p Σ_j w_pj δ(λ - node_pj)`` broadened by Gaussians of
    width ``σ = 0.02 · (max - min)`` of the nodes, on ``n_points`` points spanning
    ``[min - 3σ, max + 3σ]`` (:func:`_gaussian_sum`).

    With ``ggn = (eigvals, D)`` also the GGN's spectral density on the same grid with the
    same σ: its K non-zero eigenvalues weigh ``1/D`` each and its ``D − K`` zero
    eigenvalues ``(D − K)/D`` at λ = 0, as the Hessian's density counts all D of its own
    (the span widens to cover them). Returns ``(grid, slq_heights, ggn_heights)`` (the last
    empty without ``ggn``).
    """
    flat = [
        (float(x), float(w))
        for xs, ws in zip(nodes, weights, strict=True)
        for x, w in zip(xs, ws, strict=True)
    ]
    if not flat:
        return [], [], []
    lo, hi = min(x for x, _ in flat), max(x for x, _ in flat)
    sigma = 0.02 * (hi - lo) or 0.02 * max(abs(hi), 1e-30)
    share = 1.0 / max(len(nodes), 1)
    points = [(x, w * share) for x, w in flat]
    ggn_points: list[tuple[float, float]] = []
    if ggn is not None:
        eigvals, dim = [float(v) for v in ggn[0]], max(int(ggn[1]), len(ggn[0]), 1)
        ggn_points = [(v, 1.0 / dim) for v in eigvals] + [(0.0, (dim - len(eigvals)) / dim)]
        lo, hi = min([lo, 0.0, *eigvals]), max([hi, 0.0, *eigvals])
    start, stop = lo - 3 * sigma, hi + 3 * sigma
    grid, heights = _gaussian_sum(points, sigma, start, stop, n_points)
    ggn_heights = _gaussian_sum(ggn_points, sigma, start, stop, n_points)[1] if ggn else []
    return grid, heights, ggn_heights


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
    λ_min, and the GGN's eigenvalues as a rug and as a density broadened alike (with its
    ``D − K`` zero eigenvalues, so both densities integrate to 1 over the group's D).

    Traces, in order: ``SLQ density`` (when the probe sent one), ``top-k of H``,
    ``λ_min(H)``, ``GGN eigenvalues``, ``GGN density`` (with the SLQ density). A step without
    the Hessian says so.
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
    ggn = _eigvals(snapshot, group)
    ggn_heights: list[float] = []
    if density:
        dim = int(found.get("num_params") or len(ggn))
        grid, heights, ggn_heights = _gaussian_density(
            density["nodes"], density["weights"], n_points, ggn=(ggn, dim)
        )
        if heights and max(heights) > 0:
            height = 1.05 * max(heights)
        slq = _lines(
            grid,
            heights,
            f"SLQ density ({len(density['nodes'])} probes)",
            {"color": COLORS[0], "width": 2},
            "λ=%{x:.3g}<br>density %{y:.3g}<extra></extra>",
        )
        slq.fill, slq.opacity = "tozeroy", 0.8
        fig.add_trace(slq)
    fig.add_trace(
        _lines(
            *_verticals(top, height),
            f"top-{len(top)} of H",
            {"color": COLORS[1], "width": 1.5},
            "λ=%{x:.4g}<extra>top-k of H</extra>",
        )
    )
    if lam_min is not None:
        fig.add_trace(
            _lines(
                *_verticals([float(lam_min)], height),
                f"λ_min(H) = {_fmt(float(lam_min))}",
                {"color": COLORS[4], "width": 1.5, "dash": "dash"},
                "λ_min=%{x:.4g}<extra></extra>",
            )
        )
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
    if ggn_heights:
        fig.add_trace(
            _lines(
                grid,
                ggn_heights,
                "GGN density (same broadening)",
                {"color": COLORS[2], "width": 1.5, "dash": "dot"},
                "λ=%{x:.3g}<br>GGN density %{y:.3g}<extra></extra>",
            )
        )
    return fig


def _lines(
    x: Sequence[float | None],
    y: Sequence[float | None],
    name: str,
    line: dict[str, Any],
    hovertemplate: str,
) -> go.Scatter:
    """One line trace of the Hessian plot."""
    return go.Scatter(
        _validate=False,
        x=list(x),
        y=list(y),
        mode="lines",
        line=line,
        name=name,
        hovertemplate=hovertemplate,
    )
