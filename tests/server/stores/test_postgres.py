"""PostgresStore specifics: several workers on one database (concurrent writes of one key,
concurrent claims, concurrent first start), the change feed (``listen``), the schema
version, and how the store is chosen and named (``open_store``, passwords).

The tests that need a server use the ``postgres_url`` fixture (a fresh database each; see
conftest.py): they skip without ``CURVSCOPE_TEST_POSTGRES_URL``, and fail under CI.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from curvscope.server.protocol import EventMessage, SnapshotMessage
from curvscope.server.settings import Settings
from curvscope.server.stores import (
    SCHEMA_VERSION,
    RunTaken,
    Store,
    StoreError,
    open_store,
    redact_url,
)
from tests.helpers.messages import make_event, make_group, make_snapshot

try:
    from curvscope.server.stores.postgres import LIGHT_TOP, PostgresStore
except ModuleNotFoundError as exc:  # psycopg missing: skip, but not in CI
    if os.environ.get("CI"):
        raise
    pytest.skip(
        f"the PostgreSQL store needs {exc.name} (pip install -e '.[dev]')", allow_module_level=True
    )

DEADLINE_S = 10.0


def snap(run: str = "r", step: int = 0, **kw: Any) -> SnapshotMessage:
    return SnapshotMessage.model_validate(make_snapshot(run, step, **kw))


@pytest.fixture
def stores(postgres_url: str) -> Iterator[Callable[[], PostgresStore]]:
    """``stores()``: another PostgresStore (another server worker) on the test database."""
    opened: list[PostgresStore] = []

    def factory() -> PostgresStore:
        opened.append(PostgresStore(postgres_url, max_size=4))
        return opened[-1]

    yield factory
    for store in opened:
        store.close()


def run_together(n: int, work: Callable[[int], Any]) -> list[Any]:
    """``work(i)`` for i < n on n threads released at once; results (or exceptions)."""
    barrier = threading.Barrier(n)

    def task(i: int) -> Any:
        barrier.wait(timeout=DEADLINE_S)
        try:
            return work(i)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(task, range(n)))


class Feed:
    """Collects what ``listen`` delivers; :meth:`next` waits with a deadline."""

    def __init__(self) -> None:
        self.changes: queue.Queue[dict[str, Any]] = queue.Queue()

    def __call__(self, change: dict[str, Any]) -> None:
        self.changes.put(change)

    def next(self) -> dict[str, Any]:
        try:
            return self.changes.get(timeout=DEADLINE_S)
        except queue.Empty:
            raise AssertionError(f"no notification within {DEADLINE_S} s") from None


# -- several workers ---------------------------------------------------------------------


def test_concurrent_appends_of_one_key_store_it_once(
    stores: Callable[[], PostgresStore],
) -> None:
    """Two workers receive the same snapshot at the same moment (a probe resending after a
    reconnect to another worker): it is stored once and exactly one of them says so."""
    workers = [stores(), stores()]
    for step in range(15):
        message = snap(step=step, instance="probe")
        results = run_together(2, lambda i, m=message: workers[i].append_snapshot(m, 1.0 + i))
        assert sorted(results) == [False, True], results
    assert workers[0].get_run("r").snapshots == 15
    assert workers[1].list_steps("r") == list(range(15))


def test_concurrent_first_writes_of_two_instances_one_owns_the_run(
    stores: Callable[[], PostgresStore],
) -> None:
    workers = [stores(), stores()]
    for n in range(10):
        run = f"run-{n}"
        results = run_together(
            2, lambda i, r=run: workers[i].append_snapshot(snap(r, i, instance=f"i{i}"), 1.0)
        )
        assert sum(result is True for result in results) == 1, results
        (taken,) = [result for result in results if isinstance(result, RunTaken)]
        winner = results.index(True)
        assert taken.owner == f"i{winner}"
        assert workers[1 - winner].list_steps(run) == [winner]


def test_concurrent_events_and_deletes_stay_consistent(
    stores: Callable[[], PostgresStore],
) -> None:
    """Appends racing a delete of their run: every append either lands in the recreated
    run or was deleted with it; nothing is left half-written."""
    workers = [stores(), stores()]
    event = EventMessage.model_validate(make_event("r"))

    def work(i: int) -> Any:
        if i == 0:
            return [workers[0].delete_run("r") for _ in range(10)]
        return [workers[1].append_event(event, 1.0) for _ in range(10)]

    workers[0].append_snapshot(snap(step=0), 1.0)
    results = run_together(2, work)
    assert not any(isinstance(result, Exception) for result in results), results
    summary = workers[0].get_run("r")
    events = workers[0].read_events("r")
    if summary is None:
        assert events == []
    else:
        assert len(events) == 1 and summary.errors == 1


def test_two_workers_see_each_others_writes(stores: Callable[[], PostgresStore]) -> None:
    one, two = stores(), stores()
    assert one.append_snapshot(snap(step=1, instance="p"), 1.0) is True
    assert two.read_snapshot("r", 1) == one.read_snapshot("r", 1)
    assert two.append_snapshot(snap(step=2, instance="p"), 2.0) is True
    assert one.list_steps("r") == [1, 2]
    assert one.get_run("r") == two.get_run("r")
    assert two.prune(older_than=10.0, keep_every=None) == 2
    assert one.list_runs() == []


def test_text_postgres_cannot_hold_is_stored_anyway(stores: Callable[[], PostgresStore]) -> None:
    """NUL: PostgreSQL's TEXT cannot hold it and its JSON functions refuse ``\\u0000``.
    A snapshot naming a group with one reads back exactly (its light series decoded in
    Python); an event message has it replaced by U+FFFD (and stays idempotent)."""
    store = stores()
    group = make_group('conv\x00 "1" é')
    message = snap(step=1, groups=[group, make_group("fc")])
    assert store.append_snapshot(message, 1.0) is True
    assert store.read_snapshot("r", 1).to_dict()["groups"][0]["name"] == group["name"]
    store.append_snapshot(snap(step=2, groups=[make_group("fc")]), 1.0)
    for top in (2, LIGHT_TOP + 1):  # from the light column; from the payloads
        light = store.read_light_series("r", [1, 2], top)
        assert light == Store.read_light_series(store, "r", [1, 2], top)
    assert [g["name"] for g in light[0]["groups"]] == [group["name"], "fc"]
    event = EventMessage.model_validate(make_event("r", message="bad\x00byte"))
    assert store.append_event(event, 2.0) is True
    assert store.append_event(event, 3.0) is False
    assert [e.message for e in store.read_events("r")] == ["bad\ufffdbyte"]


# -- the change feed ---------------------------------------------------------------------


def test_listen_delivers_changes_of_every_worker(stores: Callable[[], PostgresStore]) -> None:
    listener, writer = stores(), stores()
    feed = Feed()
    stop = listener.listen(feed)
    try:
        writer.append_snapshot(snap(step=4, instance="p"), 1.0)
        assert feed.next() == {"kind": "snapshot", "run": "r", "step": 4}
        # nothing for a duplicate, a refused message or a failed delete ...
        assert writer.append_snapshot(snap(step=4, instance="p"), 2.0) is False
        with pytest.raises(RunTaken):
            writer.append_snapshot(snap(step=5, instance="q"), 2.0)
        assert writer.delete_run("missing") is False
        # ... so the next notification is the event's
        assert writer.append_event(EventMessage.model_validate(make_event("r")), 3.0) is True
        change = feed.next()
        assert change["kind"] == "event" and change["run"] == "r"
        assert listener.read_event("r", change["id"]).message == "something failed"
        listener.append_snapshot(snap(step=6, instance="p"), 4.0)  # its own writes too
        assert feed.next() == {"kind": "snapshot", "run": "r", "step": 6}
        assert writer.delete_run("r") is True
        assert feed.next() == {"kind": "run_deleted", "run": "r"}
        writer.append_snapshot(snap("gone", 0), 5.0)
        assert feed.next()["kind"] == "snapshot"
        assert writer.prune(older_than=10.0, keep_every=None) == 1
        assert feed.next() == {"kind": "run_deleted", "run": "gone"}
    finally:
        stop()
    assert feed.changes.empty()


def listen_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "curvscope-listen"]


def test_listen_stops_and_close_stops_it_too(stores: Callable[[], PostgresStore]) -> None:
    store = stores()
    before = len(listen_threads())
    stop = store.listen(lambda change: None)
    store.listen(lambda change: None)
    assert len(listen_threads()) == before + 2
    stop()
    stop()  # stopping twice is harmless
    assert len(listen_threads()) == before + 1
    store.close()
    assert len(listen_threads()) == before
    with pytest.raises(StoreError, match="closed"):
        store.listen(lambda change: None)


def test_listen_reconnects_after_losing_its_connection(
    stores: Callable[[], PostgresStore], postgres_admin: Any, postgres_url: str
) -> None:
    listener, writer = stores(), stores()
    feed = Feed()
    stop = listener.listen(feed)
    try:
        database = postgres_url.rsplit("/", 1)[1]
        killed = postgres_admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND query LIKE 'LISTEN%%'",
            (database,),
        ).fetchall()
        assert killed == [(True,)]
        assert feed.next() == {"kind": "reconnected"}  # changes may have been missed
        writer.append_snapshot(snap(step=1), 1.0)
        assert feed.next() == {"kind": "snapshot", "run": "r", "step": 1}
    finally:
        stop()


def test_a_failing_callback_does_not_stop_the_feed(stores: Callable[[], PostgresStore]) -> None:
    store = stores()
    feed = Feed()

    def callback(change: dict[str, Any]) -> None:
        feed(change)
        if change.get("step") == 0:
            raise RuntimeError("a bug in the consumer")

    stop = store.listen(callback)
    try:
        store.append_snapshot(snap(step=0), 1.0)
        store.append_snapshot(snap(step=1), 1.0)
        assert [feed.next()["step"], feed.next()["step"]] == [0, 1]
    finally:
        stop()


# -- schema ------------------------------------------------------------------------------


def test_a_fresh_database_gets_the_current_schema_once(
    stores: Callable[[], PostgresStore], postgres_admin: Any, postgres_url: str
) -> None:
    opened = run_together(4, lambda i: stores())  # four workers starting at once
    assert all(isinstance(store, PostgresStore) for store in opened), opened
    assert {store.schema_version() for store in opened} == {SCHEMA_VERSION} == {4}
    opened[0].append_snapshot(snap(step=0), 1.0)
    assert opened[3].list_steps("r") == [0]
    reopened = stores()  # a later start migrates nothing
    assert reopened.schema_version() == 4
    assert reopened.list_steps("r") == [0]
    import psycopg

    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT version FROM curvscope_schema").fetchall() == [(4,)]


def test_optional_schema_statements_may_fail(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server without lz4 (or too old for COMPRESSION) gets the schema without it."""
    from curvscope.server.stores import postgres

    monkeypatch.setattr(postgres, "_BEST_EFFORT", {3: ("ALTER TABLE nowhere SET nothing",)})
    store = PostgresStore(postgres_url)
    try:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.append_snapshot(snap(step=0), 1.0) is True
    finally:
        store.close()


def test_refuses_a_newer_schema(stores: Callable[[], PostgresStore], postgres_url: str) -> None:
    stores().close()
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE curvscope_schema SET version = 99")
    with pytest.raises(StoreError, match="schema version 99, newer than this curvscope"):
        PostgresStore(postgres_url)


# -- choosing and naming the store -------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_open_store_opens_postgres_urls(postgres_url: str, scheme: str) -> None:
    url = scheme + postgres_url[postgres_url.index(":") :]
    store = open_store(url)
    try:
        assert isinstance(store, PostgresStore)
        assert store.append_snapshot(snap(step=0), 1.0) is True
    finally:
        store.close()


def test_the_app_serves_from_postgres(postgres_url: str) -> None:
    from fastapi.testclient import TestClient

    from curvscope.server.app import create_app

    writer = PostgresStore(postgres_url)
    try:
        writer.append_snapshot(snap("team-run", 3), time.time())
    finally:
        writer.close()
    settings = Settings(db=postgres_url, allowed_hosts=["testserver"])
    with TestClient(create_app(settings)) as client:
        assert isinstance(client.app.state.store, PostgresStore)  # type: ignore[attr-defined]
        runs = client.get("/api/runs").json()
        assert [(r["run"], r["last_step"]) for r in runs] == [("team-run", 3)]


def test_open_store_without_psycopg_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg -> ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "curvscope.server.stores.postgres", raising=False)
    with pytest.raises(StoreError, match=r"pip install 'curvscope\[postgres\]'"):
        open_store("postgresql://user@localhost:5432/curvscope")


def test_passwords_stay_out_of_errors_and_reprs(unused_port: int) -> None:
    url = f"postgresql://curvscope:s3cr3t-pw@127.0.0.1:{unused_port}/curvscope"
    with pytest.raises(StoreError) as failed:
        PostgresStore(url)
    assert "s3cr3t-pw" not in str(failed.value)
    assert "curvscope:***@127.0.0.1" in str(failed.value)
    settings = Settings(db=url)
    assert settings.db == url  # the server uses it as given ...
    assert "s3cr3t-pw" not in repr(settings) and "s3cr3t-pw" not in str(settings)
    assert redact_url("host=db password='a b' user=x") == "host=db password=*** user=x"
    assert redact_url("postgresql://u@h/db?password=pw&sslmode=require") == (
        "postgresql://u@h/db?password=***&sslmode=require"
    )
    assert redact_url("/var/lib/curvscope.sqlite") == "/var/lib/curvscope.sqlite"


@pytest.fixture
def unused_port() -> int:
    """A loopback TCP port nothing listens on (connections are refused at once)."""
    from tests.helpers.server_process import free_port

    return free_port()


def test_a_schema_3_database_gets_summaries_on_first_read(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Schema 4 adds the summary columns empty; reading summaries computes those of the old
    rows from their payloads (as ingest does) and stores them, once."""
    import psycopg

    from curvscope.server.stores import postgres
    from curvscope.server.stores.base import snapshot_payload_json
    from curvscope.server.summaries import SUMMARY_VERSION, snapshot_summary

    with monkeypatch.context() as patch:
        patch.setattr(postgres, "_MIGRATIONS", postgres._MIGRATIONS[:1])
        patch.setattr(postgres, "SCHEMA_VERSION", 3)
        PostgresStore(postgres_url).close()
    old = [make_snapshot("old", s, groups=[make_group("a", k=4), make_group("b")]) for s in (0, 5)]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO runs (name, created_at, updated_at) VALUES ('old', 1, 1)")
        for message in old:
            conn.execute(
                "INSERT INTO snapshots (run, step, received_at, payload, light) "
                "VALUES ('old', %s, 1, %s, '[0, []]')",
                (message["step"], snapshot_payload_json(SnapshotMessage(**message))),
            )
    store = PostgresStore(postgres_url)
    stored = "SELECT step, summary_version FROM snapshots WHERE summary IS NOT NULL ORDER BY step"
    try:
        assert store.schema_version() == SCHEMA_VERSION == 4
        with psycopg.connect(postgres_url) as conn:
            assert conn.execute(stored).fetchall() == []
        summaries = store.read_summaries("old", [0, 5, 9])
        assert summaries == [snapshot_summary(m) for m in old]
        assert [[g["k"] for g in s["groups"]] for s in summaries] == [[4, 3], [4, 3]]
        with psycopg.connect(postgres_url) as conn:
            assert conn.execute(stored).fetchall() == [(0, SUMMARY_VERSION), (5, SUMMARY_VERSION)]
    finally:
        store.close()
