"""Live step trust (``step_trust=True``; paper §4.2): which directions a damped Newton step
could use now."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go

from curvscope.server.figures.base import _GREY, COLORS, Snapshot, _figure, _fmt, _note
from curvscope.server.figures.directions import _stats

__all__ = ["Summary", "has_trust", "trust_figure"]


Summary = Mapping[str, Any]
"""One snapshot's summary (:func:`curvscope.server.summaries.snapshot_summary`):
``{"step", "loss", "optimizer", "groups": [{"name", "trust_share", ...}]}``."""


_TRUSTED = COLORS[2]


_UNTRUSTED = COLORS[1]


def has_trust(snapshot: Snapshot) -> bool:
    """Whether the run computes the step trust (``config.step_trust``) or this step has it."""
    if (snapshot.get("config") or {}).get("step_trust", False):
        return True
    return any(g.get("trust_bound") is not None for g in snapshot.get("groups", ()))


def trust_figure(snapshot: Snapshot, group: str, *, uirevision: str = "trust") -> go.Figure:
    """Which directions could a Newton step use now: the 5 % bootstrap bound on the loss
    reduction of the damped Newton step along ``e_k`` (``trust_bound``, linear y) against
    λ_k (log x), one marker per statistics direction.

    Traces, in order: ``bound ≥ 0`` (trusted: the damping δ_k in the hover), ``bound < 0``
    (no damping makes the step trustworthy; the step leaves ``e_k`` alone) and the zero line.
    Their names carry the counts (``n of K'``). A step without the trust says so.
    """
    lam, found = _stats(snapshot, group)
    fig = _figure(
        f"Which directions could a Newton step use now — {group}",
        uirevision,
        {"type": "log", "title": {"text": "eigenvalue λ_k"}},
        {"title": {"text": "5 % bound on the loss reduction"}, "zeroline": False},
    )
    bound = None if found is None else found.get("trust_bound")
    if found is None or bound is None:
        return _note(fig, "no step trust at this step")
    if not lam:
        return _note(fig, "no directions at this step")
    damping = found.get("trust_damping") or [None] * len(bound)
    total = len(bound)
    for trusted, color, label in (
        (True, _TRUSTED, "bound ≥ 0: trusted step"),
        (False, _UNTRUSTED, "bound < 0: no trusted step"),
    ):
        keep = [k for k, b in enumerate(bound) if (b >= 0) == trusted and lam[k] > 0]
        fig.add_trace(
            go.Scatter(
                _validate=False,
                x=[lam[k] for k in keep],
                y=[float(bound[k]) for k in keep],
                customdata=[[k, "none" if damping[k] is None else _fmt(damping[k])] for k in keep],
                mode="markers",
                marker={"color": color, "size": 7, "opacity": 0.85},
                name=f"{label} ({len(keep)} of {total})",
                hovertemplate="k=%{customdata[0]}<br>λ=%{x:.3g}<br>bound=%{y:.3g}"
                "<br>δ_k=%{customdata[1]}<extra></extra>",
            )
        )
    positive = [v for v in lam if v > 0]
    fig.add_trace(
        go.Scatter(
            _validate=False,
            x=[min(positive), max(positive)] if positive else [],
            y=[0.0, 0.0] if positive else [],
            mode="lines",
            line={"color": _GREY, "dash": "dash", "width": 1.5},
            name="bound = 0",
            hoverinfo="skip",
        )
    )
    return fig
