"""REST API: runs, snapshots (range, down-sampling), events, export, delete, auth, bad input."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from websockets.sync.client import connect

from curvscope.server.routes.api import CSV_COLUMNS
from tests.helpers.legacy_store import write_schema_1_database
from tests.helpers.messages import make_event, make_group, make_snapshot
from tests.helpers.server_process import TEST_TOKEN as TOKEN
from tests.helpers.server_process import running_server

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def ingest(client: TestClient, *messages: dict, token: str | None = None) -> None:
    url = "/ws/ingest" + (f"?token={token}" if token else "")
    with client.websocket_connect(url) as ws:
        for message in messages:
            ws.send_json(message)
            assert ws.receive_json()["type"] == "ack"


def test_health(client: TestClient) -> None:
    body = client.get("/api/health").json()
    assert body["status"] == "ok" and body["schema_version"] == 1 and body["problem"] is None


def test_health_says_when_the_disk_is_nearly_full(client: TestClient) -> None:
    """Was: ``ok`` while nothing could be stored. The real store, with a free-space
    threshold above what any disk has, is in the state of a full disk."""
    client.app.state.store.MIN_FREE_BYTES = 2**62
    response = client.get("/api/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "error" and "MiB free on the disk" in body["problem"]


def test_health_says_when_the_database_is_gone(client: TestClient) -> None:
    client.app.state.store.close()
    response = client.get("/api/health")
    assert response.status_code == 503 and "cannot be used" in response.json()["problem"]


def test_runs_list_shape(client: TestClient) -> None:
    assert client.get("/api/runs").json() == []
    ingest(client, make_snapshot("a", 2), make_snapshot("a", 5), make_event("a"))
    (run,) = client.get("/api/runs").json()
    assert set(run) == {
        "run",
        "snapshots",
        "first_step",
        "last_step",
        "last_update",
        "live",
        "errors",
    }
    assert (run["run"], run["snapshots"], run["first_step"], run["last_step"]) == ("a", 2, 2, 5)
    assert run["live"] is True and run["errors"] == 1
    assert client.get("/api/runs/a").json() == run


def test_snapshot_shape_is_the_message_plus_received_at(client: TestClient) -> None:
    message = make_snapshot("a", 3) | {"groups": [make_group("layer.0", k=4, k_stats=2)]}
    ingest(client, message)
    (snap,) = client.get("/api/runs/a/snapshots").json()
    expected = {k: v for k, v in message.items() if k not in ("type", "schema_version")}
    received_at = snap.pop("received_at")
    assert isinstance(received_at, float)
    assert snap["groups"][0]["gamma"] == expected["groups"][0]["gamma"]
    assert set(snap) == set(expected) | {"user_step", "instance"}  # optional, absent: None
    assert snap["user_step"] is None
    assert snap["groups"][0]["gammas"] is None


def test_range_and_downsampling(client: TestClient) -> None:
    ingest(client, *(make_snapshot("a", s) for s in range(0, 50, 2)))
    steps = lambda q: [s["step"] for s in client.get(f"/api/runs/a/snapshots?{q}").json()]  # noqa: E731
    assert steps("start=10&end=20") == [10, 12, 14, 16, 18, 20]
    sampled = steps("max_points=4")
    assert len(sampled) == 4 and sampled[0] == 0 and sampled[-1] == 48
    assert steps("max_points=1") == [48]
    assert steps("start=45") == [46, 48]


@pytest.mark.parametrize(
    "query",
    [
        "start=-1",
        "end=x",
        "max_points=0",
        "max_points=100000",
        "start=9&end=3",
        f"start={10**30}",  # beyond a 64-bit integer: refused, not an overflow in the store
        f"end={2**63}",
    ],
)
def test_bad_queries_are_422(client: TestClient, query: str) -> None:
    ingest(client, make_snapshot("a", 1))
    response = client.get(f"/api/runs/a/snapshots?{query}")
    assert response.status_code == 422, response.text


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/runs/missing", 404),
        ("/api/runs/missing/snapshots", 404),
        ("/api/runs/missing/events", 404),
        ("/api/runs/missing/export", 404),
        ("/api/runs/..%2F..%2Fetc%2Fpasswd/snapshots", 404),  # no route has a slash in it
        ("/api/runs/..secret/snapshots", 422),
        ("/api/runs/a%20b", 422),
        ("/api/runs/" + "r" * 10_000, 422),
    ],
)
def test_unknown_or_invalid_runs(client: TestClient, path: str, status: int) -> None:
    assert client.get(path).status_code == status


def test_events_endpoint(client: TestClient) -> None:
    ingest(client, make_event("a", "first"), make_event("a", "second", level="warning"))
    events = client.get("/api/runs/a/events").json()
    assert [(e["message"], e["level"]) for e in events] == [
        ("first", "error"),
        ("second", "warning"),
    ]


def test_export_json(client: TestClient) -> None:
    ingest(client, make_snapshot("a", 1), make_snapshot("a", 2), make_event("a"))
    response = client.get("/api/runs/a/export?format=json")
    assert response.headers["content-disposition"] == 'attachment; filename="a.json"'
    body = response.json()
    assert body["run"]["snapshots"] == 2
    assert [s["step"] for s in body["snapshots"]] == [1, 2]
    assert len(body["events"]) == 1


def test_export_csv_has_one_row_per_direction(client: TestClient) -> None:
    groups = [make_group("g0", k=3, k_stats=2), make_group("g1", k=1)]
    ingest(client, make_snapshot("a", 1) | {"groups": groups})
    response = client.get("/api/runs/a/export?format=csv")
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["group"], r["direction"]) for r in rows] == [
        ("g0", "0"),
        ("g0", "1"),
        ("g0", "2"),
        ("g1", "0"),
    ]
    assert rows[2]["gamma"] == "" and rows[1]["gamma"] == "0.2"
    assert all(r["gradient_eigval"] == "" for r in rows)  # no noise spectrum computed
    assert client.get("/api/runs/a/export?format=xml").status_code == 422


def test_export_csv_carries_the_gradient_noise_spectrum(client: TestClient) -> None:
    """A second spectrum by the same index k: a longer one adds rows with empty GGN cells."""
    noise = {"gradient_eigvals": [5.0, 4.0, 3.0, 2.0], "gradient_moment_eigvals": [6.0, 1.0]}
    ingest(client, make_snapshot("n", 1) | {"groups": [make_group("g", k=3, k_stats=3) | noise]})
    rows = list(csv.DictReader(io.StringIO(client.get("/api/runs/n/export?format=csv").text)))
    assert [r["direction"] for r in rows] == ["0", "1", "2", "3"]
    assert [r["gradient_eigval"] for r in rows] == ["5.0", "4.0", "3.0", "2.0"]
    assert [r["gradient_moment_eigval"] for r in rows] == ["6.0", "1.0", "", ""]
    assert rows[3]["eigval"] == "" and rows[3]["gamma"] == "" and rows[2]["eigval"] != ""
    exported = client.get("/api/runs/n/export?format=json").json()
    assert exported["snapshots"][0]["groups"][0]["gradient_eigvals"] == [5.0, 4.0, 3.0, 2.0]


def test_backend_travels_through_rest_and_exports(db_path: Path) -> None:
    """The real server on a database from before ``config.backend`` (schema 1, one old
    snapshot at step 0): a snapshot sent with ``backend: "func"`` comes back as ``func``, one
    without the field (an older probe; one even without ``config``) and the migrated old one
    as ``backpack``, in the REST snapshots, the group facts of the figures, the CSV (one
    value per row) and the JSON export."""
    write_schema_1_database(db_path, [make_snapshot("mixed", 0)])
    func = make_snapshot("mixed", 1, config={"curvature": "mc", "backend": "func"})
    older = make_snapshot("mixed", 2)  # config without the field
    bare = make_snapshot("mixed", 3)
    del bare["config"]
    groups = [make_group("g0", k=2), make_group("g1", k=1)]
    expected = {0: "backpack", 1: "func", 2: "backpack", 3: "backpack"}
    with running_server(db_path) as server:
        with connect(server.ws_url("/ws/ingest")) as ws:
            for message in (func, older, bare):
                ws.send(json.dumps(message | {"groups": groups}))
                assert json.loads(ws.recv(timeout=10))["type"] == "ack"
        with httpx.Client(base_url=server.url(), timeout=10) as http:
            snaps = http.get("/api/runs/mixed/snapshots").json()
            assert {s["step"]: s["config"]["backend"] for s in snaps} == expected
            assert snaps[1]["config"]["curvature"] == "mc"

            for step, backend in expected.items():
                figs = http.get("/api/runs/mixed/figures/step", params={"step": step}).json()
                assert {g["backend"] for g in figs["groups"]} == {backend}, step
            latest = http.get("/api/runs/mixed/figures").json()
            assert [g["backend"] for g in latest["groups"]] == ["backpack"] * 2

            text = http.get("/api/runs/mixed/export", params={"format": "csv"}).text
            rows = list(csv.DictReader(io.StringIO(text)))
            assert tuple(rows[0]) == CSV_COLUMNS and CSV_COLUMNS[15] == "backend"  # appended
            old_rows = [r for r in rows if r["step"] == "0"]  # the old snapshot's one group
            assert [r["backend"] for r in old_rows] == ["backpack"] * 3
            new_rows = [(int(r["step"]), r["group"], r["backend"]) for r in rows[3:]]
            assert new_rows == [
                (step, group, expected[step]) for step in (1, 2, 3) for group in ("g0", "g0", "g1")
            ]

            body = http.get("/api/runs/mixed/export", params={"format": "json"}).json()
            assert {s["step"]: s["config"]["backend"] for s in body["snapshots"]} == expected


def test_delete_without_a_configured_token(client: TestClient) -> None:
    ingest(client, make_snapshot("a", 1), make_snapshot("b", 1))
    assert client.delete("/api/runs/a").status_code == 204
    assert client.delete("/api/runs/a").status_code == 404
    assert [r["run"] for r in client.get("/api/runs").json()] == ["b"]


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}]
)
def test_delete_needs_the_token(token_client: TestClient, headers: dict) -> None:
    ingest(token_client, make_snapshot("a", 1), token=TOKEN)
    response = token_client.delete("/api/runs/a", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert token_client.delete(f"/api/runs/a?token={TOKEN}").status_code == 401  # header only
    assert token_client.get("/api/runs/a").json()["snapshots"] == 1
    assert token_client.delete("/api/runs/a", headers=AUTH).status_code == 204


def test_reads_are_open_unless_protected(make_app: Callable[..., FastAPI]) -> None:
    with TestClient(make_app(token=TOKEN)) as client:
        assert client.get("/api/runs").status_code == 200
    with TestClient(make_app(token=TOKEN, protect_reads=True)) as client:
        assert client.get("/api/health").status_code == 200  # health never needs the token
        for path in ("/api/runs", "/api/runs/a/snapshots", "/api/runs/a/export"):
            assert client.get(path).status_code == 401, path
        assert client.get("/api/runs", headers=AUTH).status_code == 200


def test_openapi_schema_lists_the_endpoints(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/api/health",
        "/api/runs",
        "/api/runs/{run}",
        "/api/runs/{run}/snapshots",
        "/api/runs/{run}/events",
        "/api/runs/{run}/export",
    } <= set(paths)
    assert "delete" in paths["/api/runs/{run}"]


def test_export_csv_defuses_formulas_in_group_names(client: TestClient) -> None:
    """A group name a spreadsheet would run as a formula is exported as text."""
    evil = '=HYPERLINK("https://evil.example","click")'
    groups = [make_group(evil, k=1), make_group("-1+2", k=1), make_group("fc1", k=1)]
    ingest(client, make_snapshot("a", 1) | {"groups": groups})
    rows = list(csv.DictReader(io.StringIO(client.get("/api/runs/a/export?format=csv").text)))
    assert [r["group"] for r in rows] == ["'" + evil, "'-1+2", "fc1"]
