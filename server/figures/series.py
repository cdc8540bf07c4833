"""Plots over steps: top-eigenvalue trajectories (smoothing, the edge of stability) and the loss."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import plotly.graph_objects as go

from curvscope.server.figures.base import (
    COLORS,
    Snapshot,
    _eigvals,
    _figure,
    _note,
    _quantile,
    _relayout,
    plain,
)

__all__ = [
    "ADAPTIVE_NOTE",
    "DEFAULT_SMOOTH_WINDOW",
    "THRESHOLD_NAMES",
    "Smoothing",
    "eigval_trajectories_figure",
    "loss_figure",
    "stability_threshold",
]


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


Smoothing = Literal["none", "median", "ema"]
"""How the eigenvalue trajectories are smoothed over snapshots: not at all, a centred
moving median, or an exponential moving average of log10 λ."""


DEFAULT_SMOOTH_WINDOW = 5
"""Snapshots in a smoothing window unless asked otherwise."""


def _windows(n: int, window: int, centred: bool) -> list[tuple[int, int]]:
    """``[start, stop)`` of each point's window: ``window`` points centred on it (cut at
    the ends) or the ``window`` points ending at it (fewer at the start)."""
    if centred:
        before = (window - 1) // 2
        return [(max(0, i - before), min(n, i - before + window)) for i in range(n)]
    return [(max(0, i + 1 - window), i + 1) for i in range(n)]


def _smoothed(
    values: Sequence[float], how: Smoothing, window: int
) -> tuple[list[float], list[float], list[float]]:
    """``(smoothed, band low, band high)`` of positive ``values`` (in snapshot order).

    ``median``: the median of each centred window of ``window`` snapshots; ``ema``: the
    exponential moving average of log10 λ with ``α = 2 / (window + 1)`` (a geometric
    mean, as λ spans decades), trailing. The band is the 10 % and 90 % quantile of the same
    windows (trailing ones for ``ema``): where the snapshot-to-snapshot spread lies.
    """
    spans = _windows(len(values), window, centred=how == "median")
    low, high, median = [], [], []
    for start, stop in spans:
        ordered = sorted(values[start:stop])
        low.append(_quantile(ordered, 0.1))
        high.append(_quantile(ordered, 0.9))
        median.append(_quantile(ordered, 0.5))
    if how == "median":
        return median, low, high
    alpha = 2.0 / (window + 1)
    smooth: list[float] = []
    level = math.log10(values[0]) if values else 0.0
    for v in values:
        level += alpha * (math.log10(v) - level)
        smooth.append(10.0**level)
    return smooth, low, high


def stability_threshold(optimizer: Mapping[str, Any] | None) -> float | None:
    """The edge of stability of the optimizer's update: the largest curvature λ along which
    it does not diverge on a quadratic, from a snapshot's ``optimizer``
    (:class:`~curvscope.server.protocol.OptimizerPayload` as a dict).

    - SGD: ``2/η``; with heavy-ball momentum β (PyTorch's ``v ← βv + (1−τ)g``,
      ``θ ← θ − ηv``; dampening τ, usually 0): ``2(1+β)/(η(1−τ))``;
    - SGD with Nesterov momentum (PyTorch's form): ``2(1+β)/(η(1+2β))``;
    - ``None`` without an optimizer, for an adaptive one (Adam, RMSprop...: its
      preconditioned curvature is not the GGN's), or at ``η = 0``.
    """
    if not optimizer or optimizer.get("adaptive"):
        return None
    beta = float(optimizer.get("momentum") or 0.0)
    # PyTorch's SGD applies dampening to the momentum buffer only: without momentum it has none
    dampening = float(optimizer.get("dampening") or 0.0) if beta > 0 else 0.0
    rate = float(optimizer["lr"]) * (1.0 - dampening)
    if rate <= 0:
        return None
    if optimizer.get("nesterov"):
        return 2 * (1 + beta) / (rate * (1 + 2 * beta))
    return 2 * (1 + beta) / rate


def _threshold_name(optimizer: Mapping[str, Any]) -> str:
    """The threshold's formula, which names its trace (:data:`THRESHOLD_NAMES`)."""
    if optimizer.get("nesterov"):
        return "2(1+β)/(η(1+2β))"
    if optimizer.get("momentum"):
        return "2(1+β)/η" if not optimizer.get("dampening") else "2(1+β)/(η(1−τ))"
    return "2/η"


THRESHOLD_NAMES = ("2/η", "2(1+β)/η", "2(1+β)/(η(1−τ))", "2(1+β)/(η(1+2β))")
"""The names of the stability threshold's trace: plain SGD, heavy-ball momentum β (with
dampening τ), Nesterov momentum."""


ADAPTIVE_NOTE = (
    "2/η threshold not applicable: adaptive optimizer {name}<br>"
    "(the GGN is not the preconditioned curvature)"
)
"""What the trajectory figure says in place of the threshold for an adaptive optimizer (in
two lines: ``<br>``)."""


def _stability_traces(series: Sequence[Snapshot]) -> tuple[go.Scatter | None, str | None]:
    """The threshold line over the snapshots whose optimizer has one (a gap at the others),
    and the note for an adaptive optimizer (``None`` where no snapshot has one)."""
    steps: list[int] = []
    values: list[float | None] = []
    custom: list[list[float]] = []
    last: Mapping[str, Any] | None = None
    adaptive: str | None = None
    for snap in series:
        optimizer = snap.get("optimizer")
        threshold = stability_threshold(optimizer)
        if optimizer and optimizer.get("adaptive"):
            adaptive = str(optimizer.get("name", "?"))
        steps.append(snap["step"])
        values.append(threshold)
        custom.append(
            [float(optimizer["lr"]), float(optimizer.get("momentum") or 0.0)]
            if optimizer
            else [0.0, 0.0]
        )
        if threshold is not None:
            last = optimizer
    note = None if adaptive is None else ADAPTIVE_NOTE.format(name=plain(adaptive))
    if last is None:
        return None, note
    line = go.Scatter(
        _validate=False,
        x=steps,
        y=values,
        customdata=custom,
        mode="lines",
        connectgaps=False,
        line={"color": "#222", "width": 1.5, "dash": "dash"},
        name=_threshold_name(last),  # short: Plotly gives every legend column the widest's width
        hovertemplate="step %{x}<br>threshold %{y:.4g}<br>η=%{customdata[0]:.3g}, "
        "β=%{customdata[1]:.3g}<extra>edge of stability</extra>",
    )
    return line, note


def _rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def eigval_trajectories_figure(
    series: Sequence[Snapshot],
    group: str,
    *,
    top: int = 8,
    smooth: Smoothing = "none",
    window: int = DEFAULT_SMOOTH_WINDOW,
    uirevision: str = "eigvals",
) -> go.Figure:
    """λ_1 … λ_top of group ``group`` over steps (log y), with the optimizer's stability
    threshold.

    Unsmoothed (``smooth="none"``): trace k has one point per snapshot of ``series`` whose
    group has more than k eigenvalues. Smoothed (``"median"`` or ``"ema"`` over ``window``
    snapshots, see :func:`_smoothed`; the title says which): per k a filled band (10–90 %
    of each window, ``"λ_k 10–90 %"``), the raw points (faint, ``"λ_k (raw)"``) and the
    smoothed line (``"λ_k"``), in three layers: every band, then every raw trace, then
    every line (``legendgroup`` ties them to λ_k's legend entry).

    Where the snapshots carry the optimizer (``Probe(optimizer=...)``), a last trace, named
    by its formula (:data:`THRESHOLD_NAMES`), draws its threshold
    :func:`stability_threshold` at each step (it follows a learning-rate schedule); for an
    adaptive optimizer the figure says instead that the threshold does not apply
    (:data:`ADAPTIVE_NOTE`).
    """
    how = f"moving median of {window}" if smooth == "median" else f"EMA over {window}"
    fig = _figure(
        f"Top-{top} eigenvalues over steps{'' if smooth == 'none' else f' ({how})'} — {group}",
        uirevision,
        {"title": {"text": "step"}},
        {"type": "log", "title": {"text": "eigenvalue λ_k"}},
    )
    layers: tuple[list[go.Scatter], list[go.Scatter], list[go.Scatter]] = ([], [], [])
    for k, (steps, values) in enumerate(_trajectories(series, group, top)):
        color = COLORS[k % len(COLORS)]
        name = f"λ_{k + 1}"
        if smooth == "none":
            layers[2].append(
                go.Scatter(
                    _validate=False,
                    x=steps,
                    y=values,
                    mode="lines+markers" if len(steps) < 60 else "lines",
                    marker={"size": 4},
                    line={"color": color, "width": 1.5},
                    name=name,
                    hovertemplate=f"step %{{x}}<br>{name}=%{{y:.4g}}<extra></extra>",
                )
            )
            continue
        line, low, high = _smoothed(values, smooth, window)
        layers[0].append(
            go.Scatter(
                _validate=False,
                x=[*steps, *reversed(steps)],
                y=[*high, *reversed(low)],
                mode="lines",
                fill="toself",
                fillcolor=_rgba(color, 0.15),
                line={"width": 0, "color": color},
                legendgroup=name,
                showlegend=False,
                name=f"{name} 10–90 %",
                hoverinfo="skip",
            )
        )
        layers[1].append(
            go.Scatter(
                _validate=False,
                x=steps,
                y=values,
                mode="markers",
                marker={"size": 3, "color": color, "opacity": 0.35},
                legendgroup=name,
                showlegend=False,
                name=f"{name} (raw)",
                hovertemplate=f"step %{{x}}<br>{name}=%{{y:.4g}} (raw)<extra></extra>",
            )
        )
        layers[2].append(
            go.Scatter(
                _validate=False,
                x=steps,
                y=line,
                mode="lines",
                line={"color": color, "width": 2},
                legendgroup=name,
                name=name,  # the title says how it is smoothed; short legend entries
                hovertemplate=f"step %{{x}}<br>{name} {how}=%{{y:.4g}}<extra></extra>",
            )
        )
    for layer in layers:
        for trace in layer:
            fig.add_trace(trace)
    if not fig.data:
        return _note(fig, "no eigenvalues yet")
    threshold, note = _stability_traces(series)
    if threshold is not None:
        fig.add_trace(threshold)
    if note is not None:
        fig = _relayout(
            fig,
            annotations=[
                *fig.layout.to_plotly_json().get("annotations", []),
                {
                    "text": note,
                    "xref": "paper",
                    "yref": "paper",
                    "x": 0.01,
                    "y": 0.99,
                    "xanchor": "left",
                    "yanchor": "top",
                    "showarrow": False,
                    "align": "left",
                    "bgcolor": "rgba(255,255,255,0.85)",
                    "font": {"size": 11, "color": "#8a4b00"},
                },
            ],
        )
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
