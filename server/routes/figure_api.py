"""REST endpoints returning Plotly figure JSON built by :mod:`curvscope.server.figures`.

The dashboard page renders exactly these figures (built by :mod:`curvscope.server.views`,
which the HTML report uses too), so the page and the report share one definition of every
plot. Shapes are documented in ``docs/api.md`` (section
"Figures"). Long runs are down-sampled on the server (``max_points``, the latest step is
always kept), so a run of 1,000 snapshots loads as fast as one of 200.

- ``GET /api/runs/{run}/figures``: everything the run view shows at one step.
- ``GET /api/runs/{run}/figures/step``: only the per-step figures (for the step slider).
- ``GET /api/compare/figures?runs=a&runs=b``: several runs overlaid.
- ``GET /api/runs/{run}/overview``: one heatmap (group x step) of a per-group summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status

from curvscope.server.auth import require_read
from curvscope.server.executors import reading
from curvscope.server.figures import DEFAULT_SMOOTH_WINDOW, DensityMode, Overlay, Smoothing
from curvscope.server.overview import QuantityKey, overview_view_data
from curvscope.server.params import (
    RunPath,
    StepQuery,
    app_figure_cache,
    app_settings,
    app_store,
    check_max_points,
    is_run_name,
)
from curvscope.server.stores import Store
from curvscope.server.views import (
    DEFAULT_MAX_POINTS,
    NotFound,
    compare_view_data,
    encode,
    run_view_data,
    step_view_data,
)

__all__ = ["router"]

MAX_COMPARE_RUNS = 8

MaxPoints = Annotated[
    int,
    Query(ge=2, description="Snapshots read for figures over steps (the latest is kept)"),
]
Mode = Annotated[DensityMode, Query(description="density (per decade) or count")]
OverlayQuery = Annotated[Overlay, Query(description="overlay the first/latest density")]
Top = Annotated[int, Query(ge=1, le=50, description="eigenvalue trajectories shown")]
SmoothQuery = Annotated[
    Smoothing, Query(description="smooth the eigenvalue trajectories: none, median or ema")
]
WindowQuery = Annotated[
    int, Query(ge=2, le=101, description="snapshots per smoothing window (median, ema)")
]
GroupsQuery = Annotated[
    list[str] | None, Query(description="Parameter groups to draw (repeatable; default: all)")
]

router = APIRouter(prefix="/api", dependencies=[Depends(require_read)])


def _hashable(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    return value


async def _respond(
    request: Request, runs: Sequence[str], func: Any, store: Store, *args: Any, **kwargs: Any
) -> Response:
    """``func(store, *args, **kwargs)`` encoded, built once per request and run state
    (:mod:`curvscope.server.figure_cache`)."""
    window = app_settings(request).live_window_s
    states = []
    for run in runs:
        summary = await reading(request, store.get_run, run)
        states.append(
            None
            if summary is None
            else (
                summary.snapshots,
                summary.last_step,
                summary.last_update,
                summary.to_dict(live_window_s=window)["live"],
            )
        )
    key = (
        func.__name__,
        _hashable(args),
        tuple(sorted((k, _hashable(v)) for k, v in kwargs.items())),
        tuple(states),
    )

    async def build() -> str:
        data = await reading(request, func, store, *args, **kwargs)
        return str(await reading(request, encode, data))

    try:
        body = await app_figure_cache(request).get(key, build)
    except NotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    return Response(body, media_type="application/json")


@router.get("/runs/{run}/figures", responses={404: {"description": "No such run or step"}})
async def run_figures(
    request: Request,
    run: RunPath,
    step: StepQuery = None,
    mode: Mode = "density",
    overlay: OverlayQuery = "none",
    max_points: MaxPoints = DEFAULT_MAX_POINTS,
    top: Top = 8,
    group: GroupsQuery = None,
    smooth: SmoothQuery = "none",
    window: WindowQuery = DEFAULT_SMOOTH_WINDOW,
) -> Response:
    """Every figure of the run view at ``step``, as Plotly figure JSON (the groups asked
    for, or the first ``max_figure_groups``; ``group_names`` lists them all)."""
    check_max_points(request, max_points)
    return await _respond(
        request,
        [run],
        run_view_data,
        app_store(request),
        run,
        step=step,
        mode=mode,
        overlay=overlay,
        max_points=max_points,
        top=top,
        live_window_s=app_settings(request).live_window_s,
        groups=group,
        max_groups=app_settings(request).max_figure_groups,
        smooth=smooth,
        window=window,
    )


@router.get("/runs/{run}/figures/step", responses={404: {"description": "No such run or step"}})
async def step_figures(
    request: Request,
    run: RunPath,
    step: StepQuery = None,
    mode: Mode = "density",
    overlay: OverlayQuery = "none",
    group: GroupsQuery = None,
) -> Response:
    """Only the per-step figures (density, SNR, |γ|, overlap) at ``step``, of the groups
    asked for (default: the first ``max_figure_groups``)."""
    return await _respond(
        request,
        [run],
        step_view_data,
        app_store(request),
        run,
        step,
        mode,
        overlay,
        group,
        app_settings(request).max_figure_groups,
    )


@router.get("/runs/{run}/overview", responses={404: {"description": "No such run"}})
async def run_overview(
    request: Request,
    run: RunPath,
    quantity: Annotated[
        QuantityKey, Query(description="Summary coloured: lam_max, trace, effective_rank, ...")
    ] = "lam_max",
    max_points: MaxPoints = DEFAULT_MAX_POINTS,
) -> Response:
    """The run overview: a heatmap (parameter group x step, model order) of one per-group
    summary computed at ingest, with ``group_names`` (its rows) and ``steps`` (its columns,
    down-sampled to ``max_points``, the first and latest kept)."""
    check_max_points(request, max_points)
    return await _respond(
        request,
        [run],
        overview_view_data,
        app_store(request),
        run,
        quantity=quantity,
        max_points=max_points,
    )


@router.get("/compare/figures", responses={404: {"description": "A run does not exist"}})
async def compare_figures(
    request: Request,
    runs: Annotated[list[str], Query(description="Run names (two or more)")],
    group: Annotated[str | None, Query(description="Parameter group (default: first)")] = None,
    mode: Mode = "density",
    max_points: MaxPoints = DEFAULT_MAX_POINTS,
) -> Response:
    """Several runs overlaid: latest spectral density, eigenvalue trajectories and loss."""
    check_max_points(request, max_points)
    names = [r for part in runs for r in part.split(",") if r]
    if not names or len(names) > MAX_COMPARE_RUNS:
        raise HTTPException(422, f"give 1 to {MAX_COMPARE_RUNS} runs")
    bad = [r for r in names if not is_run_name(r)]
    if bad:
        raise HTTPException(422, f"invalid run name {bad[0]!r}")
    return await _respond(
        request, names, compare_view_data, app_store(request), names, group, mode, max_points
    )
