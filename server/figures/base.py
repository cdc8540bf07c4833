"""What every figure shares: the layout, colours, labels, data access and the Gaussian sums."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import plotly.graph_objects as go

__all__ = ["COLORS", "DensityMode", "Snapshot", "find_group", "group_names", "plain"]


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


def _quantile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-quantile (``0 <= q <= 1``) of sorted values, interpolated linearly between
    order statistics (numpy's default)."""
    if len(ordered) == 1:
        return ordered[0]
    pos = q * (len(ordered) - 1)
    i = min(int(pos), len(ordered) - 2)
    return ordered[i] + (ordered[i + 1] - ordered[i]) * (pos - i)


_MAX_GRID = 2000


def _gaussian_sum(
    points: Sequence[tuple[float, float]], sigma: float, start: float, stop: float, n_points: int
) -> tuple[list[float], list[float]]:
    """``Σ_j w_j · N(x; c_j, σ²)`` for ``points = [(c_j, w_j)]`` at evenly spaced x spanning
    ``[start, stop]``: ``n_points`` of them, or more (at most 2,000) where their spacing Δ
    would exceed σ/3.

    A binned estimate: each weight is split linearly between the two grid points around its
    centre, then convolved with the Gaussian (cut at 5σ). Its error shrinks as (Δ/σ)²
    (about 1 % of the peak at Δ = σ/3, the coarsest spacing used), and it costs
    O(points + grid · σ/Δ), not O(points · grid): ~1 ms, not ~70 ms, for 1,000
    eigenvalues. Centres outside ``[start, stop]`` are left out.
    """
    n = max(n_points, min(_MAX_GRID, math.ceil(3 * (stop - start) / sigma) + 1))
    step = (stop - start) / (n - 1)
    grid = [start + step * i for i in range(n)]
    mass = [0.0] * n
    for centre, weight in points:
        pos = (centre - start) / step
        if not 0 <= pos <= n - 1:
            continue
        i = min(int(pos), n - 2)
        mass[i] += weight * (1 - (pos - i))
        mass[i + 1] += weight * (pos - i)
    reach = min(n - 1, math.ceil(5 * sigma / step))
    norm = 1.0 / (sigma * math.sqrt(2 * math.pi))
    kernel = [norm * math.exp(-0.5 * (t * step / sigma) ** 2) for t in range(reach + 1)]
    heights = [0.0] * n
    for j, m in enumerate(mass):
        if m:
            for t in range(max(-reach, -j), min(reach, n - 1 - j) + 1):
                heights[j + t] += m * kernel[abs(t)]
    return grid, heights


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
