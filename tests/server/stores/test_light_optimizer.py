"""The light series (what the plots over steps read) carries each snapshot's optimizer
state where it has one, on every backend as in the contract's Python default."""

from __future__ import annotations

from curvscope.server.protocol import SnapshotMessage
from curvscope.server.stores import Store
from tests.web.seeding import synthetic_snapshot


def test_light_series_carries_the_optimizer_where_the_snapshot_has_one(any_store: Store) -> None:
    rates = {0: 0.4, 10: 0.2, 30: 0.1}  # step 20 without an optimizer (an older probe)
    for step in (0, 10, 20, 30):
        message = synthetic_snapshot("r", step, k=6, k_stats=3, groups=("a", "b"))
        if step in rates:
            message["optimizer"] = {"name": "SGD", "lr": rates[step], "momentum": 0.9}
        any_store.append_snapshot(SnapshotMessage(**message), 1.0)
    no_groups = synthetic_snapshot("r", 40, groups=()) | {
        "optimizer": {"name": "Adam", "lr": 1e-3, "adaptive": True}
    }
    any_store.append_snapshot(SnapshotMessage(**no_groups), 1.0)
    steps = [0, 10, 20, 30, 40]
    for top in (2, 100):  # PostgreSQL: its light column, and the payloads' JSON
        light = any_store.read_light_series("r", steps, top)
        assert light == Store.read_light_series(any_store, "r", steps, top)
        assert [s.get("optimizer", {}).get("lr") for s in light] == [0.4, 0.2, None, 0.1, 1e-3]
        assert "optimizer" not in light[2]
        assert light[0]["optimizer"] == {
            "name": "SGD",
            "lr": 0.4,
            "momentum": 0.9,
            "dampening": 0.0,
            "nesterov": False,
            "adaptive": False,
        }
        assert light[-1]["optimizer"]["adaptive"] and light[-1]["groups"] == []
        assert [g["name"] for g in light[1]["groups"]] == ["a", "b"]
