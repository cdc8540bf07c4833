"""What the server needs from storage: the :class:`Store` contract and its records.

The API, ingest and hub know only this interface; :mod:`~curvscope.server.stores.sqlite`
(the embedded default) and :mod:`~curvscope.server.stores.postgres` (a team server)
implement it, and ``tests/server/stores`` runs the same contract tests against both.
Every method is synchronous and thread-safe: async callers run them in a worker thread.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from curvscope.server.protocol import EventMessage, SnapshotMessage

__all__ = [
    "EventRecord",
    "LightSnapshot",
    "RunSummary",
    "RunTaken",
    "SnapshotRecord",
    "StepConflict",
    "Store",
    "StoreError",
    "downsample_indices",
    "json_head",
    "light_series_from_rows",
    "light_snapshot",
    "redact_url",
    "same_payload",
    "snapshot_payload_json",
]


class StoreError(RuntimeError):
    """The store cannot be opened or used (unknown schema version, unreadable file...)."""


class RunTaken(Exception):
    """The run belongs to another probe instance and the message does not resume it.

    Attributes:
        run: the run's name.
        owner: the instance that owns it (``None``: a run from before instances, or one
            written by a client that sends none).
    """

    def __init__(self, run: str, owner: str | None) -> None:
        super().__init__(run, owner)
        self.run, self.owner = run, owner


class StepConflict(Exception):
    """A different snapshot is already stored under the same key ``(run, step)``."""

    def __init__(self, run: str, step: int) -> None:
        super().__init__(run, step)
        self.run, self.step = run, step


_NOT_CONTENT = ("wall_time", "instance")
"""Payload fields that say when and by whom, not what: a replay differs only in these."""


def _without_nulls(value: Any) -> Any:
    """``value`` with every ``null`` object member left out, at any depth."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def same_payload(stored: str, payload: str) -> bool:
    """Whether two stored payloads (JSON text) hold the same snapshot: the same numbers,
    whenever and by whichever probe instance they were computed. An optional field that is
    ``null`` in one and absent in the other (stored by an older server) is the same."""
    if stored == payload:
        return True
    a, b = json.loads(stored), json.loads(payload)
    for field in _NOT_CONTENT:
        a.pop(field, None)
        b.pop(field, None)
    return bool(_without_nulls(a) == _without_nulls(b))


@dataclass(frozen=True)
class RunSummary:
    """What the run list shows about one run."""

    run: str
    snapshots: int
    first_step: int | None
    last_step: int | None
    last_update: float
    """Unix time the server last stored something for this run."""
    errors: int
    """Number of events of level ``error``."""

    def to_dict(self, *, live_window_s: float, now: float | None = None) -> dict[str, Any]:
        """The JSON shape of ``GET /api/runs`` entries; ``live``: updated within the window."""
        now = time.time() if now is None else now
        return {
            "run": self.run,
            "snapshots": self.snapshots,
            "first_step": self.first_step,
            "last_step": self.last_step,
            "last_update": self.last_update,
            "live": self.snapshots > 0 and now - self.last_update < live_window_s,
            "errors": self.errors,
        }


@dataclass(frozen=True)
class SnapshotRecord:
    """One stored snapshot: ``payload_json`` is the snapshot message minus ``type`` and
    ``schema_version``, as a JSON object."""

    run: str
    step: int
    received_at: float
    payload_json: str

    def to_json(self) -> str:
        """The REST shape: the stored fields plus ``received_at``, as JSON text."""
        body = self.payload_json.rstrip()
        return f'{body[:-1]},"received_at":{json.dumps(self.received_at)}}}'

    def to_dict(self) -> dict[str, Any]:
        """The REST shape as a dict (see :meth:`to_json`)."""
        data: dict[str, Any] = json.loads(self.payload_json)
        data["received_at"] = self.received_at
        return data


@dataclass(frozen=True)
class EventRecord:
    """One stored event."""

    id: int
    run: str
    step: int | None
    wall_time: float
    level: str
    message: str
    received_at: float

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``GET /api/runs/{run}/events`` entries (the fields above)."""
        return dataclasses.asdict(self)


LightSnapshot = dict[str, Any]
"""Step, loss and the top eigenvalues of one snapshot, for the plots over steps:
``{"step": int, "loss": float, "groups": [{"name": str, "eigvals": [<= top floats]}]}``."""


def light_snapshot(snapshot: dict[str, Any], top: int) -> LightSnapshot:
    """The light form of a snapshot in its REST JSON shape (see :data:`LightSnapshot`)."""
    return {
        "step": snapshot["step"],
        "loss": snapshot["loss"],
        "groups": [{"name": g["name"], "eigvals": g["eigvals"][:top]} for g in snapshot["groups"]],
    }


_PASSWORD_IN_URL = re.compile(r"(://[^:/@?#]*:)[^@/?#]*@")
_PASSWORD_PARAM = re.compile(r"((?:^|[?&\s])password=)(?:'(?:[^'\\]|\\.)*'|[^&\s]*)")


def redact_url(url: str) -> str:
    """A database URL (or libpq ``key=value`` string) fit for messages and logs: its
    password (``user:PASSWORD@host``, ``password=...``) replaced by ``***``."""
    return _PASSWORD_PARAM.sub(r"\1***", _PASSWORD_IN_URL.sub(r"\1***@", url))


def snapshot_payload_json(message: SnapshotMessage) -> str:
    """The stored JSON of a snapshot message (no ``type``, ``schema_version``, ``resume``)."""
    return message.model_dump_json(exclude={"type", "schema_version", "resume"})


def json_head(array_text: str, top: int) -> list[float]:
    """The first ``top`` numbers of a JSON array of numbers, parsing only those.

    SQL JSON functions hand back the array with each number's original text, so this is exact
    (re-encoding through SQL REAL values would round to 15 digits).
    """
    inner = array_text.strip()[1:-1]
    if not inner.strip():
        return []
    return [float(v) for v in inner.split(",", top)[:top]]


def light_series_from_rows(rows: Iterable[Sequence[Any]], top: int) -> list[LightSnapshot]:
    """:data:`LightSnapshot` entries from SQL rows ``(step, loss, name JSON, eigvals JSON)``
    in step order, one row per group (a snapshot without groups: one row of NULLs)."""
    series: list[LightSnapshot] = []
    for step, loss, name, eigvals in rows:
        if not series or series[-1]["step"] != step:
            series.append({"step": step, "loss": float(loss), "groups": []})
        if name is not None:
            group = {"name": json.loads(name), "eigvals": json_head(eigvals, top)}
            series[-1]["groups"].append(group)
    return series


def downsample_indices(n: int, max_points: int | None) -> list[int]:
    """Indices of at most ``max_points`` of ``n`` ordered points, evenly spread.

    The last point (the latest step) is always kept; with two or more points the first is
    kept too. ``max_points=None`` keeps everything.
    """
    if max_points is None or n <= max_points:
        return list(range(n))
    if max_points <= 0:
        return []
    if max_points == 1:
        return [n - 1]
    step = (n - 1) / (max_points - 1)
    return sorted({round(i * step) for i in range(max_points)} | {n - 1})


class Store(abc.ABC):
    """What the server needs from storage. Implementations must be thread-safe."""

    @abc.abstractmethod
    def append_snapshot(self, message: SnapshotMessage, received_at: float) -> bool:
        """Store a snapshot durably; ``False`` if the same snapshot was already stored under
        ``(run, step)`` (then nothing changes).

        A run belongs to the probe instance that wrote it first; a message of another
        instance is refused unless it resumes the run (``message.resume``: the run then
        belongs to the new instance). A message without an instance claims nothing.

        Raises:
            RunTaken: the run belongs to another instance and the message does not resume.
            StepConflict: a different snapshot is stored under ``(run, step)``.
        """

    @abc.abstractmethod
    def append_event(self, message: EventMessage, received_at: float) -> bool:
        """Store an event durably; ``False`` if the identical event was already stored.

        Raises:
            RunTaken: as :meth:`append_snapshot`.
        """

    @abc.abstractmethod
    def list_runs(self) -> list[RunSummary]:
        """All runs, most recently updated first."""

    @abc.abstractmethod
    def get_run(self, run: str) -> RunSummary | None:
        """One run's summary, or ``None`` if nothing is stored for it."""

    def read_snapshots(
        self,
        run: str,
        start: int | None = None,
        end: int | None = None,
        max_points: int | None = None,
    ) -> list[SnapshotRecord]:
        """Snapshots with ``start <= step <= end`` in step order, down-sampled to at most
        ``max_points`` (see :func:`downsample_indices`: the latest step is always kept)."""
        steps = self._steps(run, start, end)
        chosen = [steps[i] for i in downsample_indices(len(steps), max_points)]
        return self._read_at(run, chosen) if chosen else []

    @abc.abstractmethod
    def read_snapshot(self, run: str, step: int) -> SnapshotRecord | None:
        """One snapshot by key."""

    def list_steps(self, run: str) -> list[int]:
        """Every stored step of ``run`` in ascending order (empty for an unknown run)."""
        return self._steps(run)

    @abc.abstractmethod
    def _steps(self, run: str, start: int | None = None, end: int | None = None) -> list[int]:
        """The stored steps of ``run`` with ``start <= step <= end``, ascending."""

    @abc.abstractmethod
    def _read_at(self, run: str, steps: list[int]) -> list[SnapshotRecord]:
        """The snapshots at ``steps`` (ascending, all stored), in step order."""

    def read_light_series(self, run: str, steps: Sequence[int], top: int) -> list[LightSnapshot]:
        """:data:`LightSnapshot` entries of the stored snapshots at ``steps``, in step order.

        A stored snapshot of K = 1,000 directions is ~100 kB of JSON, of which the plots
        over steps need a few numbers; this default decodes each snapshot, and a backend
        should override it to extract the numbers inside the database (as
        :class:`SQLiteStore` does). Steps with no snapshot are skipped.
        """
        records = (self.read_snapshot(run, step) for step in sorted(set(steps)))
        return [light_snapshot(r.to_dict(), top) for r in records if r is not None]

    @abc.abstractmethod
    def iter_snapshots(self, run: str) -> Iterator[SnapshotRecord]:
        """All snapshots of a run in step order, read lazily (for exports)."""

    @abc.abstractmethod
    def read_events(self, run: str) -> list[EventRecord]:
        """A run's events in arrival order."""

    def read_event(self, run: str, event_id: int) -> EventRecord | None:
        """One event by its id (:attr:`EventRecord.id`), or ``None`` if ``run`` has no such
        event. This default scans :meth:`read_events`; backends override it."""
        return next((e for e in self.read_events(run) if e.id == event_id), None)

    @abc.abstractmethod
    def delete_run(self, run: str) -> bool:
        """Remove a run with its snapshots and events; ``False`` if it did not exist."""

    @abc.abstractmethod
    def prune(self, *, older_than: float, keep_every: int | None) -> int:
        """Retention: forget old data; returns the number of snapshots deleted.

        Only what the server received before ``older_than`` (Unix time, compared with
        ``received_at`` and :attr:`RunSummary.last_update`) is touched:

        - ``keep_every=None``: every run whose last update is older than ``older_than`` is
          removed whole, with its snapshots and events (as :meth:`delete_run`); runs
          updated since are left alone.
        - ``keep_every=k`` (``k >= 1``): runs are thinned, never removed. Per run, the
          stored snapshots received before ``older_than`` are taken in step order and only
          every ``k``-th is kept (index ``i`` in that order with ``i % k == 0``); each run's
          first and last stored step are always kept, and so are all events. The indices
          are those of the steps stored at the call, so pruning the same data again thins
          it again (by ``k`` once more): run it once per retention period.

        Raises:
            ValueError: ``keep_every`` is less than 1.
        """

    def listen(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None] | None:
        """Follow the changes made through other instances of the store (other server
        workers on the same database), if the backend can.

        ``callback`` is called from a background thread with a small dict per committed
        change, by any worker on the database, this one included:
        ``{"kind": "snapshot", "run": str, "step": int}``,
        ``{"kind": "event", "run": str, "id": int}`` (read it with :meth:`read_event`) and
        ``{"kind": "run_deleted", "run": str}``. Consumers must ignore kinds they do not
        know (a backend may send ``{"kind": "reconnected"}`` after its feed was interrupted,
        when changes may have been missed). Returns a function that stops the feed, or
        ``None`` when the backend has no cross-process feed (this default: a single
        process, where the ingest route publishes its own writes).
        """
        return None

    def problem(self) -> str | None:
        """Why the store could not take a write now (a full disk...), or ``None``: what
        ``/api/health`` reports. This default knows of no problem."""
        return None

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections; the store is unusable afterwards."""
