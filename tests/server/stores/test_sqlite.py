"""SQLiteStore specifics: the file (WAL, paths, reopening) and the schema migrations.

The behaviour every store shares is tested on SQLite and PostgreSQL in test_contract.py.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from curvscope.server.protocol import SnapshotMessage
from curvscope.server.stores import (
    SCHEMA_VERSION,
    SQLiteStore,
    StepConflict,
    Store,
    StoreError,
    open_store,
    snapshot_payload_json,
)
from curvscope.server.summaries import SUMMARY_VERSION, snapshot_summary
from tests.helpers.legacy_store import write_schema_1_database
from tests.helpers.messages import make_group, make_snapshot


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteStore(tmp_path / "s.sqlite")
    yield s
    s.close()


def snap(run: str = "r", step: int = 0, **kw) -> SnapshotMessage:
    return SnapshotMessage.model_validate(make_snapshot(run, step, **kw))


def test_persists_across_reopen_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    first = SQLiteStore(path)
    first.append_snapshot(snap(step=1), 1.0)
    first.close()
    second = SQLiteStore(path)
    assert [r.step for r in second.read_snapshots("r")] == [1]
    assert second.schema_version() == SCHEMA_VERSION == 4
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    second.close()


def test_schema_1_database_is_migrated_and_its_snapshots_read_as_backpack(
    tmp_path: Path,
) -> None:
    """A database written before ``config.backend`` existed opens, is migrated to schema 2,
    and each old snapshot reads back exactly as a new server would have stored it: the same
    text (numbers included) plus ``"backend": "backpack"``."""
    path = tmp_path / "old.sqlite"
    old = [
        make_snapshot("old", 0, loss=0.1 + 0.2, config={"curvature": "mc", "mc_samples": 4}),
        make_snapshot("old", 10, wall_time=1_700_000_000.123456789, loss=5e-324),
        make_snapshot("old", 20, groups=[]),
    ]
    write_schema_1_database(path, old)
    store = SQLiteStore(path)
    try:
        assert store.schema_version() == SCHEMA_VERSION == 4
        records = store.read_snapshots("old")
        assert [r.step for r in records] == [0, 10, 20]
        for record, message in zip(records, old, strict=True):
            assert record.payload_json == snapshot_payload_json(SnapshotMessage(**message))
            assert record.to_dict()["config"]["backend"] == "backpack"
        assert records[0].to_dict()["config"]["mc_samples"] == 4
        # new snapshots go next to the migrated ones as usual
        new = snap("old", 30, config={"backend": "func"})
        assert store.append_snapshot(new, 2.0) is True
        assert store.read_snapshot("old", 30).to_dict()["config"]["backend"] == "func"
        assert store.get_run("old").snapshots == 4
    finally:
        store.close()
    reopened = SQLiteStore(path)  # migrating is done once: reopening changes nothing
    try:
        assert reopened.schema_version() == 4
        assert [r.to_dict()["config"]["backend"] for r in reopened.iter_snapshots("old")] == [
            "backpack",
            "backpack",
            "backpack",
            "func",
        ]
    finally:
        reopened.close()


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        SQLiteStore(path)


def test_file_paths(tmp_path: Path) -> None:
    nested = tmp_path / "a" / "b" / "s.sqlite"  # missing folders are created
    store = SQLiteStore(str(nested))
    try:
        assert store.path == nested and nested.exists()
        store.append_snapshot(snap(step=1), 1.0)
    finally:
        store.close()
    for bad in ("", ":memory:"):
        with pytest.raises(StoreError, match="file path"):
            SQLiteStore(bad)


def test_open_store_opens_a_path_or_anything_not_a_postgres_url(tmp_path: Path) -> None:
    for db in (tmp_path / "p.sqlite", str(tmp_path / "s.sqlite"), str(tmp_path / "postgres")):
        store = open_store(db)
        try:
            assert isinstance(store, SQLiteStore)
            assert store.path == Path(db)
        finally:
            store.close()


def test_no_cross_process_feed_and_closed_store_refuses(store: SQLiteStore) -> None:
    assert store.listen(lambda change: None) is None  # one process: ingest publishes itself
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.list_runs()


def test_a_replay_matches_a_snapshot_stored_before_optional_fields_existed(
    tmp_path: Path,
) -> None:
    """Stored by an older server (no ``directions``, ``instance``, ``user_step`` members),
    the same snapshot sent again now is a duplicate, not a ``step_conflict``."""
    path = tmp_path / "old.sqlite"
    message = SnapshotMessage(**make_snapshot("old", 4))
    store = SQLiteStore(path)
    try:
        assert store.append_snapshot(message, 1.0) is True
        with sqlite3.connect(path) as conn:
            conn.execute(
                "UPDATE snapshots SET payload = json_remove(payload, '$.instance', "
                "'$.user_step', '$.config.directions', '$.groups[0].directions')"
            )
        stored = store.read_snapshot("old", 4).payload_json
        assert '"directions"' not in stored and '"instance"' not in stored
        assert store.append_snapshot(message, 2.0) is False
        with pytest.raises(StepConflict):
            store.append_snapshot(message.model_copy(update={"loss": 9.0}), 3.0)
    finally:
        store.close()


def test_snapshots_stored_before_summaries_get_theirs_on_first_read(tmp_path: Path) -> None:
    """Schema 4 adds the summary column empty; reading summaries computes those of the old
    rows from their payloads (the same as ingest computes) and stores them, once."""
    path = tmp_path / "old.sqlite"
    old = [
        make_snapshot("old", step, groups=[make_group("a", k=4), make_group("b", k=2)])
        for step in (0, 10, 20)
    ]
    write_schema_1_database(path, old)
    store = SQLiteStore(path)
    try:
        stored = "SELECT step, summary_version FROM snapshots WHERE summary IS NOT NULL"
        assert sqlite3.connect(path).execute(stored).fetchall() == []
        summaries = store.read_summaries("old", [0, 20])
        assert summaries == [snapshot_summary(old[0]), snapshot_summary(old[2])]
        assert [[g["k"] for g in s["groups"]] for s in summaries] == [[4, 2], [4, 2]]
        rows = sqlite3.connect(path).execute(stored + " ORDER BY step").fetchall()
        assert rows == [(0, SUMMARY_VERSION), (20, SUMMARY_VERSION)]
        # an outdated summary (an older SUMMARY_VERSION) is computed again
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE snapshots SET summary = '{}', summary_version = 0")
        assert store.read_summaries("old", [0, 10, 20]) == [snapshot_summary(m) for m in old]
        assert sqlite3.connect(path).execute(stored).fetchall() == [
            (0, SUMMARY_VERSION),
            (10, SUMMARY_VERSION),
            (20, SUMMARY_VERSION),
        ]
    finally:
        store.close()


def test_light_series_of_old_and_new_rows(tmp_path: Path) -> None:
    """Snapshots stored before schema 4 have no ``light`` column: their light series comes
    from the payload, equal to the generic default, next to new rows read from the column."""
    path = tmp_path / "old.sqlite"
    write_schema_1_database(
        path, [make_snapshot("r", s, groups=[make_group("a", k=5)]) for s in (0, 10)]
    )
    store = SQLiteStore(path)
    try:
        store.append_snapshot(snap("r", 20, groups=[make_group("a", k=7), make_group("b")]), 1.0)
        light = "SELECT step FROM snapshots WHERE light IS NOT NULL"
        assert sqlite3.connect(path).execute(light).fetchall() == [(20,)]
        for top in (3, 100):
            series = store.read_light_series("r", [0, 10, 20, 30], top)
            assert series == Store.read_light_series(store, "r", [0, 10, 20, 30], top)
            assert [[len(g["eigvals"]) for g in s["groups"]] for s in series] == [
                [min(5, top)],
                [min(5, top)],
                [min(7, top), 3],
            ]
    finally:
        store.close()
