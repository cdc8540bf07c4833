"""The team store: :class:`PostgresStore`, one PostgreSQL database shared by server workers.

Several ``curvscope serve`` processes (workers, hosts) may run on one database: each write
is one transaction that commits before the method returns (what the server acknowledged
is durable), and the writes of one run are serialised across processes by a lock on the
run's row (``INSERT ... ON CONFLICT DO NOTHING`` then ``SELECT ... FOR UPDATE``): the
instance claim and the insert happen under that lock, so two workers storing the same
``(run, step)`` at once store it once and exactly one of them reports it as new.

Each write transaction also sends a small JSON notification on the channel
``curvscope`` (``pg_notify``, delivered at commit, dropped at rollback), which
:meth:`PostgresStore.listen` follows: that is how a worker learns about the snapshots
other workers ingested (see :meth:`Store.listen`).

Payloads are stored as the exact JSON text the server produced (a ``TEXT`` column), so
the REST layer returns them verbatim and every number reads back bit for bit. Next to
each, a small ``light`` column holds what the plots over steps read (the loss and the top
:data:`LIGHT_TOP` eigenvalues of each group), so that
:meth:`PostgresStore.read_light_series` reads a few hundred bytes per snapshot instead of
parsing ~100 kB of JSON.

Schema versions. The table ``curvscope_schema`` holds the version, numbered as the SQLite
store's (``PRAGMA user_version``) so that one number names one data model in both
backends. Versions 1 and 2 were SQLite-only (the PostgreSQL store first shipped at 3): an
empty database gets the version-3 schema in one step and records 3. Later versions will
be appended to :data:`_MIGRATIONS` in both stores and applied in order at open time. All
of it happens in one transaction under ``pg_advisory_xact_lock``, so workers starting at
once migrate one after the other (the later ones find nothing to do), and a database of a
newer version than this code knows is refused with :class:`StoreError`.

It needs PostgreSQL 12 or later (lz4 compression of the payloads from 14, where the
server has it). Connection URLs may hold a password: it is never put in messages or ``repr``
(:func:`redact_url`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

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
    redact_url,
    same_payload,
    snapshot_payload_json,
    summary_json,
)
from curvscope.server.stores.sqlite import _THIN_TEMPLATE
from curvscope.server.summaries import SUMMARY_VERSION

__all__ = ["CHANNEL", "LIGHT_TOP", "SCHEMA_VERSION", "PostgresStore"]

log = logging.getLogger(__name__)

CHANNEL = "curvscope"
"""The ``LISTEN``/``NOTIFY`` channel of the change feed."""

_SCHEMA_3 = (
    # COLLATE "C": run names sort byte by byte, as in SQLite, whatever the database's locale
    """CREATE TABLE runs (
        name TEXT COLLATE "C" PRIMARY KEY,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        instance TEXT
    )""",
    """CREATE TABLE snapshots (
        run TEXT COLLATE "C" NOT NULL,
        step BIGINT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        payload TEXT NOT NULL,
        light TEXT NOT NULL,
        PRIMARY KEY (run, step)
    )""",
    """CREATE TABLE events (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        run TEXT COLLATE "C" NOT NULL,
        step BIGINT,
        wall_time DOUBLE PRECISION NOT NULL,
        level TEXT NOT NULL,
        message TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL
    )""",
    # md5: a message may be 10,000 characters, more than a btree entry holds
    """CREATE UNIQUE INDEX events_identity
        ON events (run, COALESCE(step, -1), wall_time, level, md5(message))""",
    "CREATE INDEX events_by_run ON events (run, id)",
)

_SCHEMA_4 = (
    # Per-group summaries computed at ingest (:mod:`curvscope.server.summaries`); rows
    # stored before get theirs on first read (:meth:`Store.read_summaries`).
    "ALTER TABLE snapshots ADD COLUMN summary TEXT, ADD COLUMN summary_version INTEGER",
)

_MIGRATIONS: list[tuple[int, tuple[str, ...]]] = [(3, _SCHEMA_3), (4, _SCHEMA_4)]
"""``(version, statements)`` applied in order to a database below ``version``; version 3
creates everything (see the module docstring). Append, never edit a released one."""

SCHEMA_VERSION = _MIGRATIONS[-1][0]

_BEST_EFFORT: dict[int, tuple[str, ...]] = {
    # lz4 (PostgreSQL 14+ built with it) compresses and decompresses payloads several times
    # faster than the default pglz: it halves the time of an append. Without it, pglz stays.
    3: (
        "ALTER TABLE snapshots ALTER COLUMN payload SET COMPRESSION lz4, "
        "ALTER COLUMN light SET COMPRESSION lz4",
    ),
}
"""Statements run after a migration's, each in a savepoint: a server that cannot (an older
or differently built PostgreSQL) just goes without."""

_MIGRATION_LOCK = 0x63757276_73636F70  # "curvscop": the advisory lock key of migrations

_SUMMARY_SQL = """
SELECT r.name, r.updated_at,
       (SELECT COUNT(*) FROM snapshots s WHERE s.run = r.name),
       (SELECT MIN(step) FROM snapshots s WHERE s.run = r.name),
       (SELECT MAX(step) FROM snapshots s WHERE s.run = r.name),
       (SELECT COUNT(*) FROM events e WHERE e.run = r.name AND e.level = 'error')
FROM runs r
"""


# For a larger ``top``: the numbers are extracted from the payloads with the ``json`` type's
# operators, which return each value's original text. MATERIALIZED: each payload is cast once.
_LIGHT_SERIES_SQL = """
WITH s AS MATERIALIZED (
    SELECT step, payload::json AS p FROM snapshots
    WHERE run = %s AND step = ANY(%s::bigint[])
)
SELECT s.step, (s.p -> 'loss')::text, (g.value -> 'name')::text, (g.value -> 'eigvals')::text,
       (s.p -> 'optimizer')::text
FROM s LEFT JOIN LATERAL json_array_elements(s.p -> 'groups') WITH ORDINALITY AS g(value, i)
    ON true
ORDER BY s.step, g.i
"""

_THIN_SQL = _THIN_TEMPLATE.replace("%", "%%").format(older_than="%s", keep_every="%s")

_EVENT_COLUMNS = "id, run, step, wall_time, level, message, received_at"

T = TypeVar("T")


def _no_nul(text: str) -> str:
    """``text`` with each NUL character replaced by U+FFFD: PostgreSQL's TEXT cannot hold
    NUL (SQLite's can), and refusing the event would make its probe resend it forever."""
    return text.replace("\x00", "\ufffd")


def _notify(cur: psycopg.Cursor[Any], payload: dict[str, Any]) -> None:
    cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, json.dumps(payload)))


class PostgresStore(Store):
    """:class:`Store` on a PostgreSQL database (psycopg 3 and a connection pool).

    Args:
        url: a libpq connection URL (``postgresql://user:password@host:port/db``; the
            ``postgres://`` spelling and ``key=value`` strings work too).
        min_size, max_size: the pool's bounds (connections of this process).
    """

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10) -> None:
        self.url = url
        self._listeners: list[_Listener] = []
        self._lock = threading.Lock()
        self._closed = False
        self._migrate()
        self._pool = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True},
            check=ConnectionPool.check_connection,
            name="curvscope-store",
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=30.0)
        except PoolTimeout as exc:
            self._pool.close()
            raise StoreError(f"cannot connect to {redact_url(url)}: {exc}") from None

    def __repr__(self) -> str:
        return f"PostgresStore({redact_url(self.url)!r})"

    # -- schema ----------------------------------------------------------------------------
    def _connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self.url, **kwargs)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to {redact_url(self.url)}: {exc}") from None

    def _migrate(self) -> None:
        with self._connect(autocommit=True) as conn:
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                    # looked up first: a role without CREATE may open a prepared database
                    (exists,) = conn.execute(
                        "SELECT to_regclass('curvscope_schema') IS NOT NULL"
                    ).fetchone()  # type: ignore[misc]
                    if not exists:
                        conn.execute(
                            "CREATE TABLE curvscope_schema ("
                            " only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),"
                            " version INTEGER NOT NULL)"
                        )
                    row = conn.execute("SELECT version FROM curvscope_schema").fetchone()
                    current = 0 if row is None else int(row[0])
                    if current > SCHEMA_VERSION:
                        raise StoreError(
                            f"{redact_url(self.url)} has schema version {current}, newer "
                            f"than this curvscope ({SCHEMA_VERSION}); upgrade curvscope"
                        )
                    if 0 < current < _MIGRATIONS[0][0]:
                        raise StoreError(
                            f"{redact_url(self.url)} has schema version {current}, which "
                            "no PostgreSQL store ever wrote"
                        )
                    for version, statements in _MIGRATIONS:
                        if version <= current:
                            continue
                        for statement in statements:
                            conn.execute(statement)
                        for statement in _BEST_EFFORT.get(version, ()):
                            try:
                                with conn.transaction():  # a savepoint
                                    conn.execute(statement)
                            except psycopg.Error as exc:
                                log.info("schema %d: skipped %r (%s)", version, statement, exc)
                        conn.execute(
                            "INSERT INTO curvscope_schema (version) VALUES (%s) "
                            "ON CONFLICT (only_row) DO UPDATE SET version = EXCLUDED.version",
                            (version,),
                        )
            except psycopg.Error as exc:
                raise StoreError(
                    f"cannot prepare the database {redact_url(self.url)}: {exc}"
                ) from None

    def schema_version(self) -> int:
        """The schema version recorded in the database."""
        with self._connection() as conn:
            row = conn.execute("SELECT version FROM curvscope_schema").fetchone()
        return 0 if row is None else int(row[0])

    # -- connections and transactions ------------------------------------------------------
    def _connection(self) -> Any:
        if self._closed:
            raise StoreError("the store is closed")
        return self._pool.connection()

    def _transaction(self, work: Callable[[psycopg.Cursor[Any]], T]) -> T:
        """Run ``work`` in one transaction, committed before this returns (rolled back if
        ``work`` raises). A deadlock or serialization failure is retried."""
        for attempt in range(3):
            try:
                with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
                    return work(cur)
            except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure):
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _claim(
        cur: psycopg.Cursor[Any], message: SnapshotMessage | EventMessage, received_at: float
    ) -> None:
        """Create the run for ``message``'s instance, or check (or, resuming, move) its
        owner; either way the run's row stays locked until the transaction ends."""
        for _ in range(10):
            cur.execute(
                "INSERT INTO runs (name, created_at, updated_at, instance) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (name) DO NOTHING",
                (message.run, received_at, received_at, message.instance),
            )
            if cur.rowcount == 1:
                return
            row = cur.execute(
                "SELECT instance FROM runs WHERE name = %s FOR UPDATE", (message.run,)
            ).fetchone()
            if row is not None:  # else it was deleted since the INSERT: create it again
                break
        else:
            raise StoreError(f"run {message.run!r} keeps disappearing (deleted concurrently)")
        if message.instance is not None and row[0] != message.instance:
            if not message.resume:
                raise RunTaken(message.run, row[0])
            cur.execute(
                "UPDATE runs SET instance = %s WHERE name = %s", (message.instance, message.run)
            )

    # -- writes ----------------------------------------------------------------------------
    def append_snapshot(self, message: SnapshotMessage, received_at: float) -> bool:
        payload = snapshot_payload_json(message)
        summary = _no_nul(summary_json(payload))

        def work(cur: psycopg.Cursor[Any]) -> bool:
            self._claim(cur, message, received_at)
            cur.execute(
                "INSERT INTO snapshots "
                "(run, step, received_at, payload, light, summary, summary_version) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (run, step) DO NOTHING",
                (
                    message.run,
                    message.step,
                    received_at,
                    payload,
                    light_json(message),
                    summary,
                    SUMMARY_VERSION,
                ),
            )
            if cur.rowcount == 1:
                cur.execute(
                    "UPDATE runs SET updated_at = %s WHERE name = %s", (received_at, message.run)
                )
                _notify(cur, {"kind": "snapshot", "run": message.run, "step": message.step})
                return True
            row = cur.execute(
                "SELECT payload FROM snapshots WHERE run = %s AND step = %s",
                (message.run, message.step),
            ).fetchone()
            if row is None or not same_payload(row[0], payload):
                raise StepConflict(message.run, message.step)
            return False

        return self._transaction(work)

    def append_event(self, message: EventMessage, received_at: float) -> bool:
        def work(cur: psycopg.Cursor[Any]) -> bool:
            self._claim(cur, message, received_at)
            row = cur.execute(
                "INSERT INTO events (run, step, wall_time, level, message, received_at) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id",
                (
                    message.run,
                    message.step,
                    message.wall_time,
                    message.level,
                    _no_nul(message.message),
                    received_at,
                ),
            ).fetchone()
            if row is None:
                return False
            cur.execute(
                "UPDATE runs SET updated_at = %s WHERE name = %s", (received_at, message.run)
            )
            _notify(cur, {"kind": "event", "run": message.run, "id": row[0]})
            return True

        return self._transaction(work)

    @staticmethod
    def _delete_runs(cur: psycopg.Cursor[Any], names: list[str]) -> int:
        """Delete these runs' snapshots and events (their rows are gone or locked by the
        caller) and announce it; returns the number of snapshots deleted."""
        if not names:
            return 0
        cur.execute("DELETE FROM snapshots WHERE run = ANY(%s::text[])", (names,))
        deleted = cur.rowcount
        cur.execute("DELETE FROM events WHERE run = ANY(%s::text[])", (names,))
        for name in names:
            _notify(cur, {"kind": "run_deleted", "run": name})
        return deleted

    def delete_run(self, run: str) -> bool:
        def work(cur: psycopg.Cursor[Any]) -> bool:
            cur.execute("DELETE FROM runs WHERE name = %s", (run,))
            if cur.rowcount != 1:
                return False
            self._delete_runs(cur, [run])
            return True

        return self._transaction(work)

    def prune(self, *, older_than: float, keep_every: int | None) -> int:
        if keep_every is not None and keep_every < 1:
            raise ValueError(f"keep_every must be None or >= 1, not {keep_every}")

        def work(cur: psycopg.Cursor[Any]) -> int:
            if keep_every is None:
                rows = cur.execute(
                    "DELETE FROM runs WHERE updated_at < %s RETURNING name", (older_than,)
                ).fetchall()
                return self._delete_runs(cur, sorted(row[0] for row in rows))
            cur.execute(_THIN_SQL, (older_than, keep_every))
            return cur.rowcount

        return self._transaction(work)

    # -- reads -----------------------------------------------------------------------------
    @staticmethod
    def _summary(row: tuple[Any, ...]) -> RunSummary:
        name, updated_at, count, first, last, errors = row
        return RunSummary(name, count, first, last, updated_at, errors)

    def list_runs(self) -> list[RunSummary]:
        with self._connection() as conn:
            rows = conn.execute(_SUMMARY_SQL + " ORDER BY r.updated_at DESC, r.name").fetchall()
        return [self._summary(row) for row in rows]

    def get_run(self, run: str) -> RunSummary | None:
        with self._connection() as conn:
            row = conn.execute(_SUMMARY_SQL + " WHERE r.name = %s", (run,)).fetchone()
        return None if row is None else self._summary(row)

    def _steps(self, run: str, start: int | None = None, end: int | None = None) -> list[int]:
        lo = -1 if start is None else start
        hi = 2**63 - 1 if end is None else end
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT step FROM snapshots WHERE run = %s AND step BETWEEN %s AND %s "
                "ORDER BY step",
                (run, lo, hi),
            ).fetchall()
        return [row[0] for row in rows]

    def _read_at(self, run: str, steps: list[int]) -> list[SnapshotRecord]:
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT step, received_at, payload FROM snapshots "
                "WHERE run = %s AND step = ANY(%s::bigint[]) ORDER BY step",
                (run, steps),
            ).fetchall()
        return [SnapshotRecord(run, step, received, payload) for step, received, payload in rows]

    def read_snapshot(self, run: str, step: int) -> SnapshotRecord | None:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT received_at, payload FROM snapshots WHERE run = %s AND step = %s",
                (run, step),
            ).fetchone()
        return None if row is None else SnapshotRecord(run, step, row[0], row[1])

    def read_light_series(
        self, run: str, steps: Sequence[int], top: int, groups: Collection[str] | None = None
    ) -> list[LightSnapshot]:
        """Reads the small ``light`` column written with each snapshot (for ``top`` up to
        :data:`LIGHT_TOP`), else extracts the numbers inside PostgreSQL: either way no
        payload travels to Python or is decoded there.

        PostgreSQL's JSON functions refuse a payload holding an escaped NUL (``\\u0000``,
        in a group name say); such a request (``top > LIGHT_TOP``) falls back to decoding
        in Python.
        """
        if top <= LIGHT_TOP:
            with self._connection() as conn:
                rows = conn.execute(
                    "SELECT step, light FROM snapshots "
                    "WHERE run = %s AND step = ANY(%s::bigint[]) ORDER BY step",
                    (run, list(steps)),
                ).fetchall()
            return [light_from_json(step, light, top, groups) for step, light in rows]
        try:
            with self._connection() as conn:
                rows = conn.execute(_LIGHT_SERIES_SQL, (run, list(steps))).fetchall()
        except pg_errors.UntranslatableCharacter:
            return super().read_light_series(run, steps, top, groups)
        return light_series_from_rows(rows, top, groups)

    def _summary_rows(self, run: str, steps: list[int]) -> list[SummaryRow]:
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT step, summary, summary_version FROM snapshots "
                "WHERE run = %s AND step = ANY(%s::bigint[]) ORDER BY step",
                (run, steps),
            ).fetchall()
        return [(step, text, version) for step, text, version in rows]

    def _save_summaries(self, run: str, summaries: dict[int, str]) -> None:
        rows = [
            (_no_nul(text), SUMMARY_VERSION, run, step, SUMMARY_VERSION)
            for step, text in summaries.items()
        ]
        try:
            with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
                cur.executemany(
                    "UPDATE snapshots SET summary = %s, summary_version = %s "
                    "WHERE run = %s AND step = %s "
                    "AND (summary IS NULL OR summary_version IS DISTINCT FROM %s)",
                    rows,
                )
        except psycopg.Error as exc:  # a read-only role, say: computed again next time
            log.info("could not store %d summaries of run %r: %s", len(rows), run, exc)

    def iter_snapshots(self, run: str, batch: int = 256) -> Iterator[SnapshotRecord]:
        last = -1
        while True:
            with self._connection() as conn:  # not held while the caller consumes a page
                rows = conn.execute(
                    "SELECT step, received_at, payload FROM snapshots "
                    "WHERE run = %s AND step > %s ORDER BY step LIMIT %s",
                    (run, last, batch),
                ).fetchall()
            if not rows:
                return
            for step, received, payload in rows:
                yield SnapshotRecord(run, step, received, payload)
            last = rows[-1][0]

    def read_events(self, run: str) -> list[EventRecord]:
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE run = %s ORDER BY id", (run,)
            ).fetchall()
        return [EventRecord(*row) for row in rows]

    def read_event(self, run: str, event_id: int) -> EventRecord | None:
        with self._connection() as conn:
            row = conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE run = %s AND id = %s",
                (run, event_id),
            ).fetchone()
        return None if row is None else EventRecord(*row)

    # -- change feed -----------------------------------------------------------------------
    def listen(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """Start a daemon thread that ``LISTEN``\\ s on :data:`CHANNEL` with its own
        connection and calls ``callback`` for every notification (see
        :meth:`Store.listen`); it is listening when this returns. A lost connection is
        reopened (with back-off) and then reported as ``{"kind": "reconnected"}``.
        Returns the function that stops the thread (:meth:`close` stops it too)."""
        if self._closed:
            raise StoreError("the store is closed")
        listener = _Listener(self._listen_connection, callback)
        with self._lock:
            self._listeners.append(listener)

        def stop() -> None:
            listener.stop()
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return stop

    def _listen_connection(self) -> psycopg.Connection[Any]:
        conn = self._connect(
            autocommit=True, keepalives=1, keepalives_idle=30, keepalives_interval=10
        )
        try:
            conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.stop()
        self._pool.close()


class _Listener:
    """One ``LISTEN`` connection and the daemon thread that reads it."""

    POLL_S = 0.2
    """How often the thread looks at its stop flag."""

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        callback: Callable[[dict[str, Any]], None],
    ) -> None:
        self._connect = connect
        self._callback = callback
        self._stopping = threading.Event()
        self._conn: psycopg.Connection[Any] | None = connect()  # raises StoreError
        self._thread = threading.Thread(target=self._run, name="curvscope-listen", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _deliver(self, payload: dict[str, Any]) -> None:
        try:
            self._callback(payload)
        except Exception:
            log.exception("the change-feed callback failed on %r", payload)

    def _run(self) -> None:
        backoff = 0.1
        try:
            while not self._stopping.is_set():
                if self._conn is None:
                    try:
                        self._conn = self._connect()
                    except StoreError as exc:
                        log.warning("change feed: %s; retrying in %.1f s", exc, backoff)
                        self._stopping.wait(backoff)
                        backoff = min(2 * backoff, 5.0)
                        continue
                    backoff = 0.1
                    log.info("change feed: reconnected")
                    self._deliver({"kind": "reconnected"})
                try:
                    for notify in self._conn.notifies(timeout=self.POLL_S):
                        self._handle(notify.payload)
                except psycopg.Error as exc:
                    log.warning("change feed: lost the connection (%s)", exc)
                    self._conn.close()
                    self._conn = None
        finally:
            if self._conn is not None:
                self._conn.close()

    def _handle(self, text: str) -> None:
        try:
            payload = json.loads(text)
        except ValueError:
            log.warning("change feed: ignored a notification that is not JSON: %.200r", text)
            return
        if isinstance(payload, dict):
            self._deliver(payload)
