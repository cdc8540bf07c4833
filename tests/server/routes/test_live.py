"""Browser websockets: /ws/runs/{run} and /ws/runs, Origin check, read protection."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from curvscope.server.protocol import CLOSE_FORBIDDEN_ORIGIN, CLOSE_UNAUTHORIZED
from curvscope.server.routes.live import CLOSE_INVALID_RUN
from tests.helpers.messages import make_event, make_snapshot
from tests.helpers.server_process import TEST_TOKEN as TOKEN


def close_code(client: TestClient, path: str, headers: dict[str, str] | None = None) -> int:
    """Connect, expect the server to close before sending anything; return the close code."""
    with (
        client.websocket_connect(path, headers=dict(headers or {})) as ws,
        pytest.raises(WebSocketDisconnect) as closed,
    ):
        ws.receive_json()
    return closed.value.code


def test_run_subscriber_gets_new_snapshots_and_events(client: TestClient) -> None:
    with client.websocket_connect("/ws/runs/a") as browser:
        assert browser.receive_json() == {"type": "subscribed", "run": "a", "worker": os.getpid()}
        with client.websocket_connect("/ws/ingest") as probe:
            probe.send_json(make_snapshot("b", 1))  # another run: not forwarded
            probe.receive_json()
            probe.send_json(make_snapshot("a", 1))
            probe.receive_json()
            probe.send_json(make_snapshot("a", 1))  # duplicate: not forwarded again
            probe.receive_json()
            probe.send_json(make_event("a", "oops"))
            probe.receive_json()
        update = browser.receive_json()
        assert (update["type"], update["run"]) == ("snapshot", "a")
        rest = client.get("/api/runs/a/snapshots").json()[0]
        assert update["snapshot"] == rest  # the same shape as the REST API
        event = browser.receive_json()
        assert (event["type"], event["run"], event["event"]["message"]) == ("event", "a", "oops")


def test_run_list_subscriber_gets_the_list_then_updates(client: TestClient) -> None:
    with client.websocket_connect("/ws/ingest") as probe:
        probe.send_json(make_snapshot("old", 1))
        probe.receive_json()
        with client.websocket_connect("/ws/runs") as browser:
            first = browser.receive_json()
            assert first["type"] == "runs"
            assert [r["run"] for r in first["runs"]] == ["old"]
            probe.send_json(make_snapshot("new", 4))
            probe.receive_json()
            update = browser.receive_json()
            assert update["type"] == "run_update"
            assert (update["summary"]["run"], update["summary"]["last_step"]) == ("new", 4)
            assert client.delete("/api/runs/old").status_code == 204
            assert browser.receive_json() == {"type": "run_deleted", "run": "old"}


@pytest.mark.parametrize("path", ["/ws/runs", "/ws/runs/a"])
def test_foreign_origin_is_refused(client: TestClient, path: str) -> None:
    code = close_code(client, path, {"Origin": "https://evil.example"})
    assert code == CLOSE_FORBIDDEN_ORIGIN


@pytest.mark.parametrize(
    "origin", ["http://testserver", "http://testserver:80", "http://dash.example:9000"]
)
def test_same_or_allowed_origin_is_accepted(make_app: Callable[..., FastAPI], origin: str) -> None:
    app = make_app(allowed_origins=["http://dash.example:9000"])
    with (
        TestClient(app) as client,
        client.websocket_connect("/ws/runs/a", headers={"Origin": origin}) as ws,
    ):
        assert ws.receive_json()["type"] == "subscribed"


def test_invalid_run_name_is_refused(client: TestClient) -> None:
    assert close_code(client, "/ws/runs/..x") == CLOSE_INVALID_RUN


def test_protected_reads_need_the_token(make_app: Callable[..., FastAPI]) -> None:
    with TestClient(make_app(token=TOKEN, protect_reads=True)) as client:
        assert close_code(client, "/ws/runs") == CLOSE_UNAUTHORIZED
        with client.websocket_connect(f"/ws/runs?token={TOKEN}") as ws:
            assert ws.receive_json()["type"] == "runs"
