"""The :class:`Store` contract, on every backend (``any_store``: SQLite and PostgreSQL).

Idempotent appends, run ownership, events, run summaries, step ranges and down-sampling,
exact read-back of every number, the light series, paging, deletion and retention.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from curvscope.server.protocol import MAX_STEP, EventMessage, SnapshotMessage
from curvscope.server.stores import (
    RunTaken,
    StepConflict,
    Store,
    downsample_indices,
    snapshot_payload_json,
)
from curvscope.server.stores.base import LIGHT_TOP, light_from_json, light_json
from curvscope.server.summaries import snapshot_summary
from tests.helpers.messages import make_event, make_group, make_snapshot
from tests.web.seeding import synthetic_snapshot


def snap(run: str = "r", step: int = 0, **kw) -> SnapshotMessage:
    return SnapshotMessage.model_validate(make_snapshot(run, step, **kw))


def event(run: str = "r", **kw) -> EventMessage:
    return EventMessage.model_validate(make_event(run, **kw))


def test_append_is_idempotent_on_run_and_step(any_store: Store) -> None:
    assert any_store.append_snapshot(snap(step=3, loss=1.0, wall_time=1.0), 10.0) is True
    # the same numbers again (a resend, or a replay computed later): stored once
    assert any_store.append_snapshot(snap(step=3, loss=1.0, wall_time=2.0), 11.0) is False
    # ... by another instance resuming the run, too
    replay = snap(step=3, loss=1.0, wall_time=3.0, instance="other", resume=True)
    assert any_store.append_snapshot(replay, 12.0) is False
    with pytest.raises(StepConflict) as conflict:  # other numbers under the key: refused
        any_store.append_snapshot(snap(step=3, loss=2.0), 13.0)
    assert (conflict.value.run, conflict.value.step) == ("r", 3)
    records = any_store.read_snapshots("r")
    assert [r.step for r in records] == [3]
    assert records[0].to_dict()["loss"] == 1.0  # the first copy stays
    assert records[0].received_at == 10.0
    assert any_store.get_run("r").last_update == 10.0  # duplicates change nothing


def test_a_run_is_owned_by_its_first_instance(any_store: Store) -> None:
    any_store.append_snapshot(snap(step=0, instance="one"), 1.0)
    with pytest.raises(RunTaken) as taken:
        any_store.append_snapshot(snap(step=1, instance="two"), 2.0)
    assert (taken.value.run, taken.value.owner) == ("r", "one")
    with pytest.raises(RunTaken):
        any_store.append_event(
            EventMessage(run="r", wall_time=3.0, message="x", instance="two"), 3.0
        )
    assert any_store.append_snapshot(snap(step=1, instance="two", resume=True), 4.0) is True
    with pytest.raises(RunTaken) as taken:
        any_store.append_snapshot(snap(step=2, instance="one"), 5.0)
    assert taken.value.owner == "two"
    assert [r.step for r in any_store.read_snapshots("r")] == [0, 1]
    assert any_store.read_events("r") == []
    assert any_store.get_run("r").last_update == 4.0  # refused messages change nothing


def test_messages_without_an_instance_claim_nothing(any_store: Store) -> None:
    # a run from a probe that sends no instance: a new instance must resume it ...
    any_store.append_snapshot(snap("old", 0), 1.0)
    with pytest.raises(RunTaken) as taken:
        any_store.append_snapshot(snap("old", 1, instance="new"), 2.0)
    assert taken.value.owner is None
    assert any_store.append_snapshot(snap("old", 1, instance="new", resume=True), 3.0) is True
    # ... and an instance-less message is accepted on any run, claiming nothing
    assert any_store.append_snapshot(snap("old", 2), 4.0) is True
    assert any_store.append_event(event("old"), 5.0) is True
    with pytest.raises(RunTaken) as taken:
        any_store.append_snapshot(snap("old", 3, instance="third"), 6.0)
    assert taken.value.owner == "new"


def test_stored_shape_is_the_message_plus_received_at(any_store: Store) -> None:
    message = snap(step=1)
    any_store.append_snapshot(message, 5.0)
    record = any_store.read_snapshot("r", 1)
    assert record.payload_json == snapshot_payload_json(message)
    expected = message.model_dump(mode="json", exclude={"type", "schema_version", "resume"})
    assert record.to_dict() == expected | {"received_at": 5.0}
    assert any_store.read_snapshot("r", 2) is None
    assert any_store.read_snapshot("missing", 1) is None


def test_every_number_reads_back_exactly(any_store: Store) -> None:
    """The payload text is returned verbatim: floats that no decimal rounding survives."""
    tricky = [0.1 + 0.2, 1 / 3, 5e-324, 1.7976931348623157e308, 2.220446049250313e-16, 0.0]
    group = make_group(k=len(tricky)) | {"eigvals": sorted(tricky, reverse=True)}
    message = snap(
        step=MAX_STEP,
        wall_time=1_700_000_000.123456789,
        loss=0.1 + 0.7,
        groups=[group],
        user_step=2**40 + 1,
    )
    received_at = 1_700_000_000.987654321
    assert any_store.append_snapshot(message, received_at) is True
    (record,) = any_store.read_snapshots("r")
    assert record.step == MAX_STEP
    assert record.payload_json == snapshot_payload_json(message)
    assert record.received_at == received_at
    data = record.to_dict()
    assert data["groups"][0]["eigvals"] == sorted(tricky, reverse=True)
    assert data["loss"] == 0.1 + 0.7
    assert data["wall_time"] == 1_700_000_000.123456789
    assert any_store.list_steps("r") == [MAX_STEP]
    (light,) = any_store.read_light_series("r", [MAX_STEP], 10)
    assert light == {
        "step": MAX_STEP,
        "loss": 0.1 + 0.7,
        "groups": [{"name": "all", "eigvals": sorted(tricky, reverse=True)}],
    }


def test_list_runs_counts_steps_and_errors(any_store: Store) -> None:
    for step in (5, 1, 9):
        any_store.append_snapshot(snap("a", step), 100.0 + step)
    any_store.append_snapshot(snap("b", 0), 50.0)
    any_store.append_event(event("a"), 120.0)
    any_store.append_event(event("a", level="info"), 121.0)
    runs = {r.run: r for r in any_store.list_runs()}
    assert runs["a"].snapshots == 3
    assert (runs["a"].first_step, runs["a"].last_step) == (1, 9)
    assert runs["a"].errors == 1
    assert runs["a"].last_update == 121.0
    assert [r.run for r in any_store.list_runs()] == ["a", "b"]  # most recent first
    assert any_store.get_run("a") == runs["a"]
    assert any_store.get_run("missing") is None
    summary = runs["a"].to_dict(live_window_s=60.0, now=130.0)
    assert summary["live"] is True
    assert runs["a"].to_dict(live_window_s=5.0, now=130.0)["live"] is False


def test_list_runs_breaks_ties_by_name_and_shows_event_only_runs(any_store: Store) -> None:
    for run in ("c", "a", "b.1", "b-2", "Zeta"):  # ties: names in byte order, any locale
        any_store.append_snapshot(snap(run, 0), 7.0)
    any_store.append_event(event("only-events"), 3.0)
    assert [r.run for r in any_store.list_runs()] == ["Zeta", "a", "b-2", "b.1", "c", "only-events"]
    only = any_store.get_run("only-events")
    assert (only.snapshots, only.first_step, only.last_step, only.errors) == (0, None, None, 1)


def test_events_are_idempotent_and_read_by_id(any_store: Store) -> None:
    first = event("a", step=3)
    assert any_store.append_event(first, 1.0) is True
    assert any_store.append_event(first, 2.0) is False
    # step None and step 0 are different events; so are long messages differing at the end
    assert any_store.append_event(event("a", step=None), 3.0) is True
    assert any_store.append_event(event("a", step=0), 4.0) is True
    long = "x" * 9_999
    assert any_store.append_event(event("a", message=long + "1"), 5.0) is True
    assert any_store.append_event(event("a", message=long + "2"), 6.0) is True
    assert any_store.append_event(event("a", message=long + "2"), 7.0) is False
    events = any_store.read_events("a")
    assert [(e.step, e.received_at) for e in events] == [
        (3, 1.0),
        (None, 3.0),
        (0, 4.0),
        (None, 5.0),
        (None, 6.0),
    ]
    assert events[0].message == "something failed" and events[0].level == "error"
    assert events[-1].message == long + "2"
    assert len({e.id for e in events}) == 5
    for e in events:
        assert any_store.read_event("a", e.id) == e
    assert any_store.read_event("b", events[0].id) is None  # ids belong to their run
    assert any_store.read_event("a", max(e.id for e in events) + 1000) is None
    assert events[0].to_dict()["wall_time"] == 1_700_000_000.0


def test_step_range_and_downsampling_keep_the_latest(any_store: Store) -> None:
    for step in range(0, 100, 3):  # 0, 3, ..., 99
        any_store.append_snapshot(snap(step=step), 1.0)
    in_range = [r.step for r in any_store.read_snapshots("r", start=10, end=40)]
    assert in_range == list(range(12, 40, 3))
    assert [r.step for r in any_store.read_snapshots("r", start=12, end=12)] == [12]
    assert any_store.read_snapshots("r", start=13, end=14) == []
    assert any_store.read_snapshots("r", start=40, end=10) == []
    sampled = [r.step for r in any_store.read_snapshots("r", max_points=5)]
    assert len(sampled) == 5
    assert sampled[0] == 0 and sampled[-1] == 99
    assert sampled == [list(range(0, 100, 3))[i] for i in downsample_indices(34, 5)]
    assert [r.step for r in any_store.read_snapshots("r", max_points=1)] == [99]
    assert [r.step for r in any_store.read_snapshots("r", start=50, max_points=2)] == [51, 99]
    assert [r.step for r in any_store.read_snapshots("r", end=6, max_points=100)] == [0, 3, 6]
    assert any_store.read_snapshots("missing", max_points=3) == []


@pytest.mark.parametrize("n", [0, 1, 2, 7, 100, 101])
@pytest.mark.parametrize("m", [1, 2, 3, 10, 1000])
def test_downsample_indices(n: int, m: int) -> None:
    idx = downsample_indices(n, m)
    assert len(idx) == min(n, m)
    assert idx == sorted(set(idx))
    if n:
        assert idx[-1] == n - 1
        assert all(0 <= i < n for i in idx)


def test_delete_run(any_store: Store) -> None:
    any_store.append_snapshot(snap("a", 1, instance="one"), 1.0)
    any_store.append_snapshot(snap("b", 1), 1.0)
    any_store.append_event(event("a"), 1.0)
    assert any_store.delete_run("a") is True
    assert any_store.delete_run("a") is False
    assert any_store.delete_run("never") is False
    assert [r.run for r in any_store.list_runs()] == ["b"]
    assert any_store.read_snapshots("a") == [] and any_store.read_events("a") == []
    assert any_store.get_run("a") is None and any_store.list_steps("a") == []
    # the name is free again, for any instance
    assert any_store.append_snapshot(snap("a", 1, instance="two"), 2.0) is True
    assert any_store.get_run("a").snapshots == 1


def test_backend_is_stored_and_read_back(any_store: Store) -> None:
    any_store.append_snapshot(snap(step=1, config={"curvature": "exact", "backend": "func"}), 1.0)
    any_store.append_snapshot(snap(step=2, config={"curvature": "exact"}), 1.0)  # older probe
    any_store.append_snapshot(snap(step=3, config={}), 1.0)
    backends = [r.to_dict()["config"]["backend"] for r in any_store.read_snapshots("r")]
    assert backends == ["func", "backpack", "backpack"]


def test_iter_snapshots_pages_through_everything(any_store: Store) -> None:
    for step in range(7):
        any_store.append_snapshot(snap(step=step), 1.0)
    any_store.append_snapshot(snap(run="other", step=3), 1.0)
    paged = any_store.iter_snapshots("r", batch=3)  # type: ignore[call-arg]
    assert [r.step for r in paged] == list(range(7))
    records = list(any_store.iter_snapshots("r"))
    assert records == any_store.read_snapshots("r")
    assert list(any_store.iter_snapshots("missing")) == []


def test_list_steps(any_store: Store) -> None:
    for step in (30, 0, 10):
        any_store.append_snapshot(snap(step=step), 1.0)
    any_store.append_snapshot(snap(run="other", step=5), 1.0)
    assert any_store.list_steps("r") == [0, 10, 30]
    assert any_store.list_steps("missing") == []


def test_light_series_in_the_database_equals_the_generic_default(any_store: Store) -> None:
    """The backend's override (numbers extracted inside the database) returns what the
    base class's default (decode each snapshot) returns, and both match the messages."""
    for step in range(0, 300, 7):
        message = synthetic_snapshot("r", step, k=20, k_stats=5, groups=("a", "b"))
        any_store.append_snapshot(SnapshotMessage(**message), 1.0)
    # a snapshot without groups still has a point (its loss)
    no_groups = synthetic_snapshot("r", 1000, groups=())
    any_store.append_snapshot(SnapshotMessage(**no_groups), 1.0)
    steps = any_store.list_steps("r")
    assert len(steps) == 44
    for chosen in (steps, steps[::10], [steps[0], steps[-1]], [7, 8, 1000], [14, 7, 7], []):
        light = any_store.read_light_series("r", chosen, 4)
        generic = Store.read_light_series(any_store, "r", chosen, 4)
        assert light == generic
        assert [s["step"] for s in light] == sorted({s for s in chosen if s in steps})
    full = any_store.read_light_series("r", steps, 4)
    expected = synthetic_snapshot("r", 7, k=20, k_stats=5, groups=("a", "b"))
    assert full[1]["loss"] == expected["loss"]
    assert full[1]["groups"] == [
        {"name": g["name"], "eigvals": g["eigvals"][:4]} for g in expected["groups"]
    ]
    assert full[-1] == {"step": 1000, "loss": no_groups["loss"], "groups": []}
    (untruncated,) = any_store.read_light_series("r", [7], 100)
    assert untruncated["groups"][0]["eigvals"] == expected["groups"][0]["eigvals"]
    assert any_store.read_light_series("missing", [0, 1], 3) == []
    # only some groups' eigenvalues (the loss of every step all the same)
    for top in (4, 100):  # from the light column; from the payloads
        for wanted in ({"b"}, {"a", "b"}, {"nope"}, set()):
            only = any_store.read_light_series("r", steps, top, wanted)
            everything = any_store.read_light_series("r", steps, top)
            assert only == [
                {**s, "groups": [g for g in s["groups"] if g["name"] in wanted]} for s in everything
            ]
            assert only == Store.read_light_series(any_store, "r", steps, top, wanted)


def test_summaries_are_stored_at_ingest_and_read_by_step(any_store: Store) -> None:
    """``read_summaries`` returns, for the stored steps asked for (in step order, each once),
    the summary of each snapshot as it arrived, its groups in the model's order."""
    messages = {}
    for step in range(0, 300, 7):
        message = synthetic_snapshot("r", step, k=20, k_stats=5, groups=("z.head", "a.stem"))
        any_store.append_snapshot(SnapshotMessage(**message), 1.0)
        messages[step] = message
    hessian = make_group("h", k=3) | {"hessian_eigvals": [4.0, -0.5], "hessian_min": -0.5}
    messages[500] = make_snapshot("r", 500, groups=[hessian])
    messages[1000] = synthetic_snapshot("r", 1000, groups=())
    for step in (500, 1000):
        any_store.append_snapshot(SnapshotMessage(**messages[step]), 1.0)
    steps = any_store.list_steps("r")
    assert len(steps) == 45
    sampled = [steps[i] for i in downsample_indices(len(steps), 6)]
    for chosen in (steps, sampled, [steps[0], steps[-1]], [7, 8, 1000], [14, 7, 7], []):
        summaries = any_store.read_summaries("r", chosen)
        wanted = sorted({s for s in chosen if s in messages})
        assert [s["step"] for s in summaries] == wanted
        assert summaries == [snapshot_summary(messages[s]) for s in wanted]
    (at_7,) = any_store.read_summaries("r", [7])
    group = messages[7]["groups"][0]
    assert at_7["loss"] == messages[7]["loss"]
    assert [g["name"] for g in at_7["groups"]] == ["z.head", "a.stem"]
    assert at_7["groups"][0]["lam_max"] == max(group["eigvals"])
    assert at_7["groups"][0]["k"] == 20
    assert at_7["groups"][0]["trace"] == pytest.approx(sum(group["eigvals"]), rel=1e-12)
    assert at_7["groups"][0]["grad_norm_sq"] == group["grad_norm_sq"]
    assert at_7["groups"][0]["hessian_min"] is None
    (at_500, at_1000) = any_store.read_summaries("r", [500, 1000])
    assert at_500["groups"][0]["hessian_min"] == -0.5
    assert at_1000["groups"] == []
    assert any_store.read_summaries("missing", [0, 7]) == []


def test_summaries_follow_a_run_deleted_and_stored_again(any_store: Store) -> None:
    first = make_snapshot("r", 3, groups=[make_group("a", k=3)])
    any_store.append_snapshot(SnapshotMessage(**first), 1.0)
    assert any_store.read_summaries("r", [3])[0]["groups"][0]["k"] == 3
    assert any_store.delete_run("r") is True
    assert any_store.read_summaries("r", [3]) == []
    again = make_snapshot("r", 3, groups=[make_group("a", k=5), make_group("b", k=2)])
    any_store.append_snapshot(SnapshotMessage(**again), 2.0)
    (summary,) = any_store.read_summaries("r", [3])
    assert [(g["name"], g["k"]) for g in summary["groups"]] == [("a", 5), ("b", 2)]


def test_another_store_on_the_same_database_sees_the_writes(
    store_factory: Callable[[], Store],
) -> None:
    first, second = store_factory(), store_factory()
    assert first.append_snapshot(snap(step=1, instance="one"), 1.0) is True
    assert second.append_snapshot(snap(step=1, instance="one"), 2.0) is False
    with pytest.raises(RunTaken):
        second.append_snapshot(snap(step=2, instance="two"), 3.0)
    assert second.append_event(event(), 4.0) is True
    assert [r.step for r in second.read_snapshots("r")] == [1]
    assert first.read_events("r") == second.read_events("r")
    assert first.delete_run("r") is True
    assert second.get_run("r") is None


# -- retention ---------------------------------------------------------------------------


def test_prune_without_keep_every_drops_whole_old_runs(any_store: Store) -> None:
    for step in range(4):
        any_store.append_snapshot(snap("old", step), 10.0 + step)
    any_store.append_event(event("old"), 14.0)
    any_store.append_event(event("events-only"), 15.0)
    any_store.append_snapshot(snap("recent", 0), 10.0)
    any_store.append_snapshot(snap("recent", 1), 100.0)  # updated after the cut-off
    assert any_store.prune(older_than=50.0, keep_every=None) == 4
    assert [r.run for r in any_store.list_runs()] == ["recent"]
    assert any_store.get_run("old") is None and any_store.read_events("old") == []
    assert any_store.read_events("events-only") == []
    assert any_store.list_steps("recent") == [0, 1]  # a live run keeps its old steps
    assert any_store.prune(older_than=50.0, keep_every=None) == 0
    # the name is free again
    assert any_store.append_snapshot(snap("old", 0, instance="new"), 200.0) is True


def test_prune_with_keep_every_thins_old_steps(any_store: Store) -> None:
    for step in range(10):  # old: 0..9, then two recent steps
        any_store.append_snapshot(snap("r", step), 1.0)
    for step in (10, 11):
        any_store.append_snapshot(snap("r", step), 100.0)
    for step in (0, 5, 10, 15, 20):  # all old: the last one is kept although 4 % 3 != 0
        any_store.append_snapshot(snap("s", step), 2.0)
    any_store.append_snapshot(snap("t", 0), 100.0)
    any_store.append_event(event("s"), 3.0)

    assert any_store.prune(older_than=50.0, keep_every=3) == 6 + 2
    assert any_store.list_steps("r") == [0, 3, 6, 9, 10, 11]
    assert any_store.list_steps("s") == [0, 15, 20]
    assert any_store.list_steps("t") == [0]
    assert len(any_store.read_events("s")) == 1  # events and runs stay
    assert {r.run for r in any_store.list_runs()} == {"r", "s", "t"}
    assert any_store.get_run("r").snapshots == 6
    # pruning again thins again (indices of the steps stored now): [0, 3, 6, 9] -> [0, 9]
    # and [0, 15, 20] -> [0, 20]
    assert any_store.prune(older_than=50.0, keep_every=3) == 3
    assert any_store.list_steps("r") == [0, 9, 10, 11]
    assert any_store.list_steps("s") == [0, 20]
    assert any_store.prune(older_than=50.0, keep_every=1) == 0
    assert any_store.prune(older_than=0.5, keep_every=2) == 0  # nothing that old


@pytest.mark.parametrize("keep_every", [0, -1])
def test_prune_refuses_keep_every_below_one(any_store: Store, keep_every: int) -> None:
    any_store.append_snapshot(snap(step=0), 1.0)
    with pytest.raises(ValueError, match="keep_every"):
        any_store.prune(older_than=10.0, keep_every=keep_every)
    assert any_store.list_steps("r") == [0]


def test_light_column_reads_both_of_its_formats() -> None:
    """Eigenvalues in the ``light`` column are a JSON array as a string (parsed up to
    ``top`` only); the plain arrays a PostgreSQL store of schema 3 wrote read the same."""
    message = SnapshotMessage(**synthetic_snapshot("r", 3, k=70, k_stats=2, groups=("a", "b")))
    text = light_json(message)
    assert isinstance(json.loads(text)[1][0][1], str)
    old = json.dumps([message.loss, [[g.name, g.eigvals[:LIGHT_TOP]] for g in message.groups]])
    for top in (1, 8, LIGHT_TOP):
        expected = {
            "step": 3,
            "loss": message.loss,
            "groups": [{"name": g.name, "eigvals": g.eigvals[:top]} for g in message.groups],
        }
        assert light_from_json(3, text, top) == expected == light_from_json(3, old, top)
