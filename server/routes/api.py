"""REST API under ``/api``: runs, snapshots, events, exports, deletion. Shapes: ``docs/api.md``.

Snapshot bodies are assembled from the stored JSON text without re-validating them (they
were validated at ingest), so large series stay cheap to serve; the response models below
document the shapes in the OpenAPI schema.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from curvscope.server.auth import require_read, require_write
from curvscope.server.executors import reading, writing
from curvscope.server.params import (
    RunPath,
    app_fanout,
    app_hub,
    app_settings,
    app_store,
    check_max_points,
)
from curvscope.server.protocol import (
    DEFAULT_BACKEND,
    MAX_STEP,
    SCHEMA_VERSION,
    ConfigPayload,
    GroupPayload,
)
from curvscope.server.stores import (
    EventRecord,
    RunSummary,
    SnapshotRecord,
    Store,
    downsample_indices,
)

__all__ = ["CSV_COLUMNS", "router"]


class Health(BaseModel):
    """``GET /api/health``."""

    status: Literal["ok", "error"] = "ok"
    problem: str | None = None
    """Why the server cannot store now (a full disk, a lost database); then the status
    code is 503."""
    schema_version: int
    store: str
    live_clients: int
    """Browser websockets connected now."""
    dropped_clients: int
    """Browser websockets dropped for reading too slowly since start."""


class RunOut(BaseModel):
    """One entry of ``GET /api/runs``."""

    run: str
    snapshots: int
    first_step: int | None
    last_step: int | None
    last_update: float
    live: bool
    errors: int


class SnapshotOut(BaseModel):
    """A stored snapshot: the wire message's fields plus ``received_at`` (server time)."""

    run: str
    step: int
    wall_time: float
    loss: float
    batch_size: int
    config: ConfigPayload
    groups: list[GroupPayload]
    received_at: float


router = APIRouter(prefix="/api")
_reads = [Depends(require_read)]


async def _summary_or_404(request: Request, run: str) -> RunSummary:
    summary = await reading(request, app_store(request).get_run, run)
    if summary is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run named {run!r}")
    return summary


SNAPSHOT_CHUNK = 64
"""Snapshots read and sent at a time by the snapshots endpoint (its memory bound)."""


def _records(store: Store, run: str, steps: list[int]) -> list[SnapshotRecord]:
    """The snapshots at ``steps`` (ascending): one range read when they are all there is
    in their range, else one read per step."""
    if not steps:
        return []
    span = store.read_snapshots(run, steps[0], steps[-1], len(steps) + 1)
    if [r.step for r in span] == steps:
        return span
    return [r for r in (store.read_snapshot(run, s) for s in steps) if r is not None]


async def _stream_snapshots(request: Request, run: str, steps: list[int]) -> AsyncIterator[str]:
    """``[snapshot, ...]`` as JSON text, :data:`SNAPSHOT_CHUNK` snapshots at a time."""
    store = app_store(request)
    yield "["
    for i in range(0, len(steps), SNAPSHOT_CHUNK):
        records = await reading(request, _records, store, run, steps[i : i + SNAPSHOT_CHUNK])
        yield ("," if i else "") + ",".join(r.to_json() for r in records)
    yield "]"


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
async def health(request: Request, response: Response) -> Health:
    """Readiness: ``ok`` while the store can take writes, else ``error`` with the problem
    (status 503: a full disk, a lost database). Never needs a token."""
    hub = app_hub(request)
    store = app_store(request)
    problem = await reading(request, store.problem)
    if problem is not None:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(
        status="ok" if problem is None else "error",
        problem=problem,
        schema_version=SCHEMA_VERSION,
        store=type(store).__name__,
        live_clients=hub.subscriber_count(),
        dropped_clients=hub.dropped_total,
    )


@router.get("/runs", response_model=list[RunOut], dependencies=_reads)
async def list_runs(request: Request) -> list[dict[str, object]]:
    """All runs, most recently updated first."""
    window = app_settings(request).live_window_s
    runs = await reading(request, app_store(request).list_runs)
    return [r.to_dict(live_window_s=window) for r in runs]


@router.get("/runs/{run}", response_model=RunOut, dependencies=_reads)
async def get_run(request: Request, run: RunPath) -> dict[str, object]:
    """One run's summary."""
    summary = await _summary_or_404(request, run)
    return summary.to_dict(live_window_s=app_settings(request).live_window_s)


@router.get(
    "/runs/{run}/snapshots",
    response_model=list[SnapshotOut],
    dependencies=_reads,
    responses={404: {"description": "No such run"}},
)
async def read_snapshots(
    request: Request,
    run: RunPath,
    start: Annotated[
        int | None, Query(ge=0, le=MAX_STEP, description="First step (inclusive)")
    ] = None,
    end: Annotated[
        int | None, Query(ge=0, le=MAX_STEP, description="Last step (inclusive)")
    ] = None,
    max_points: Annotated[
        int | None,
        Query(ge=1, description="Down-sample to at most this many; the latest is always kept"),
    ] = None,
) -> Response:
    """Snapshots in step order, optionally in a step range and down-sampled."""
    check_max_points(request, max_points)
    if start is not None and end is not None and start > end:
        raise HTTPException(422, "start must be <= end")
    await _summary_or_404(request, run)
    steps = [
        s
        for s in await reading(request, app_store(request).list_steps, run)
        if (start is None or s >= start) and (end is None or s <= end)
    ]
    steps = [steps[i] for i in downsample_indices(len(steps), max_points)]
    # Streamed a chunk at a time: a run of thousands of snapshots is never one body in memory.
    return StreamingResponse(_stream_snapshots(request, run, steps), media_type="application/json")


@router.get("/runs/{run}/events", response_model=list[EventRecord], dependencies=_reads)
async def read_events(request: Request, run: RunPath) -> list[EventRecord]:
    """A run's events (errors, warnings, notes reported by the probe) in arrival order."""
    await _summary_or_404(request, run)
    return await reading(request, app_store(request).read_events, run)


CSV_COLUMNS = (
    "run",
    "step",
    "wall_time",
    "received_at",
    "loss",
    "batch_size",
    "group",
    "num_params",
    "grad_norm_sq",
    "direction",
    "eigval",
    "gamma",
    "snr_gamma",
    "snr_lambda",
    "grad_overlap",
    "backend",
    "gradient_eigval",
    "gradient_moment_eigval",
    "trust_damping",
    "trust_bound",
    "newton_reduction",
)
"""CSV export: one row per (snapshot, group, direction k < K); the statistics columns are
empty for directions without statistics (beyond ``top_k``, or not selected). ``backend``
is the snapshot's ``config.backend`` (after the first columns, so that those keep their
positions). ``gradient_eigval`` and ``gradient_moment_eigval`` are the k-th largest
eigenvalues of the gradient-noise covariance and second moment (runs with
``gradient_spectrum=True``): a second spectrum indexed by the same k, not tied to GGN
direction k; where it has more eigenvalues than the GGN, the extra rows leave the GGN
columns empty. ``trust_damping`` and ``trust_bound`` (runs with ``step_trust=True``) are
per statistics direction like ``gamma`` (an empty damping where the bound is negative: no
trusted step), ``newton_reduction`` is the group's, repeated on its rows. Per-sample
matrices are JSON-only."""


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(text: str) -> str:
    """A text cell a spreadsheet shows as text: one starting like a formula (``=HYPERLINK``,
    ``+``, ``-``, ``@``) gets a leading apostrophe (OWASP's CSV injection advice)."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def _blank(value: object) -> object:
    """A CSV cell: ``None`` (a value the snapshot does not have) is empty."""
    return "" if value is None else value


def _csv_rows(records: Iterator[SnapshotRecord]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for record in records:
        snap = record.to_dict()
        head = [snap["run"], snap["step"], snap["wall_time"], record.received_at, snap["loss"]]
        backend = snap.get("config", {}).get("backend", DEFAULT_BACKEND)
        for group in snap["groups"]:
            chosen = group.get("directions")
            position = {
                k: j for j, k in enumerate(range(len(group["gamma"])) if chosen is None else chosen)
            }
            eigvals = group["eigvals"]
            noise = group.get("gradient_eigvals") or []
            moment = group.get("gradient_moment_eigvals") or []
            for k in range(max(len(eigvals), len(noise), len(moment))):
                j = position.get(k)
                stats = (
                    [group[f][j] for f in ("gamma", "snr_gamma", "snr_lambda", "grad_overlap")]
                    if j is not None
                    else ["", "", "", ""]
                )
                trust = [
                    "" if j is None or group.get(f) is None or group[f][j] is None else group[f][j]
                    for f in ("trust_damping", "trust_bound")
                ]
                writer.writerow(
                    [
                        *head,
                        snap["batch_size"],
                        _cell(group["name"]),
                        group["num_params"],
                        group["grad_norm_sq"],
                        k,
                        eigvals[k] if k < len(eigvals) else "",
                        *stats,
                        backend,
                        noise[k] if k < len(noise) else "",
                        moment[k] if k < len(moment) else "",
                        *trust,
                        _blank(group.get("newton_reduction")),
                    ]
                )
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue()


def _json_export(summary: dict[str, object], store: Store, run: str) -> Iterator[str]:
    yield '{"run":' + json.dumps(summary) + ',"snapshots":['
    for i, record in enumerate(store.iter_snapshots(run)):
        yield ("," if i else "") + record.to_json()
    events = [e.to_dict() for e in store.read_events(run)]
    yield '],"events":' + json.dumps(events) + "}"


@router.get(
    "/runs/{run}/export",
    dependencies=_reads,
    responses={
        200: {
            "content": {"text/csv": {}, "application/json": {}},
            "description": "The whole run as a download",
        }
    },
)
async def export_run(
    request: Request,
    run: RunPath,
    format: Annotated[Literal["csv", "json"], Query(description="csv or json")] = "json",
) -> StreamingResponse:
    """The whole run as a file: JSON ``{"run", "snapshots", "events"}`` or long-format CSV."""
    summary = await _summary_or_404(request, run)
    store = app_store(request)
    headers = {"Content-Disposition": f'attachment; filename="{run}.{format}"'}
    if format == "csv":
        return StreamingResponse(
            _csv_rows(store.iter_snapshots(run)), media_type="text/csv", headers=headers
        )
    body = _json_export(
        summary.to_dict(live_window_s=app_settings(request).live_window_s), store, run
    )
    return StreamingResponse(body, media_type="application/json", headers=headers)


@router.delete(
    "/runs/{run}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Depends(require_write)],
    responses={401: {"description": "Token missing or wrong"}, 404: {"description": "No such run"}},
)
async def delete_run(request: Request, run: RunPath) -> Response:
    """Delete a run with its snapshots and events (needs the token when one is configured)."""
    deleted = await writing(request, app_store(request).delete_run, run)
    if not deleted:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run named {run!r}")
    fanout = app_fanout(request)
    if not fanout.cross_worker:  # else every worker hears of it from the store's feed
        fanout.deleted(run)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
