"""Tokens, the Origin check, settings refusals, store failures, static pages."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect

from curvscope.server.auth import bearer_token, token_matches
from curvscope.server.protocol import CLOSE_INTERNAL_ERROR
from curvscope.server.routes import ingest
from curvscope.server.settings import Settings, is_loopback_host
from curvscope.server.stores import SQLiteStore, StoreError
from tests.helpers.messages import make_snapshot


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_token_matches() -> None:
    assert token_matches(None, None) and token_matches(None, "anything")
    assert token_matches("abc", "abc")
    assert not token_matches("abc", "abd") and not token_matches("abc", None)
    assert not token_matches("abc", "ab") and not token_matches("abc", "")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.com", False),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    "kwargs",
    [{"host": "0.0.0.0"}, {"host": "::"}, {"protect_reads": True}, {"token": "  "}],
)
def test_unsafe_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValidationError):
        Settings(db="x.sqlite", **kwargs)


def test_public_host_with_token_or_insecure_is_allowed() -> None:
    Settings(db="x.sqlite", host="0.0.0.0", token="t")
    Settings(db="x.sqlite", host="0.0.0.0", insecure=True)


def test_token_is_not_shown_in_settings_repr() -> None:
    assert "topsecret" not in repr(Settings(db="x.sqlite", token="topsecret"))


def test_in_memory_sqlite_is_refused() -> None:
    with pytest.raises(StoreError, match="file path"):
        SQLiteStore(":memory:")


def test_store_failure_is_reported_and_nothing_is_acked(make_app: Callable[..., FastAPI]) -> None:
    with TestClient(make_app()) as client, client.websocket_connect("/ws/ingest") as ws:
        client.app.state.store.close()  # the real store, now unusable
        ws.send_json(make_snapshot("a", 1))
        error = ws.receive_json()
        assert (error["type"], error["code"]) == ("error", ingest.ERROR_STORE_FAILED)
        assert (error["run"], error["step"]) == ("a", 1)  # was: null, null
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == CLOSE_INTERNAL_ERROR


def test_pages(client: TestClient) -> None:
    assert client.get("/").status_code == 200
    plotly = client.get("/static/vendor/plotly.min.js")
    assert plotly.status_code == 200 and "javascript" in plotly.headers["content-type"]
    for path in ("/static/__init__.py", "/static/..%2Fpyproject.toml", "/static/.hidden.js"):
        assert client.get(path).status_code == 404, path
