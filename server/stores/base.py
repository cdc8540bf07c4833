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
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from curvscope.server.protocol import EventMessage, SnapshotMessage
from curvscope.server.summaries import SUMMARY_VERSION, snapshot_summary

__all__ = [
    "LIGHT_TOP",
    "EventRecord",
    "LightSnapshot",
    "RunSummary",
    "RunTaken",
    "SnapshotRecord",
    "StepConflict",
    "Store",
    "StoreError",
    "SummaryRow",
    "downsample_indices",
    "json_head",
    "light_from_json",
    "light_json",
    "light_series_from_rows",
    "light_snapshot",
    "redact_url",
    "same_payload",
    "snapshot_payload_json",
    "summary_json",
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
``{"step": int, "loss": float, "groups": [{"name": str, "eigvals": [<= top floats]}]}``,
plus ``"optimizer"`` (the snapshot's :class:`~curvscope.server.protocol.OptimizerPayload`
as a dict) where the snapshot has one."""


def light_snapshot(snapshot: dict[str, Any], top: int) -> LightSnapshot:
    """The light form of a snapshot in its REST JSON shape (see :data:`LightSnapshot`)."""
    light: LightSnapshot = {
        "step": snapshot["step"],
        "loss": snapshot["loss"],
        "groups": [{"name": g["name"], "eigvals": g["eigvals"][:top]} for g in snapshot["groups"]],
    }
    if snapshot.get("optimizer") is not None:
        light["optimizer"] = snapshot["optimizer"]
    return light


_PASSWORD_IN_URL = re.compile(r"(://[^:/@?#]*:)[^@/?#]*@")
_PASSWORD_PARAM = re.compile(r"((?:^|[?&\s])password=)(?:'(?:[^'\\]|\\.)*'|[^&\s]*)")


def redact_url(url: str) -> str:
    """A database URL (or libpq ``key=value`` string) fit for messages and logs: its
    password (``user:PASSWORD@host``, ``password=...``) replaced by ``***``."""
    return _PASSWORD_PARAM.sub(r"\1***", _PASSWORD_IN_URL.sub(r"\1***@", url))


def snapshot_payload_json(message: SnapshotMessage) -> str:
    """The stored JSON of a snapshot message (no ``type``, ``schema_version``, ``resume``)."""
    return message.model_dump_json(exclude={"type", "schema_version", "resume"})


LIGHT_TOP = 64
"""Eigenvalues per group kept in a store's ``light`` column (the figure API asks for at most
50): a backend reads that column for :meth:`Store.read_light_series` with ``top`` up to
this, instead of parsing whole payloads."""


def light_json(message: SnapshotMessage) -> str:
    """The ``light`` column: ``[loss, [[name, "eigvals[:LIGHT_TOP]"], ...]]`` as JSON text,
    with the optimizer's state (``SnapshotMessage.optimizer``) as a third entry where the
    snapshot has one. Each group's eigenvalues are a JSON array *as a string*: a reader
    parses only the ``top`` it needs (:func:`json_head`), not 64 per group (which took a
    second for 200 snapshots of 60 groups). Python writes each float as the shortest text
    that reads back as the same float, so what :func:`light_from_json` decodes equals the
    payload's numbers."""
    groups = [
        [g.name, json.dumps(g.eigvals[:LIGHT_TOP], separators=(",", ":"))] for g in message.groups
    ]
    light: list[Any] = [message.loss, groups]
    if message.optimizer is not None:
        light.append(message.optimizer.model_dump())
    return json.dumps(light, separators=(",", ":"))


def light_from_json(
    step: int, text: str, top: int, groups: Collection[str] | None = None
) -> LightSnapshot:
    """The :data:`LightSnapshot` at ``step`` from its ``light`` column (:func:`light_json`),
    eigenvalues cut to ``top`` (at most :data:`LIGHT_TOP`), of the ``groups`` named (all
    for ``None``). Eigenvalues stored as a plain array (PostgreSQL stores of schema 3) read
    as well."""
    loss, stored, *optimizer = json.loads(text)
    named = [
        {"name": name, "eigvals": json_head(e, top) if isinstance(e, str) else e[:top]}
        for name, e in stored
        if groups is None or name in groups
    ]
    light: LightSnapshot = {"step": step, "loss": loss, "groups": named}
    if optimizer:
        light["optimizer"] = optimizer[0]
    return light


def summary_json(payload_json: str) -> str:
    """The stored summary of a snapshot (:func:`~curvscope.server.summaries.snapshot_summary`
    of its stored payload), as compact JSON text."""
    return json.dumps(snapshot_summary(json.loads(payload_json)), separators=(",", ":"))


SummaryRow = tuple[int, str | None, int | None]
"""``(step, summary JSON or None, summary version or None)``: a stored summary as a backend
reads it; ``None`` or a version other than :data:`SUMMARY_VERSION` means not (yet) stored."""


def json_head(array_text: str, top: int) -> list[float]:
    """The first ``top`` numbers of a JSON array of numbers, parsing only those.

    SQL JSON functions hand back the array with each number's original text, so this is exact
    (re-encoding through SQL REAL values would round to 15 digits).
    """
    head: list[float] = []
    start = array_text.index("[") + 1
    while len(head) < top:  # the long tail is never copied: only the first numbers are cut
        comma = array_text.find(",", start)
        if comma < 0:
            last = array_text[start : array_text.rindex("]")]
            if last.strip():
                head.append(float(last))
            break
        head.append(float(array_text[start:comma]))
        start = comma + 1
    return head


def light_series_from_rows(
    rows: Iterable[Sequence[Any]], top: int, groups: Collection[str] | None = None
) -> list[LightSnapshot]:
    """:data:`LightSnapshot` entries from SQL rows ``(step, loss, name JSON, eigvals JSON,
    optimizer JSON or NULL)`` in step order, one row per group (a snapshot without groups:
    one row with NULL name and eigvals); of the ``groups`` named (all for ``None``)."""
    series: list[LightSnapshot] = []
    for step, loss, name, eigvals, optimizer in rows:
        if not series or series[-1]["step"] != step:
            series.append({"step": step, "loss": float(loss), "groups": []})
            if optimizer is not None:
                series[-1]["optimizer"] = json.loads(optimizer)
        if name is not None:
            name = json.loads(name)
            if groups is None or name in groups:
                group = {"name": name, "eigvals": json_head(eigvals, top)}
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

    def read_light_series(
        self, run: str, steps: Sequence[int], top: int, groups: Collection[str] | None = None
    ) -> list[LightSnapshot]:
        """:data:`LightSnapshot` entries of the stored snapshots at ``steps``, in step order,
        with the eigenvalues of the ``groups`` named (all for ``None``: a page drawing one
        group of 60 asks for that one).

        A stored snapshot of K = 1,000 directions is ~100 kB of JSON, of which the plots
        over steps need a few numbers; this default decodes each snapshot, and a backend
        should override it to extract the numbers inside the database (as
        :class:`SQLiteStore` does). Steps with no snapshot are skipped.
        """
        records = (self.read_snapshot(run, step) for step in sorted(set(steps)))
        series = [light_snapshot(r.to_dict(), top) for r in records if r is not None]
        if groups is not None:
            for light in series:
                light["groups"] = [g for g in light["groups"] if g["name"] in groups]
        return series

    def read_summaries(self, run: str, steps: Sequence[int]) -> list[dict[str, Any]]:
        """The summaries (:func:`~curvscope.server.summaries.snapshot_summary`) of the stored
        snapshots at ``steps``, in step order; steps with no snapshot are skipped. Pick the
        steps as for :meth:`read_light_series` (down-sampled with :func:`downsample_indices`).

        Summaries are computed at ingest and stored next to each snapshot. A snapshot
        stored before (by an older server, or with an older :data:`SUMMARY_VERSION`) gets
        its summary computed here from its payload and stored, once.
        """
        rows = self._summary_rows(run, sorted(set(steps)))
        stale = [step for step, text, version in rows if text is None or version != SUMMARY_VERSION]
        computed: dict[int, str] = {}
        if stale:
            computed = {r.step: summary_json(r.payload_json) for r in self._read_at(run, stale)}
            self._save_summaries(run, computed)
        out = []
        for step, text, _ in rows:
            text = computed.get(step, text)
            if text is not None:  # None: deleted since the rows were read
                out.append(json.loads(text))
        return out

    def _summary_rows(self, run: str, steps: list[int]) -> list[SummaryRow]:
        """The stored summaries at ``steps`` (ascending), one row per stored snapshot. This
        default stores none (every summary is computed from its payload); backends
        override it and :meth:`_save_summaries`."""
        wanted = set(steps)
        return [(step, None, None) for step in self._steps(run) if step in wanted]

    def _save_summaries(self, run: str, summaries: dict[int, str]) -> None:
        """Store summaries computed on read (``step -> JSON``, at :data:`SUMMARY_VERSION`)
        for rows that still have none (or an older version); best effort. This default
        stores nothing."""
        return None

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
