"""SQLiteStore: idempotent appends, runs, ranges, down-sampling, events, deletion, migrations."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from curvscope.server.protocol import EventMessage, SnapshotMessage
from curvscope.server.stores import (
    SCHEMA_VERSION,
    RunTaken,
    SQLiteStore,
    StepConflict,
    Store,
    StoreError,
    downsample_indices,
    snapshot_payload_json,
)
from tests.helpers.legacy_store import write_schema_1_database
from tests.helpers.messages import make_event, make_snapshot
from tests.web.seeding import seed_run, synthetic_snapshot


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteStore(tmp_path / "s.sqlite")
    yield s
    s.close()


def snap(run: str = "r", step: int = 0, **kw) -> SnapshotMessage:
    return SnapshotMessage.model_validate(make_snapshot(run, step, **kw))


def test_append_is_idempotent_on_run_and_step(store: SQLiteStore) -> None:
    assert store.append_snapshot(snap(step=3, loss=1.0, wall_time=1.0), 10.0) is True
    # the same numbers again (a resend, or a replay computed later): stored once
    assert store.append_snapshot(snap(step=3, loss=1.0, wall_time=2.0), 11.0) is False
    with pytest.raises(StepConflict):  # other numbers under the key: refused, not merged
        store.append_snapshot(snap(step=3, loss=2.0), 12.0)
    records = store.read_snapshots("r")
    assert [r.step for r in records] == [3]
    assert records[0].to_dict()["loss"] == 1.0  # the first copy stays
    assert records[0].received_at == 10.0


def test_a_run_is_owned_by_its_first_instance(store: SQLiteStore) -> None:
    store.append_snapshot(snap(step=0, instance="one"), 1.0)
    with pytest.raises(RunTaken) as taken:
        store.append_snapshot(snap(step=1, instance="two"), 2.0)
    assert (taken.value.run, taken.value.owner) == ("r", "one")
    with pytest.raises(RunTaken):
        store.append_event(EventMessage(run="r", wall_time=3.0, message="x", instance="two"), 3.0)
    assert store.append_snapshot(snap(step=1, instance="two", resume=True), 4.0) is True
    with pytest.raises(RunTaken) as taken:
        store.append_snapshot(snap(step=2, instance="one"), 5.0)
    assert taken.value.owner == "two"
    assert [r.step for r in store.read_snapshots("r")] == [0, 1]
    assert store.read_events("r") == []


def test_stored_shape_is_the_message_plus_received_at(store: SQLiteStore) -> None:
    message = snap(step=1)
    store.append_snapshot(message, 5.0)
    data = store.read_snapshot("r", 1).to_dict()
    expected = message.model_dump(mode="json", exclude={"type", "schema_version", "resume"})
    assert data == expected | {"received_at": 5.0}


def test_list_runs_counts_steps_and_errors(store: SQLiteStore) -> None:
    for step in (5, 1, 9):
        store.append_snapshot(snap("a", step), 100.0 + step)
    store.append_snapshot(snap("b", 0), 50.0)
    store.append_event(EventMessage.model_validate(make_event("a")), 120.0)
    store.append_event(EventMessage.model_validate(make_event("a", level="info")), 121.0)
    runs = {r.run: r for r in store.list_runs()}
    assert runs["a"].snapshots == 3
    assert (runs["a"].first_step, runs["a"].last_step) == (1, 9)
    assert runs["a"].errors == 1
    assert runs["a"].last_update == 121.0
    assert [r.run for r in store.list_runs()] == ["a", "b"]  # most recent first
    assert store.get_run("missing") is None
    summary = runs["a"].to_dict(live_window_s=60.0, now=130.0)
    assert summary["live"] is True
    assert runs["a"].to_dict(live_window_s=5.0, now=130.0)["live"] is False


def test_events_are_idempotent(store: SQLiteStore) -> None:
    event = EventMessage.model_validate(make_event("a", step=3))
    assert store.append_event(event, 1.0) is True
    assert store.append_event(event, 2.0) is False
    assert [e.message for e in store.read_events("a")] == ["something failed"]


def test_step_range_and_downsampling_keep_the_latest(store: SQLiteStore) -> None:
    for step in range(0, 100, 3):  # 0, 3, ..., 99
        store.append_snapshot(snap(step=step), 1.0)
    in_range = [r.step for r in store.read_snapshots("r", start=10, end=40)]
    assert in_range == list(range(12, 40, 3))
    sampled = [r.step for r in store.read_snapshots("r", max_points=5)]
    assert len(sampled) == 5
    assert sampled[0] == 0 and sampled[-1] == 99
    assert [r.step for r in store.read_snapshots("r", max_points=1)] == [99]
    assert [r.step for r in store.read_snapshots("r", start=50, max_points=2)] == [51, 99]


@pytest.mark.parametrize("n", [0, 1, 2, 7, 100, 101])
@pytest.mark.parametrize("m", [1, 2, 3, 10, 1000])
def test_downsample_indices(n: int, m: int) -> None:
    idx = downsample_indices(n, m)
    assert len(idx) == min(n, m)
    assert idx == sorted(set(idx))
    if n:
        assert idx[-1] == n - 1
        assert all(0 <= i < n for i in idx)


def test_delete_run(store: SQLiteStore) -> None:
    store.append_snapshot(snap("a", 1), 1.0)
    store.append_snapshot(snap("b", 1), 1.0)
    store.append_event(EventMessage.model_validate(make_event("a")), 1.0)
    assert store.delete_run("a") is True
    assert store.delete_run("a") is False
    assert [r.run for r in store.list_runs()] == ["b"]
    assert store.read_snapshots("a") == [] and store.read_events("a") == []


def test_persists_across_reopen_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    first = SQLiteStore(path)
    first.append_snapshot(snap(step=1), 1.0)
    first.close()
    second = SQLiteStore(path)
    assert [r.step for r in second.read_snapshots("r")] == [1]
    assert second.schema_version() == SCHEMA_VERSION == 3
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    second.close()


def test_backend_is_stored_and_read_back(store: SQLiteStore) -> None:
    store.append_snapshot(snap(step=1, config={"curvature": "exact", "backend": "func"}), 1.0)
    store.append_snapshot(snap(step=2, config={"curvature": "exact"}), 1.0)  # an older probe
    store.append_snapshot(snap(step=3, config={}), 1.0)
    backends = [r.to_dict()["config"]["backend"] for r in store.read_snapshots("r")]
    assert backends == ["func", "backpack", "backpack"]


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
        assert store.schema_version() == SCHEMA_VERSION == 3
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
        assert reopened.schema_version() == 3
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


def test_iter_snapshots_pages_through_everything(store: SQLiteStore) -> None:
    for step in range(7):
        store.append_snapshot(snap(step=step), 1.0)
    assert [r.step for r in store.iter_snapshots("r", batch=3)] == list(range(7))


def test_list_steps(store: SQLiteStore) -> None:
    for step in (30, 0, 10):
        store.append_snapshot(snap(step=step), 1.0)
    store.append_snapshot(snap(run="other", step=5), 1.0)
    assert store.list_steps("r") == [0, 10, 30]
    assert store.list_steps("missing") == []


def test_light_series_in_sql_equals_the_generic_default(tmp_path: Path) -> None:
    """SQLiteStore's override (numbers extracted inside SQLite) returns what the base class's
    default (decode each snapshot) returns, and both match the seeded messages."""
    seed_run(tmp_path / "l.sqlite", "r", range(0, 300, 7), k=20, k_stats=5, groups=("a", "b"))
    store = SQLiteStore(tmp_path / "l.sqlite")
    try:
        # a snapshot without groups still has a point (its loss)
        no_groups = synthetic_snapshot("r", 1000, groups=())
        store.append_snapshot(SnapshotMessage(**no_groups), 1.0)
        steps = store.list_steps("r")
        assert len(steps) == 44
        for chosen in (steps, steps[::10], [steps[0], steps[-1]], [7, 8, 1000], []):
            sql = store.read_light_series("r", chosen, 4)
            generic = Store.read_light_series(store, "r", chosen, 4)
            assert sql == generic
            assert [s["step"] for s in sql] == [s for s in chosen if s in steps]
        full = store.read_light_series("r", steps, 4)
        expected = synthetic_snapshot("r", 7, k=20, k_stats=5, groups=("a", "b"))
        assert full[1]["loss"] == expected["loss"]
        assert full[1]["groups"] == [
            {"name": g["name"], "eigvals": g["eigvals"][:4]} for g in expected["groups"]
        ]
        assert full[-1] == {"step": 1000, "loss": no_groups["loss"], "groups": []}
        assert store.read_light_series("missing", [0, 1], 3) == []
    finally:
        store.close()
