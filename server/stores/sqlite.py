"""The embedded store: :class:`SQLiteStore`, one SQLite file.

It uses the standard library's :mod:`sqlite3` in WAL mode with ``synchronous=FULL``: a
snapshot is committed before :meth:`Store.append_snapshot` returns, so whatever the server
acknowledged survives SIGKILL (and power loss). The schema is versioned with
``PRAGMA user_version`` and migrated step by step at open time.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

from curvscope.server.protocol import EventMessage, SnapshotMessage
from curvscope.server.stores.base import (
    LIGHT_TOP,
    EventRecord,
    LightSnapshot,
    RunSummary,
    RunTaken,
    SnapshotRecord,
    StepConflict,
    Store,
    StoreError,
    SummaryRow,
    light_from_json,
    light_json,
    light_series_from_rows,
    same_payload,
    snapshot_payload_json,
    summary_json,
)
from curvscope.server.summaries import SUMMARY_VERSION

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

_MIGRATIONS: list[tuple[int, tuple[str, ...]]] = [
    (
        1,
        (
            """CREATE TABLE runs (
                name TEXT PRIMARY KEY,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL
            )""",
            """CREATE TABLE snapshots (
                run TEXT NOT NULL,
                step INTEGER NOT NULL,
                received_at REAL NOT NULL,
                payload TEXT NOT NULL,
                PRIMARY KEY (run, step)
            )""",
            """CREATE TABLE events (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                run TEXT NOT NULL,
                step INTEGER,
                wall_time REAL NOT NULL,
                level TEXT NOT NULL,
                message TEXT NOT NULL,
                received_at REAL NOT NULL
            )""",
            """CREATE UNIQUE INDEX events_identity
                ON events (run, IFNULL(step, -1), wall_time, level, message)""",
            "CREATE INDEX events_by_run ON events (run, id)",
        ),
    ),
    (
        2,
        # ``config.backend`` (the curvature backend) joined the wire; every snapshot stored
        # before it was computed by BackPACK. json_set keeps each number's original text,
        # so the rest of the payload reads back exactly as it was.
        (
            """UPDATE snapshots
                SET payload = json_set(payload, '$.config.backend', 'backpack')
                WHERE json_type(payload, '$.config.backend') IS NULL""",
        ),
    ),
    (
        3,
        # The probe instance that owns the run (``SnapshotMessage.instance``); NULL for runs
        # from before instances, which a new instance must resume explicitly.
        ("ALTER TABLE runs ADD COLUMN instance TEXT",),
    ),
    (
        4,
        # Per-group summaries computed at ingest (:mod:`curvscope.server.summaries`), what
        # the run overview reads, and the light form of each snapshot (loss and top
        # eigenvalues, :func:`light_json`), what the plots over steps read. Rows stored
        # before get their summary on first read (:meth:`Store.read_summaries`) and their
        # light series from the payload, so opening a large old file stays instant.
        (
            "ALTER TABLE snapshots ADD COLUMN summary TEXT",
            "ALTER TABLE snapshots ADD COLUMN summary_version INTEGER",
            "ALTER TABLE snapshots ADD COLUMN light TEXT",
        ),
    ),
]
"""Schema migrations ``(version, statements)``; append, never edit a released one."""

SCHEMA_VERSION = _MIGRATIONS[-1][0]

_SUMMARY_SQL = """
SELECT r.name, r.updated_at,
       (SELECT COUNT(*) FROM snapshots s WHERE s.run = r.name),
       (SELECT MIN(step) FROM snapshots s WHERE s.run = r.name),
       (SELECT MAX(step) FROM snapshots s WHERE s.run = r.name),
       (SELECT COUNT(*) FROM events e WHERE e.run = r.name AND e.level = 'error')
FROM runs r
"""

_LIGHT_SERIES_SQL = """
SELECT s.step, s.payload ->> '$.loss', g.value -> '$.name', g.value -> '$.eigvals',
       s.payload -> '$.optimizer'
FROM snapshots AS s LEFT JOIN json_each(s.payload, '$.groups') AS g
WHERE s.run = ? AND s.step IN (SELECT value FROM json_each(?))
ORDER BY s.step, g.key
"""

_THIN_TEMPLATE = """
DELETE FROM snapshots WHERE (run, step) IN (
    SELECT run, step FROM (
        SELECT run, step, ROW_NUMBER() OVER (PARTITION BY run ORDER BY step) - 1 AS i
        FROM snapshots WHERE received_at < {older_than}
    ) AS old
    WHERE i % {keep_every} != 0
      AND step > (SELECT MIN(s.step) FROM snapshots AS s WHERE s.run = old.run)
      AND step < (SELECT MAX(s.step) FROM snapshots AS s WHERE s.run = old.run)
)
"""
"""Retention by thinning (:meth:`Store.prune` with ``keep_every``), shared with the
PostgreSQL store: of each run's snapshots received before ``older_than``, in step order,
keep every ``keep_every``-th and the run's first and last stored step; delete the rest."""

_THIN_SQL = _THIN_TEMPLATE.format(older_than="?", keep_every="?")


class SQLiteStore(Store):
    """:class:`Store` on one SQLite file (WAL, ``synchronous=FULL``, one connection per thread).

    Writes are serialised by a lock; reads run concurrently on per-thread connections.
    """

    def __init__(self, path: str | Path) -> None:
        if str(path) in ("", ":memory:"):
            raise StoreError("SQLiteStore needs a file path (one connection per thread)")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = False
        self._migrate()

    # -- connections -----------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError("the store is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(
                    self.path, timeout=30.0, isolation_level=None, check_same_thread=False
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open the database {self.path}: {exc}") from exc
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _migrate(self) -> None:
        conn = self._conn()
        with self._write_lock:
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {current}, newer than this curvscope "
                    f"({SCHEMA_VERSION}); upgrade curvscope"
                )
            for version, statements in _MIGRATIONS:
                if version <= current:
                    continue
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in statements:
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {version}")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise

    MIN_FREE_BYTES = 64 * 1024 * 1024
    """Free space on the database's file system below which :meth:`problem` speaks."""

    def problem(self) -> str | None:
        try:
            free = shutil.disk_usage(self.path.parent).free
            self._conn().execute("SELECT 1").fetchone()
        except (OSError, sqlite3.Error, StoreError) as err:
            return f"the database {self.path} cannot be used: {err}"
        if free < self.MIN_FREE_BYTES:
            return (
                f"only {free // (1024 * 1024)} MiB free on the disk of {self.path}: "
                "new snapshots may not be stored"
            )
        return None

    def schema_version(self) -> int:
        """The schema version of the open file."""
        return int(self._conn().execute("PRAGMA user_version").fetchone()[0])

    # -- writes ----------------------------------------------------------------------------
    def _write(self, statements: list[tuple[str, tuple[Any, ...]]]) -> int:
        """Run statements in one transaction; returns the rowcount of the first."""
        conn = self._conn()
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                first = conn.execute(*statements[0]).rowcount
                if first:
                    for sql, params in statements[1:]:
                        conn.execute(sql, params)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return first

    @staticmethod
    def _claim(
        conn: sqlite3.Connection, message: SnapshotMessage | EventMessage, received_at: float
    ) -> None:
        """Create the run for ``message``'s instance, or check (or, resuming, move) its owner."""
        row = conn.execute("SELECT instance FROM runs WHERE name = ?", (message.run,)).fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO runs (name, created_at, updated_at, instance) VALUES (?, ?, ?, ?)",
                (message.run, received_at, received_at, message.instance),
            )
        elif message.instance is not None and row[0] != message.instance:
            if not message.resume:
                raise RunTaken(message.run, row[0])
            conn.execute(
                "UPDATE runs SET instance = ? WHERE name = ?", (message.instance, message.run)
            )

    def _transaction(self, work: Callable[[sqlite3.Connection], bool]) -> bool:
        """Run ``work`` in one write transaction (rolled back if it raises)."""
        conn = self._conn()
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return result

    def append_snapshot(self, message: SnapshotMessage, received_at: float) -> bool:
        payload = snapshot_payload_json(message)
        summary = summary_json(payload)

        def work(conn: sqlite3.Connection) -> bool:
            self._claim(conn, message, received_at)
            inserted = conn.execute(
                "INSERT OR IGNORE INTO snapshots "
                "(run, step, received_at, payload, summary, summary_version, light) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    message.run,
                    message.step,
                    received_at,
                    payload,
                    summary,
                    SUMMARY_VERSION,
                    light_json(message),
                ),
            ).rowcount
            if inserted:
                conn.execute(
                    "UPDATE runs SET updated_at = ? WHERE name = ?", (received_at, message.run)
                )
                return True
            (stored,) = conn.execute(
                "SELECT payload FROM snapshots WHERE run = ? AND step = ?",
                (message.run, message.step),
            ).fetchone()
            if not same_payload(stored, payload):
                raise StepConflict(message.run, message.step)
            return False

        return self._transaction(work)

    def append_event(self, message: EventMessage, received_at: float) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            self._claim(conn, message, received_at)
            inserted = conn.execute(
                "INSERT OR IGNORE INTO events "
                "(run, step, wall_time, level, message, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    message.run,
                    message.step,
                    message.wall_time,
                    message.level,
                    message.message,
                    received_at,
                ),
            ).rowcount
            if inserted:
                conn.execute(
                    "UPDATE runs SET updated_at = ? WHERE name = ?", (received_at, message.run)
                )
            return bool(inserted)

        return self._transaction(work)

    def delete_run(self, run: str) -> bool:
        deleted = self._write(
            [
                ("DELETE FROM runs WHERE name = ?", (run,)),
                ("DELETE FROM snapshots WHERE run = ?", (run,)),
                ("DELETE FROM events WHERE run = ?", (run,)),
            ]
        )
        return deleted == 1

    def prune(self, *, older_than: float, keep_every: int | None) -> int:
        if keep_every is not None and keep_every < 1:
            raise ValueError(f"keep_every must be None or >= 1, not {keep_every}")

        def work(conn: sqlite3.Connection) -> int:
            if keep_every is None:
                old_runs = "SELECT name FROM runs WHERE updated_at < ?"
                deleted = conn.execute(
                    f"DELETE FROM snapshots WHERE run IN ({old_runs})", (older_than,)
                ).rowcount
                conn.execute(f"DELETE FROM events WHERE run IN ({old_runs})", (older_than,))
                conn.execute("DELETE FROM runs WHERE updated_at < ?", (older_than,))
                return int(deleted)
            return int(conn.execute(_THIN_SQL, (older_than, keep_every)).rowcount)

        return self._transaction(work)

    # -- reads -----------------------------------------------------------------------------
    @staticmethod
    def _summary(row: tuple[Any, ...]) -> RunSummary:
        name, updated_at, count, first, last, errors = row
        return RunSummary(name, count, first, last, updated_at, errors)

    def list_runs(self) -> list[RunSummary]:
        rows = self._conn().execute(_SUMMARY_SQL + " ORDER BY r.updated_at DESC, r.name")
        return [self._summary(row) for row in rows]

    def get_run(self, run: str) -> RunSummary | None:
        row = self._conn().execute(_SUMMARY_SQL + " WHERE r.name = ?", (run,)).fetchone()
        return None if row is None else self._summary(row)

    def _steps(self, run: str, start: int | None = None, end: int | None = None) -> list[int]:
        lo = -1 if start is None else start
        hi = 2**63 - 1 if end is None else end
        rows = self._conn().execute(
            "SELECT step FROM snapshots WHERE run = ? AND step BETWEEN ? AND ? ORDER BY step",
            (run, lo, hi),
        )
        return [row[0] for row in rows]

    def _read_at(self, run: str, steps: list[int]) -> list[SnapshotRecord]:
        rows = self._conn().execute(
            "SELECT step, received_at, payload FROM snapshots "
            "WHERE run = ? AND step IN (SELECT value FROM json_each(?)) ORDER BY step",
            (run, json.dumps(steps)),
        )
        return [SnapshotRecord(run, step, received, payload) for step, received, payload in rows]

    def read_snapshot(self, run: str, step: int) -> SnapshotRecord | None:
        row = (
            self._conn()
            .execute(
                "SELECT received_at, payload FROM snapshots WHERE run = ? AND step = ?",
                (run, step),
            )
            .fetchone()
        )
        return None if row is None else SnapshotRecord(run, step, row[0], row[1])

    def read_light_series(
        self, run: str, steps: Sequence[int], top: int, groups: Collection[str] | None = None
    ) -> list[LightSnapshot]:
        """Reads the small ``light`` column written with each snapshot (for ``top`` up to
        :data:`LIGHT_TOP`); snapshots stored without one (before schema 4), or a larger
        ``top``, have the numbers extracted from the payloads inside SQLite (its C JSON
        functions). Either way no payload is decoded in Python."""
        wanted = json.dumps(list(steps))
        if top > LIGHT_TOP:
            return light_series_from_rows(
                self._conn().execute(_LIGHT_SERIES_SQL, (run, wanted)), top, groups
            )
        rows = (
            self._conn()
            .execute(
                "SELECT step, light FROM snapshots "
                "WHERE run = ? AND step IN (SELECT value FROM json_each(?)) ORDER BY step",
                (run, wanted),
            )
            .fetchall()
        )
        old = [step for step, light in rows if light is None]
        extracted = {}
        if old:
            found = self._conn().execute(_LIGHT_SERIES_SQL, (run, json.dumps(old)))
            extracted = {s["step"]: s for s in light_series_from_rows(found, top, groups)}
        return [
            light_from_json(step, light, top, groups) if light is not None else extracted[step]
            for step, light in rows
            if light is not None or step in extracted
        ]

    def _summary_rows(self, run: str, steps: list[int]) -> list[SummaryRow]:
        rows = self._conn().execute(
            "SELECT step, summary, summary_version FROM snapshots "
            "WHERE run = ? AND step IN (SELECT value FROM json_each(?)) ORDER BY step",
            (run, json.dumps(steps)),
        )
        return [(step, text, version) for step, text, version in rows]

    def _save_summaries(self, run: str, summaries: dict[int, str]) -> None:
        rows = [
            (text, SUMMARY_VERSION, run, step, SUMMARY_VERSION) for step, text in summaries.items()
        ]
        conn = self._conn()
        try:
            with self._write_lock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(
                        "UPDATE snapshots SET summary = ?, summary_version = ? "
                        "WHERE run = ? AND step = ? "
                        "AND (summary IS NULL OR summary_version IS NOT ?)",
                        rows,
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error:  # a busy or read-only file: computed again next time
            pass

    def iter_snapshots(self, run: str, batch: int = 256) -> Iterator[SnapshotRecord]:
        last = -1
        while True:
            rows = (
                self._conn()
                .execute(
                    "SELECT step, received_at, payload FROM snapshots "
                    "WHERE run = ? AND step > ? ORDER BY step LIMIT ?",
                    (run, last, batch),
                )
                .fetchall()
            )
            if not rows:
                return
            for step, received, payload in rows:
                yield SnapshotRecord(run, step, received, payload)
            last = rows[-1][0]

    def read_events(self, run: str) -> list[EventRecord]:
        rows = self._conn().execute(
            "SELECT id, run, step, wall_time, level, message, received_at FROM events "
            "WHERE run = ? ORDER BY id",
            (run,),
        )
        return [EventRecord(*row) for row in rows]

    def read_event(self, run: str, event_id: int) -> EventRecord | None:
        row = (
            self._conn()
            .execute(
                "SELECT id, run, step, wall_time, level, message, received_at FROM events "
                "WHERE run = ? AND id = ?",
                (run, event_id),
            )
            .fetchone()
        )
        return None if row is None else EventRecord(*row)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for conn in self._connections:
                conn.close()
            self._connections.clear()
