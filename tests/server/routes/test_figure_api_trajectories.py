"""``/api/runs/{run}/figures``: trajectory smoothing (``smooth``, ``window``) and the
stability threshold read from the stored snapshots' optimizer (SQLite's light series)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from curvscope.server.app import create_app
from curvscope.server.protocol import SnapshotMessage
from curvscope.server.settings import Settings
from curvscope.server.stores import SQLiteStore
from tests.web.seeding import synthetic_snapshot

STEPS = list(range(0, 100, 10))


def _lr(step: int) -> float:
    return 0.1 if step < 50 else 0.02


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("figure-api-trajectories") / "t.sqlite"
    store = SQLiteStore(path)
    for step in STEPS:
        sgd = synthetic_snapshot("sgd", step, k=10, k_stats=4)
        sgd["optimizer"] = {"name": "SGD", "lr": _lr(step), "momentum": 0.5}
        adam = synthetic_snapshot("adam", step, k=10, k_stats=4)
        adam["optimizer"] = {"name": "Adam", "lr": 1e-3, "adaptive": True}
        for message in (sgd, adam):
            store.append_snapshot(SnapshotMessage(**message), time.time())
    store.close()
    return path


@pytest.fixture
def client(db: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(db=db, allowed_hosts=["testserver"]))) as test_client:
        yield test_client


def _eigvals(client: TestClient, run: str, **params: object) -> dict:
    response = client.get(f"/api/runs/{run}/figures", params=params)
    assert response.status_code == 200, response.text
    return response.json()["groups"][0]["figures"]["eigvals"]


def test_the_threshold_comes_from_the_stored_optimizer(client: TestClient) -> None:
    fig = _eigvals(client, "sgd")
    (line,) = [t for t in fig["data"] if t["name"] == "2(1+β)/η"]
    assert line["x"] == STEPS
    assert line["y"] == pytest.approx([2 * 1.5 / _lr(s) for s in STEPS])
    adam = _eigvals(client, "adam")
    assert "not applicable: adaptive optimizer Adam" in adam["layout"]["annotations"][0]["text"]


def test_smoothing_is_a_query_parameter(client: TestClient) -> None:
    raw = _eigvals(client, "sgd")
    assert [t["name"] for t in raw["data"]][:8] == [f"λ_{k}" for k in range(1, 9)]
    smoothed = _eigvals(client, "sgd", smooth="median", window=3)
    names = [t["name"] for t in smoothed["data"]]
    assert names[:8] == [f"λ_{k} 10–90 %" for k in range(1, 9)]
    assert names[16:] == [f"λ_{k}" for k in range(1, 9)] + ["2(1+β)/η"]
    assert "(moving median of 3)" in smoothed["layout"]["title"]["text"]
    ema = _eigvals(client, "sgd", smooth="ema", window=7)
    assert "(EMA over 7)" in ema["layout"]["title"]["text"]
    for bad in ({"smooth": "mean"}, {"smooth": "ema", "window": 1}, {"window": 1000}):
        assert client.get("/api/runs/sgd/figures", params=bad).status_code == 422
