"""Figure endpoints on a real SQLite store (the app in-process, through the test client)."""

from __future__ import annotations

import math
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

K, K_STATS = 30, 12
# seeding.synthetic_group: every third SNR(λ) is the sentinel, every fifth γ is zero
SNR_LAMBDA_SHOWN = K_STATS - len(range(0, K_STATS, 3))
GAMMA_SHOWN = K_STATS - len(range(4, K_STATS, 5))


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("figure-api") / "figures.sqlite"
    seed_run(path, "alpha", range(0, 500, 10), k=K, k_stats=K_STATS, groups=("l1", "l2"))
    seed_run(path, "beta", range(0, 50, 10), k=K, k_stats=K_STATS, groups=("l1", "l2"))
    store = SQLiteStore(path)
    store.append_event(
        EventMessage(run="empty", wall_time=1.0, level="error", message="probe crashed: OOM"),
        time.time(),
    )
    store.close()
    return path


@pytest.fixture
def client(db: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(db=db, allowed_hosts=["testserver"]))) as test_client:
        yield test_client


def _points(fig: dict) -> list[int]:
    return [len(trace.get("x", ())) for trace in fig["data"]]


def test_run_figures_at_the_latest_step(client: TestClient) -> None:
    data = client.get("/api/runs/alpha/figures", params={"max_points": 1000}).json()
    assert data["step"] == 490 and data["steps"] == list(range(0, 500, 10))
    assert not data["downsampled"] and data["series_points"] == 50
    assert [g["name"] for g in data["groups"]] == ["l1", "l2"]
    assert _points(data["loss"]) == [50]
    for group in data["groups"]:
        figs = group["figures"]
        assert (group["k"], group["k_stats"]) == (K, K_STATS)
        x, y = figs["density"]["data"][0]["x"], figs["density"]["data"][0]["y"]
        widths = [math.log10(x[i + 1]) - math.log10(x[i]) for i in range(len(x) - 1)]
        assert sum(h * w for h, w in zip(y, widths, strict=False)) == pytest.approx(
            1.0
        )  # per decade
        assert _points(figs["snr"]) == [SNR_LAMBDA_SHOWN, K_STATS, 2]
        assert _points(figs["gamma"]) == [GAMMA_SHOWN]
        assert _points(figs["eigvals"]) == [50] * 8
        assert len(figs["overlap"]["data"]) == 2
        assert figs["density"]["layout"]["uirevision"] == f"alpha:{group['name']}:density:density"


def test_step_and_count_mode_and_overlay(client: TestClient) -> None:
    data = client.get(
        "/api/runs/alpha/figures",
        params={"step": 100, "mode": "count", "overlay": "both", "max_points": 1000},
    ).json()
    assert data["step"] == 100
    density = data["groups"][0]["figures"]["density"]["data"][:3]  # then their KDEs
    assert [t["name"] for t in density] == [
        f"step 100 (K={K})",
        f"first (step 0) (K={K})",
        f"latest (step 490) (K={K})",
    ]
    assert [sum(t["y"][:-1]) for t in density] == [K, K, K]


def test_downsampling_keeps_first_and_latest(client: TestClient) -> None:
    data = client.get("/api/runs/alpha/figures", params={"max_points": 7}).json()
    assert data["downsampled"] and data["series_points"] == 7 and data["step"] == 490
    loss_steps = data["loss"]["data"][0]["x"]
    assert len(loss_steps) == 7 and loss_steps[0] == 0 and loss_steps[-1] == 490
    # the slider covers every snapshot, not only the down-sampled ones
    assert data["steps"] == list(range(0, 500, 10))
    # a step outside the sample is still served
    data = client.get("/api/runs/alpha/figures", params={"max_points": 7, "step": 30}).json()
    assert data["step"] == 30 and data["steps"] == list(range(0, 500, 10))


def test_step_endpoint_changes_with_the_step(client: TestClient) -> None:
    a = client.get("/api/runs/alpha/figures/step", params={"step": 0}).json()
    b = client.get("/api/runs/alpha/figures/step", params={"step": 490}).json()
    assert (a["step"], b["step"]) == (0, 490)
    assert set(a["groups"][0]["figures"]) == {"density", "snr", "gamma", "overlap"}
    # the eigenvalues shift with the step (seeding), so the bins' heights move
    assert (
        a["groups"][0]["figures"]["density"]["data"][0]["y"]
        != (b["groups"][0]["figures"]["density"]["data"][0]["y"])
    )
    # both use bins covering first and latest: identical edges
    assert (
        a["groups"][0]["figures"]["density"]["data"][0]["x"]
        == b["groups"][0]["figures"]["density"]["data"][0]["x"]
    )


def test_missing_things_are_404_and_limits_422(client: TestClient) -> None:
    assert client.get("/api/runs/nope/figures").status_code == 404
    assert client.get("/api/runs/alpha/figures", params={"step": 11}).status_code == 404
    assert client.get("/api/runs/alpha/figures/step", params={"step": 11}).status_code == 404
    assert client.get("/api/runs/alpha/figures", params={"max_points": 10**6}).status_code == 422
    assert client.get("/api/runs/alpha/figures", params={"mode": "log"}).status_code == 422
    for path in ("/api/runs/alpha/figures", "/api/runs/alpha/figures/step"):
        assert client.get(path, params={"step": 10**30}).status_code == 422  # not a 500
    assert client.get("/api/compare/figures", params={"runs": "alpha,nope"}).status_code == 404
    assert client.get("/api/compare/figures", params={"runs": "a b"}).status_code == 422


def test_run_with_only_an_error_event(client: TestClient) -> None:
    data = client.get("/api/runs/empty/figures").json()
    assert data["groups"] == [] and data["step"] is None and data["run"]["snapshots"] == 0
    assert [e["message"] for e in data["events"]] == ["probe crashed: OOM"]
    assert data["loss"]["layout"]["annotations"][0]["text"] == "no snapshots yet"
    assert client.get("/api/runs/empty/figures/step").json()["groups"] == []


def test_compare_overlays_runs(client: TestClient) -> None:
    data = client.get("/api/compare/figures", params={"runs": "alpha,beta", "mode": "count"}).json()
    assert data["runs"] == ["alpha", "beta"] and data["group"] == "l1"
    assert data["groups"] == ["l1", "l2"]
    figs = data["figures"]
    assert [sum(t["y"][:-1]) for t in figs["density"]["data"][:2]] == [K, K]  # then KDEs
    assert _points(figs["loss"]) == [50, 5]
    assert len(figs["eigvals"]["data"]) == 6  # top-3 per run
    other = client.get(
        "/api/compare/figures", params=[("runs", "alpha"), ("runs", "beta"), ("group", "l2")]
    ).json()
    assert other["group"] == "l2"


def test_pages_and_plotly_are_served(client: TestClient) -> None:
    for path in ("/", "/runs/alpha", "/compare"):
        page = client.get(path)
        assert (
            page.status_code == 200 and '<script type="module" src="/static/main.js">' in page.text
        )
    js = client.get("/static/vendor/plotly.min.js")
    assert js.status_code == 200 and "plotly" in js.text[:2000].lower()
    for name in ("main.js", "views.js", "api.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200


def test_figures_need_the_token_when_reads_are_protected(db: Path) -> None:
    settings = Settings(db=db, token="t0ken", protect_reads=True, allowed_hosts=["testserver"])
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/runs/alpha/figures").status_code == 401
        ok = client.get("/api/runs/alpha/figures", headers={"Authorization": "Bearer t0ken"})
        assert ok.status_code == 200
