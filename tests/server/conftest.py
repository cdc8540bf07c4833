"""Fixtures of the server tests: an app on a temporary SQLite file, a test client, and a
real ``curvscope serve`` process (see ``tests/helpers/server_process.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from curvscope.server.app import create_app
from curvscope.server.settings import Settings
from tests.helpers.postgres import postgres_admin, postgres_url  # noqa: F401 - fixtures
from tests.helpers.server_process import TEST_TOKEN as TOKEN
from tests.helpers.server_process import ServerProcess, running_server


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A fresh SQLite file path."""
    return tmp_path / "curvscope.sqlite"


@pytest.fixture
def make_app(db_path: Path) -> Callable[..., FastAPI]:
    """``make_app(**settings)``: an app on ``db_path`` with these settings."""

    def factory(**overrides: Any) -> FastAPI:
        # TestClient's requests name the host "testserver"
        return create_app(Settings(db=db_path, **({"allowed_hosts": ["testserver"]} | overrides)))

    return factory


@pytest.fixture
def client(make_app: Callable[..., FastAPI]) -> Iterator[TestClient]:
    """A test client of an open app (no token)."""
    with TestClient(make_app()) as test_client:
        yield test_client


@pytest.fixture
def token_client(make_app: Callable[..., FastAPI]) -> Iterator[TestClient]:
    """A test client of an app with ``TOKEN`` configured (reads open)."""
    with TestClient(make_app(token=TOKEN)) as test_client:
        yield test_client


@pytest.fixture
def server(db_path: Path) -> Iterator[ServerProcess]:
    """A real ``curvscope serve`` process on a free port, stopped afterwards."""
    with running_server(db_path) as process:
        yield process
