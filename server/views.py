"""What the run, step and compare views show, as data with Plotly figures: the one view
layer of the dashboard's figure endpoints (:mod:`curvscope.server.routes.figure_api`) and
the offline report (:mod:`curvscope.server.report`). FastAPI-free: plain functions of a
:class:`~curvscope.server.stores.Store`.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from curvscope.server import figures
from curvscope.server.figures import (
    DEFAULT_SMOOTH_WINDOW,
    DensityMode,
    Overlay,
    Smoothing,
    Snapshot,
)
from curvscope.server.protocol import DEFAULT_BACKEND
from curvscope.server.stores import LightSnapshot, RunSummary, Store, downsample_indices

__all__ = [
    "DEFAULT_MAX_POINTS",
    "NotFound",
    "compare_view_data",
    "encode",
    "run_view_data",
    "step_view_data",
]

DEFAULT_MAX_POINTS = 200
"""Snapshots read for the figures over steps unless ``max_points`` says otherwise."""


class NotFound(LookupError):
    """No such run, or no snapshot at the step asked for."""


def _figure_json(fig: go.Figure) -> str:
    return str(fig.to_json(validate=False))


def encode(value: Any) -> str:
    """JSON text of nested dicts/lists whose leaves may be figures (encoded by plotly)."""
    if isinstance(value, go.Figure):
        return _figure_json(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{encode(str(k))}:{encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(encode(v) for v in value) + "]"
    return json.dumps(value)


def _groups_of(*snapshots: Snapshot | None) -> list[str]:
    names: list[str] = []
    for snap in snapshots:
        for name in figures.group_names(snap or {}):
            if name not in names:
                names.append(name)
    return names


def _events(store: Store, run: str, limit: int = 20) -> list[dict[str, Any]]:
    events = [e.to_dict() for e in store.read_events(run) if e.level in ("error", "warning")]
    return events[-limit:]


def _summary(store: Store, run: str) -> RunSummary:
    summary = store.get_run(run)
    if summary is None:
        raise NotFound(f"no run named {run!r}")
    return summary


def _light_series(
    store: Store,
    run: str,
    steps: Sequence[int],
    max_points: int,
    top: int,
    groups: Sequence[str] | None = None,
) -> list[LightSnapshot]:
    """The series for the plots over steps: at most ``max_points`` of ``steps`` (the first
    and latest kept, :func:`~curvscope.server.stores.downsample_indices`), with the
    eigenvalues of ``groups`` only (all for ``None``)."""
    chosen = [steps[i] for i in downsample_indices(len(steps), max_points)]
    return store.read_light_series(run, chosen, top, None if groups is None else set(groups))


def _summaries(
    store: Store, run: str, steps: Sequence[int], max_points: int
) -> list[dict[str, Any]]:
    """The stored summaries for the plots over steps: at the down-sampled ``steps`` (as
    :func:`_light_series`) and at each one's next snapshot, so that the loss change to the
    next snapshot is known at every chosen step."""
    chosen = {steps[i] for i in downsample_indices(len(steps), max_points)}
    successor = dict(itertools.pairwise(steps))
    wanted = chosen | {successor[s] for s in chosen if s in successor}
    return store.read_summaries(run, sorted(wanted))


def _step_snapshots(
    store: Store, run: str, steps: list[int], step: int | None
) -> tuple[Snapshot, Snapshot, Snapshot]:
    """The snapshots at ``step`` (latest if ``None``), at the first and at the latest of
    ``steps`` (each read once)."""
    wanted = steps[-1] if step is None else step
    read: dict[int, Snapshot] = {}
    for at in (wanted, steps[0], steps[-1]):
        if at not in read:
            record = store.read_snapshot(run, at)
            if record is None:
                raise NotFound(f"run {run!r} has no snapshot at step {at}")
            read[at] = record.to_dict()
    return read[wanted], read[steps[0]], read[steps[-1]]


def _step_groups(
    store: Store,
    run: str,
    steps: list[int],
    step: int | None,
    *,
    overlay: Overlay,
    mode: DensityMode,
    groups: Sequence[str] | None = None,
    max_groups: int | None = None,
) -> tuple[int, list[str], list[dict[str, Any]]]:
    """The shown step, every group's name, and per group drawn (those in ``groups``, or
    all; at most ``max_groups``) its per-step figures and facts."""
    current, first, latest = _step_snapshots(store, run, steps, step)
    backend = current.get("config", {}).get("backend", DEFAULT_BACKEND)
    names = _groups_of(current, latest)
    drawn = names if groups is None else [n for n in names if n in set(groups)]
    out = []
    for name in drawn[:max_groups]:
        group = figures.find_group(current, name) or {}
        out.append(
            {
                "name": name,
                "num_params": group.get("num_params"),
                "k": len(group.get("eigvals", ())),
                "k_stats": len(group.get("gamma", ())),
                "grad_norm_sq": group.get("grad_norm_sq"),
                "backend": backend,
                "figures": figures.step_figures(
                    current, name, first=first, latest=latest, overlay=overlay, mode=mode, run=run
                ),
            }
        )
    return current["step"], names, out


def run_view_data(
    store: Store,
    run: str,
    *,
    step: int | None = None,
    mode: DensityMode = "density",
    overlay: Overlay = "none",
    max_points: int = DEFAULT_MAX_POINTS,
    top: int = 8,
    live_window_s: float = 60.0,
    groups: Sequence[str] | None = None,
    max_groups: int | None = None,
    smooth: Smoothing = "none",
    window: int = DEFAULT_SMOOTH_WINDOW,
) -> dict[str, Any]:
    """Everything the run view (and the report) shows, with figures as ``go.Figure``.

    ``groups`` picks the groups drawn (default: all, at most ``max_groups``: a request's
    work stays bounded whatever the model; ``group_names`` lists every group). ``smooth``
    and ``window`` smooth the eigenvalue trajectories
    (:func:`~curvscope.server.figures.eigval_trajectories_figure`).

    Keys: ``run`` (summary), ``step``, ``steps`` (every stored step, for the slider),
    ``series_points`` (snapshots in the plots over steps), ``downsampled`` (fewer than all),
    ``events`` (errors and warnings), ``loss`` (figure), ``groups`` (per group: ``name,
    num_params, k, k_stats, grad_norm_sq, backend`` (the shown snapshot's
    ``config.backend``) and ``figures`` with ``density, snr, gamma, overlap, eigvals``,
    ``hessian`` and ``hessian_min`` where the run computes the Hessian, ``trust``,
    ``trust_share`` and ``newton`` where it computes the step trust).

    Raises:
        LookupError: no such run, or no snapshot at ``step``.
    """
    summary = _summary(store, run)
    steps = store.list_steps(run)
    series = _light_series(store, run, steps, max_points, top, groups)
    data: dict[str, Any] = {
        "run": summary.to_dict(live_window_s=live_window_s),
        "step": None,
        "steps": steps,
        "series_points": len(series),
        "downsampled": len(steps) > len(series),
        "events": _events(store, run),
        "loss": figures.loss_figure(series, uirevision=f"{run}:loss"),
        "group_names": [],
        "groups": [],
    }
    if not steps:
        return data
    shown, names, drawn = _step_groups(
        store, run, steps, step, overlay=overlay, mode=mode, groups=groups, max_groups=max_groups
    )
    summaries = _summaries(store, run, steps, max_points)
    for group in drawn:
        group["figures"].update(
            figures.series_figures(
                series, group["name"], top=top, run=run, smooth=smooth, window=window
            )
        )
        group["figures"].update(
            figures.summary_series_figures(summaries, group["name"], steps=steps, run=run)
        )
    data.update(step=shown, group_names=names, groups=drawn)
    return data


def step_view_data(
    store: Store,
    run: str,
    step: int | None,
    mode: DensityMode,
    overlay: Overlay,
    groups: Sequence[str] | None = None,
    max_groups: int | None = None,
) -> dict[str, Any]:
    steps = store.list_steps(run)
    if not steps:
        _summary(store, run)  # 404 for an unknown run; a run with events only has no step
        return {"run": run, "step": None, "group_names": [], "groups": []}
    shown, names, drawn = _step_groups(
        store, run, steps, step, overlay=overlay, mode=mode, groups=groups, max_groups=max_groups
    )
    return {"run": run, "step": shown, "group_names": names, "groups": drawn}


def compare_view_data(
    store: Store, runs: Sequence[str], group: str | None, mode: DensityMode, max_points: int
) -> dict[str, Any]:
    series: list[tuple[str, list[LightSnapshot]]] = []
    latest: list[tuple[str, Snapshot]] = []
    for run in runs:
        steps = store.list_steps(run)
        if not steps:
            _summary(store, run)  # 404 for an unknown run
        light = _light_series(store, run, steps, max_points, top=3)
        series.append((run, light))
        record = store.read_snapshot(run, steps[-1]) if steps else None
        if record is not None:
            latest.append((run, record.to_dict()))
    with_data = [(run, s) for run, s in series if s]
    names = _groups_of(*(snap for _, snap in latest))
    chosen = group if group is not None else (names[0] if names else "")
    key = ",".join(runs)
    return {
        "runs": list(runs),
        "group": chosen,
        "groups": names,
        "figures": {
            "density": figures.compare_density_figure(
                latest, chosen, mode=mode, uirevision=f"{key}:{chosen}:density:{mode}"
            ),
            "eigvals": figures.compare_trajectories_figure(
                with_data, chosen, uirevision=f"{key}:{chosen}:eigvals"
            ),
            "loss": figures.compare_loss_figure(series, uirevision=f"{key}:loss"),
        },
    }
