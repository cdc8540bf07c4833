"""``GET /api/runs/{run}/overview`` on a real SQLite store (the app in-process).

Expected cells come from the seeding formulas (tests/web/seeding.py), not from the server:
group ``g`` at step ``s`` has λ_max = 10^(2 - 0.002 s), K eigenvalues and SNR(γ_i) =
0.1 (i + 1) + 0.01 s for i < K'.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from curvscope.server.app import create_app
from curvscope.server.protocol import EventMessage
from curvscope.server.settings import Settings
from curvscope.server.stores import SQLiteStore
from tests.web.seeding import seed_run

K, K_STATS = 20, 7
GROUPS = ("stem.conv", "layer1.0.conv1", "layer1.0.bn1", "fc")  # model order, not sorted
STEPS = list(range(0, 300, 10))


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("overview-api") / "overview.sqlite"
    seed_run(path, "many", STEPS, k=K, k_stats=K_STATS, groups=GROUPS)
    # a group that appears late (a model that grew) and one that disappears
    seed_run(path, "grow", [0, 1], k=K, k_stats=K_STATS, groups=("old", "a"))
    seed_run(path, "grow", [2, 3], k=K, k_stats=K_STATS, groups=("b", "a"))
    seed_run(path, "markup", [0], k=K, k_stats=K_STATS, groups=("<b>x</b>", "a&b"))
    store = SQLiteStore(path)
    store.append_event(
        EventMessage(run="empty", wall_time=1.0, level="error", message="no snapshot"),
        time.time(),
    )
    store.close()
    return path


@pytest.fixture
def client(db: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(db=db, allowed_hosts=["testserver"]))) as test_client:
        yield test_client


def test_lam_max_heatmap_has_a_cell_per_group_and_step(client: TestClient) -> None:
    data = client.get("/api/runs/many/overview", params={"max_points": 1000}).json()
    assert data["quantity"] == "lam_max"
    assert data["group_names"] == list(GROUPS)
    assert data["steps"] == STEPS and data["downsampled"] is False
    (trace,) = data["figure"]["data"]
    assert trace["type"] == "heatmap"
    assert trace["x"] == STEPS and trace["y"] == list(GROUPS)
    assert len(trace["z"]) == len(GROUPS) and {len(row) for row in trace["z"]} == {len(STEPS)}
    for row, values in zip(trace["z"], trace["customdata"], strict=True):
        for step, z, value in zip(STEPS, row, values, strict=True):
            assert z == pytest.approx(2.0 - 0.002 * step, abs=1e-5)  # log10 colours
            assert value == pytest.approx(10 ** (2.0 - 0.002 * step), rel=1e-5)
    assert data["figure"]["layout"]["yaxis"]["autorange"] == "reversed"  # first group on top
    assert "group %{y}" in trace["hovertemplate"] and "step %{x}" in trace["hovertemplate"]
    assert [q["key"] for q in data["quantities"]][:2] == ["lam_max", "trace"]


def test_other_quantities(client: TestClient) -> None:
    k = client.get("/api/runs/many/overview", params={"quantity": "k"}).json()
    assert {v for row in k["figure"]["data"][0]["z"] for v in row} == {K}
    snr = client.get("/api/runs/many/overview", params={"quantity": "median_snr_gamma"}).json()
    trace = snr["figure"]["data"][0]
    for j, step in enumerate(STEPS):
        median = statistics.median(0.1 * (i + 1) + 0.01 * step for i in range(K_STATS))
        assert trace["customdata"][0][j] == pytest.approx(median, rel=1e-5)
    overlap = client.get("/api/runs/many/overview", params={"quantity": "overlap_top"}).json()
    shares = [v for row in overlap["figure"]["data"][0]["z"] for v in row]
    assert all(0.0 < v < 1.0 for v in shares)  # a share of ‖g‖², linear colours
    rank = client.get("/api/runs/many/overview", params={"quantity": "effective_rank"}).json()
    assert all(1.0 <= v <= K for row in rank["figure"]["data"][0]["z"] for v in row)


def test_downsampling_keeps_first_and_latest(client: TestClient) -> None:
    data = client.get("/api/runs/many/overview", params={"max_points": 7}).json()
    assert data["downsampled"] is True
    assert len(data["steps"]) == 7 and data["steps"][0] == 0 and data["steps"][-1] == STEPS[-1]
    assert data["figure"]["data"][0]["x"] == data["steps"]


def test_groups_in_model_order_with_gaps(client: TestClient) -> None:
    data = client.get("/api/runs/grow/overview").json()
    assert data["group_names"] == ["b", "a", "old"]  # the latest snapshot's order first
    z = data["figure"]["data"][0]["z"]
    assert z[0][:2] == [None, None] and None not in z[0][2:]  # "b" only from step 2
    assert None not in z[1]
    assert z[2][2:] == [None, None]


def test_group_names_are_shown_as_literal_text(client: TestClient) -> None:
    """Names come from the probe: Plotly would read ``<b>`` or ``<a href>`` as markup."""
    data = client.get("/api/runs/markup/overview").json()
    assert data["group_names"] == ["<b>x</b>", "a&b"]
    assert data["figure"]["data"][0]["y"] == ["&lt;b&gt;x&lt;/b&gt;", "a&amp;b"]


def test_missing_runs_bad_quantities_and_limits(client: TestClient) -> None:
    assert client.get("/api/runs/nope/overview").status_code == 404
    assert client.get("/api/runs/many/overview", params={"quantity": "x"}).status_code == 422
    too_many = client.get("/api/runs/many/overview", params={"max_points": 10**6})
    assert too_many.status_code == 422
    empty = client.get("/api/runs/empty/overview").json()
    assert empty["group_names"] == [] and empty["steps"] == []


def test_overview_needs_the_token_when_reads_are_protected(db: Path) -> None:
    settings = Settings(db=db, token="t0ken", protect_reads=True, allowed_hosts=["testserver"])
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/runs/many/overview").status_code == 401
        ok = client.get("/api/runs/many/overview", headers={"Authorization": "Bearer t0ken"})
        assert ok.status_code == 200 and ok.json()["group_names"] == list(GROUPS)
