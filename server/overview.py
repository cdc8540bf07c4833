"""The run overview: one heatmap (parameter group x step) of a per-group summary quantity.

It reads only the summaries stored at ingest (:meth:`Store.read_summaries`, see
:mod:`curvscope.server.summaries`), never a whole snapshot, so a run of 60 groups and 1,000
snapshots draws from a few numbers per cell. Groups are rows in the model's order (first
group on top); steps are columns, down-sampled like the plots over steps (``max_points``,
the first and latest step kept). Quantities spanning decades are coloured by ``log10``
(colour bar ticked in powers of ten); the hover shows the group, step and exact value.
FastAPI-free, like :mod:`curvscope.server.views`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import plotly.graph_objects as go

from curvscope.server.figures import plain
from curvscope.server.stores import Store, downsample_indices
from curvscope.server.views import DEFAULT_MAX_POINTS, NotFound

__all__ = ["QUANTITIES", "Quantity", "QuantityKey", "overview_figure", "overview_view_data"]

QuantityKey = Literal["lam_max", "trace", "effective_rank", "k", "median_snr_gamma", "overlap_top"]


@dataclass(frozen=True)
class Quantity:
    """One quantity the overview can colour cells by: the summary ``key``, its ``label``
    (colour bar, hover, selector) and whether its colours are ``log``-scaled."""

    key: QuantityKey
    label: str
    log: bool
    description: str


QUANTITIES: dict[str, Quantity] = {
    q.key: q
    for q in (
        Quantity("lam_max", "λ_max", True, "largest GGN eigenvalue"),
        Quantity("trace", "Σλ_k", True, "trace of the kept GGN spectrum"),
        Quantity("effective_rank", "effective rank", False, "exp(entropy of λ/Σλ)"),
        Quantity("k", "K", False, "non-zero eigenvalues kept"),
        Quantity("median_snr_gamma", "median SNR(γ)", True, "median over the K' directions"),
        Quantity(
            "overlap_top", "top-K' overlap share", False, "share of ‖g‖² in the K' directions"
        ),
    )
}
"""The overview's quantities by key, in the order the selector lists them."""

_ROW_PX = 16
"""Height of one group's row of cells."""


def _group_order(summaries: Sequence[dict[str, Any]]) -> list[str]:
    """Group names in the model's order: the latest snapshot's, then any group only earlier
    snapshots had (in their order)."""
    names: dict[str, None] = {}
    for summary in (summaries[-1], *summaries[:-1]) if summaries else ():
        for group in summary["groups"]:
            names.setdefault(group["name"], None)
    return list(names)


def _cell(value: Any, log: bool) -> float | None:
    """The colour value of one cell (``None``: no value, or none on a log scale)."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return None
    if log:
        return round(math.log10(value), 5) if value > 0 else None
    return float(value)


def _exact(value: Any) -> float | None:
    """The value shown on hover: 6 significant digits (the hover shows 4)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    return float(f"{value:.6g}")


def overview_figure(
    summaries: Sequence[dict[str, Any]], quantity: Quantity, *, uirevision: str = ""
) -> tuple[go.Figure, list[str]]:
    """The heatmap of ``quantity`` over ``summaries`` (ascending steps) and the group names
    of its rows (model order, top to bottom).

    Trace: ``x`` steps, ``y`` group names (as literal text: :func:`~.figures.plain`; a
    click handler maps a cell back by its ``pointIndex``), ``z[row][column]`` the colour
    value (``log10`` of the value for a log quantity; ``None`` where the snapshot has no
    value), ``customdata`` the value itself. No template (plotly's default costs the
    browser ~100 ms per draw of this figure).
    """
    names = _group_order(summaries)
    row = {name: i for i, name in enumerate(names)}
    steps = [s["step"] for s in summaries]
    z: list[list[float | None]] = [[None] * len(steps) for _ in names]
    raw: list[list[float | None]] = [[None] * len(steps) for _ in names]
    for j, summary in enumerate(summaries):
        for group in summary["groups"]:
            i = row[group["name"]]
            z[i][j] = _cell(group.get(quantity.key), quantity.log)
            raw[i][j] = _exact(group.get(quantity.key))
    colorbar: dict[str, Any] = {"title": {"text": quantity.label}, "thickness": 14}
    filled = [v for line in z for v in line if v is not None]
    if quantity.log and filled:
        lo, hi = math.floor(min(filled)), math.ceil(max(filled))
        every = max(1, math.ceil((hi - lo + 1) / 8))
        ticks = list(range(lo, hi + 1, every))
        colorbar.update(tickvals=ticks, ticktext=[f"1e{t}" for t in ticks])
    trace = go.Heatmap(
        x=steps,
        y=[plain(name) for name in names],
        z=z,
        customdata=raw,
        colorscale="Viridis",
        colorbar=colorbar,
        hoverongaps=False,
        xgap=0,
        ygap=1 if len(names) <= 40 else 0,
        hovertemplate=(
            f"group %{{y}}<br>step %{{x}}<br>{quantity.label} = %{{customdata:.4g}}<extra></extra>"
        ),
    )
    fig = go.Figure(trace)
    fig.update_layout(
        height=max(220, 90 + _ROW_PX * len(names)),
        margin={"l": 10, "r": 10, "t": 36, "b": 40},
        title={"text": f"{quantity.label} per group and step ({quantity.description})"},
        xaxis={"title": {"text": "step"}},
        yaxis={"autorange": "reversed", "automargin": True, "type": "category"},
        uirevision=uirevision,
        template="none",
        font={"family": "system-ui, -apple-system, Segoe UI, sans-serif", "size": 12},
        paper_bgcolor="white",
        plot_bgcolor="white",
        hovermode="closest",
    )
    return fig, names


def overview_view_data(
    store: Store, run: str, *, quantity: str = "lam_max", max_points: int = DEFAULT_MAX_POINTS
) -> dict[str, Any]:
    """What the run overview shows.

    Keys: ``run``, ``quantity`` (its key), ``quantities`` (``[{key, label, log}]``, for the
    selector), ``group_names`` (the rows, model order), ``steps`` (the columns: stored steps
    down-sampled to ``max_points``, first and latest kept), ``downsampled`` and ``figure``.

    Raises:
        LookupError: no such run (:class:`~curvscope.server.views.NotFound`).
        KeyError: an unknown quantity.
    """
    chosen = QUANTITIES[quantity]
    steps = store.list_steps(run)
    if not steps and store.get_run(run) is None:
        raise NotFound(f"no run named {run!r}")
    sampled = [steps[i] for i in downsample_indices(len(steps), max_points)]
    summaries = store.read_summaries(run, sampled)
    figure, names = overview_figure(summaries, chosen, uirevision=f"{run}:overview:{quantity}")
    return {
        "run": run,
        "quantity": chosen.key,
        "quantities": [
            {"key": q.key, "label": q.label, "log": q.log, "description": q.description}
            for q in QUANTITIES.values()
        ],
        "group_names": names,
        "steps": [s["step"] for s in summaries],
        "downsampled": len(summaries) < len(steps),
        "figure": figure,
    }
