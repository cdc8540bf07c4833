"""/ws/ingest: validate -> store -> ack; duplicates; events; the bad-input table."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from curvscope.server.protocol import (
    CLOSE_FORBIDDEN_ORIGIN,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_UNAUTHORIZED,
    CLOSE_UNSUPPORTED_DATA,
    CLOSE_UNSUPPORTED_SCHEMA,
)
from curvscope.server.routes import ingest
from tests.helpers.messages import make_event, make_group, make_snapshot
from tests.helpers.server_process import TEST_TOKEN as TOKEN

LIMIT = 16384


def test_snapshot_is_stored_then_acked(client: TestClient) -> None:
    with client.websocket_connect("/ws/ingest") as ws:
        ws.send_json(make_snapshot("a", 7))
        assert ws.receive_json() == {
            "type": "ack",
            "kind": "snapshot",
            "run": "a",
            "step": 7,
            "duplicate": False,
        }
    (snap,) = client.get("/api/runs/a/snapshots").json()
    assert snap["step"] == 7 and "received_at" in snap


def test_duplicate_is_acked_again_and_stored_once(client: TestClient) -> None:
    with client.websocket_connect("/ws/ingest") as ws:
        ws.send_json(make_snapshot("a", 1) | {"loss": 0.5})
        assert ws.receive_json()["duplicate"] is False
        ws.send_json(make_snapshot("a", 1) | {"loss": 0.5})  # a resend
        assert ws.receive_json()["duplicate"] is True
    snaps = client.get("/api/runs/a/snapshots").json()
    assert [(s["step"], s["loss"]) for s in snaps] == [(1, 0.5)]


def test_same_key_with_other_numbers_is_a_conflict_not_an_ack(client: TestClient) -> None:
    """Another snapshot under a stored key is refused with its own code; the connection
    goes on and the stored snapshot is kept (was: acknowledged as a duplicate, dropped)."""
    with client.websocket_connect("/ws/ingest") as ws:
        ws.send_json(make_snapshot("a", 1) | {"loss": 0.5})
        assert ws.receive_json()["duplicate"] is False
        ws.send_json(make_snapshot("a", 1) | {"loss": 0.9})
        error = ws.receive_json()
        assert (error["type"], error["code"]) == ("error", ingest.ERROR_STEP_CONFLICT)
        assert (error["run"], error["step"]) == ("a", 1)
        assert "different snapshot at step 1" in error["message"]
        ws.send_json(make_snapshot("a", 2))
        assert ws.receive_json()["type"] == "ack"
    snaps = client.get("/api/runs/a/snapshots").json()
    assert [(s["step"], s["loss"]) for s in snaps] == [(1, 0.5), (2, make_snapshot("a", 2)["loss"])]


def test_a_run_belongs_to_one_probe_instance_unless_resumed(client: TestClient) -> None:
    """A second probe instance streaming into an existing run is refused by name; with
    ``resume`` it continues the run and owns it from then on."""
    first, second = "a" * 32, "b" * 32
    with client.websocket_connect("/ws/ingest") as ws:
        ws.send_json(make_snapshot("shared", 0) | {"instance": first})
        assert ws.receive_json()["type"] == "ack"
        ws.send_json(make_snapshot("shared", 1) | {"instance": second})
        error = ws.receive_json()
        assert error["code"] == ingest.ERROR_RUN_TAKEN
        assert "resume=True" in error["message"] and first in error["message"]
        ws.send_json(make_event("shared", "hello", instance=second))
        assert ws.receive_json()["code"] == ingest.ERROR_RUN_TAKEN
        ws.send_json(make_snapshot("shared", 1) | {"instance": second, "resume": True})
        assert ws.receive_json()["type"] == "ack"
        ws.send_json(make_snapshot("shared", 2) | {"instance": first})  # the old owner
        assert ws.receive_json()["code"] == ingest.ERROR_RUN_TAKEN
        ws.send_json(make_snapshot("shared", 2))  # no instance: claims nothing
        assert ws.receive_json()["type"] == "ack"
    snaps = client.get("/api/runs/shared/snapshots").json()
    assert [(s["step"], s["instance"]) for s in snaps] == [(0, first), (1, second), (2, None)]
    assert all("resume" not in s for s in snaps)


def test_events_are_stored_and_acked(client: TestClient) -> None:
    with client.websocket_connect("/ws/ingest") as ws:
        ws.send_json(make_event("a", "probe crashed", step=4))
        ack = ws.receive_json()
        assert (ack["type"], ack["kind"], ack["duplicate"]) == ("ack", "event", False)
        ws.send_json(make_event("a", "probe crashed", step=4))
        assert ws.receive_json()["duplicate"] is True
    (event,) = client.get("/api/runs/a/events").json()
    assert (event["message"], event["level"], event["step"]) == ("probe crashed", "error", 4)
    assert client.get("/api/runs/a").json()["errors"] == 1


def test_top_k_statistics_shorter_than_the_spectrum_are_accepted(client: TestClient) -> None:
    group = make_group(k=5, k_stats=2) | {"gammas": [[0.1, 0.2]] * 3}
    with client.websocket_connect("/ws/ingest") as ws:
        ws.send_json(make_snapshot("a", 0, groups=[group]))
        assert ws.receive_json()["type"] == "ack"


def _snap_text(**overrides: Any) -> str:
    return json.dumps(make_snapshot("bad", 5) | overrides)


def _without(field: str) -> str:
    message = make_snapshot("bad", 5)
    del message[field]
    return json.dumps(message)


def _group(**overrides: Any) -> str:
    return _snap_text(groups=[make_group() | overrides])


@dataclass(frozen=True)
class Case:
    name: str
    frame: str | bytes
    code: str
    close: int | None  # None: the connection continues


BAD_INPUTS = [
    Case("malformed json", '{"type": "snapshot", ', ingest.ERROR_MALFORMED_JSON, None),
    Case("empty frame", "", ingest.ERROR_MALFORMED_JSON, None),
    Case("not an object", "[1, 2, 3]", ingest.ERROR_NOT_AN_OBJECT, None),
    Case("unknown type", '{"type": "hello"}', ingest.ERROR_UNKNOWN_TYPE, None),
    Case("no type", json.dumps({"run": "a", "step": 1}), ingest.ERROR_UNKNOWN_TYPE, None),
    Case("missing field", _without("loss"), ingest.ERROR_MISSING_FIELD, None),
    Case("missing groups", _without("groups"), ingest.ERROR_MISSING_FIELD, None),
    Case("extra field", _snap_text(color="red"), ingest.ERROR_INVALID_MESSAGE, None),
    Case("negative step", _snap_text(step=-1), ingest.ERROR_INVALID_MESSAGE, None),
    Case("string loss", _snap_text(loss="low"), ingest.ERROR_INVALID_MESSAGE, None),
    Case(
        "unknown backend",
        _snap_text(config={"backend": "jax"}),
        ingest.ERROR_INVALID_MESSAGE,
        None,
    ),
    Case("stats longer than K", _group(gamma=[1.0] * 4), ingest.ERROR_SHAPE_MISMATCH, None),
    Case("stats lengths differ", _group(snr_gamma=[1.0]), ingest.ERROR_SHAPE_MISMATCH, None),
    Case("bad per-sample row", _group(gammas=[[1.0]]), ingest.ERROR_SHAPE_MISMATCH, None),
    Case("NaN loss", _snap_text(loss=float("nan")), ingest.ERROR_NON_FINITE, None),
    Case("inf eigval", _group(eigvals=[float("inf"), 1, 0.5]), ingest.ERROR_NON_FINITE, None),
    Case(
        "overflowing literal",  # json.loads turns 1e999 into inf
        _snap_text(loss=0.25).replace('"loss": 0.25', '"loss": 1e999'),
        ingest.ERROR_NON_FINITE,
        None,
    ),
    Case("run with slash", _snap_text(run="a/b"), ingest.ERROR_INVALID_RUN_NAME, None),
    Case("run with dots", _snap_text(run="../etc/passwd"), ingest.ERROR_INVALID_RUN_NAME, None),
    Case("run 10,000 chars", _snap_text(run="r" * 10_000), ingest.ERROR_INVALID_RUN_NAME, None),
    Case("empty run", _snap_text(run=""), ingest.ERROR_INVALID_RUN_NAME, None),
    Case("schema version 2", _snap_text(schema_version=2), ingest.ERROR_UNSUPPORTED_SCHEMA, 4426),
    Case("oversized frame", _snap_text(pad="x" * LIMIT), ingest.ERROR_MESSAGE_TOO_BIG, 1009),
    Case("binary frame", b'{"type": "snapshot"}', ingest.ERROR_BINARY_FRAME, 1003),
]


def test_close_codes_are_the_named_constants() -> None:
    assert ingest.BAD_INPUT[ingest.ERROR_UNSUPPORTED_SCHEMA] == CLOSE_UNSUPPORTED_SCHEMA == 4426
    assert ingest.BAD_INPUT[ingest.ERROR_MESSAGE_TOO_BIG] == CLOSE_MESSAGE_TOO_BIG == 1009
    assert ingest.BAD_INPUT[ingest.ERROR_BINARY_FRAME] == CLOSE_UNSUPPORTED_DATA == 1003


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda c: c.name)
def test_bad_input_gets_a_clear_answer_and_loses_nothing(
    make_app: Callable[..., FastAPI], case: Case
) -> None:
    frame, code = case.frame, case.code
    with TestClient(make_app(max_message_bytes=LIMIT)) as client:
        with client.websocket_connect("/ws/ingest") as ws:
            ws.send_json(make_snapshot("good", 1))
            assert ws.receive_json()["type"] == "ack"
            if isinstance(frame, bytes):
                ws.send_bytes(frame)
            else:
                ws.send_text(frame)
            error = ws.receive_json()
            assert error["type"] == "error"
            assert error["code"] == code, error
            assert error["message"]
            if case.close is None:
                ws.send_json(make_snapshot("good", 2))  # the connection continues
                assert ws.receive_json()["step"] == 2
            else:
                with pytest.raises(WebSocketDisconnect) as closed:
                    ws.receive_json()
                assert closed.value.code == case.close
        # The server is still up, the good data is intact, nothing bad was stored.
        assert client.get("/api/health").status_code == 200
        runs = {r["run"]: r["snapshots"] for r in client.get("/api/runs").json()}
        assert runs == {"good": 1 if case.close else 2}
        assert client.get("/api/runs/good/snapshots").json()[0]["step"] == 1


def test_error_echoes_the_key_when_it_can(client: TestClient) -> None:
    with client.websocket_connect("/ws/ingest") as ws:
        ws.send_text(json.dumps(make_snapshot("a", 3) | {"loss": "x"}))
        error = ws.receive_json()
    assert (error["run"], error["step"]) == ("a", 3)


def test_long_run_name_is_not_echoed_in_full(client: TestClient) -> None:
    with client.websocket_connect("/ws/ingest") as ws:
        ws.send_text(_snap_text(run="r" * 10_000))
        error = ws.receive_json()
    assert len(error["run"]) < 200


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        ("/ws/ingest", {}),
        ("/ws/ingest?token=wrong", {}),
        ("/ws/ingest", {"Authorization": "Bearer wrong"}),
        ("/ws/ingest", {"Authorization": f"Basic {TOKEN}"}),
    ],
)
def test_ingest_needs_the_token(token_client: TestClient, url: str, headers: dict) -> None:
    with token_client.websocket_connect(url, headers=headers) as ws:
        error = ws.receive_json()
        assert error["code"] == ingest.ERROR_UNAUTHORIZED
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == CLOSE_UNAUTHORIZED
    assert TOKEN not in error["message"]
    assert token_client.get("/api/runs").json() == []


@pytest.mark.parametrize(
    ("url", "headers"),
    [(f"/ws/ingest?token={TOKEN}", {}), ("/ws/ingest", {"Authorization": f"Bearer {TOKEN}"})],
)
def test_ingest_with_the_token(token_client: TestClient, url: str, headers: dict) -> None:
    with token_client.websocket_connect(url, headers=headers) as ws:
        ws.send_json(make_snapshot("a", 1))
        assert ws.receive_json()["type"] == "ack"


def test_ingest_refuses_a_foreign_origin(client: TestClient) -> None:
    with client.websocket_connect("/ws/ingest", headers={"Origin": "https://evil.example"}) as ws:
        assert ws.receive_json()["code"] == ingest.ERROR_FORBIDDEN_ORIGIN
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == CLOSE_FORBIDDEN_ORIGIN


def test_an_integer_of_thousands_of_digits_is_malformed_json_not_a_crash(
    client: TestClient,
) -> None:
    """Python's int parser refuses > 4300 digits with a ValueError (was: the handler died,
    the connection dropped without an answer)."""
    text = json.dumps(make_snapshot("a", 0)).replace('"step": 0', '"step": 1' + "0" * 5000)
    with client.websocket_connect("/ws/ingest") as ws:
        ws.send_text(text)
        error = ws.receive_json()
        assert error["code"] == ingest.ERROR_MALFORMED_JSON
        ws.send_json(make_snapshot("a", 1))
        assert ws.receive_json()["type"] == "ack"  # the connection goes on


@pytest.mark.parametrize("step", ["7", True, 7.0])
def test_a_step_must_be_an_integer_not_coerced(client: TestClient, step: object) -> None:
    with client.websocket_connect("/ws/ingest") as ws:
        ws.send_json(make_snapshot("a") | {"step": step})
        error = ws.receive_json()
        assert (error["type"], error["code"]) == ("error", ingest.ERROR_INVALID_MESSAGE)
        ws.send_json(make_event("a", "x", step=False))
        assert ws.receive_json()["code"] == ingest.ERROR_INVALID_MESSAGE
    assert client.get("/api/runs").json() == []
