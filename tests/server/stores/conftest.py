"""Fixtures of the store tests: ``any_store`` runs a test on SQLite and on PostgreSQL.

The PostgreSQL side needs a server: ``CURVSCOPE_TEST_POSTGRES_URL`` names one (an admin
URL; each test gets a database of its own, created and dropped around it). ``eval "$(bash
.ci/postgres.sh)"`` starts a throwaway one and sets the variable. Without it those tests
skip, except under CI (``CI`` set), where they fail: CI must run them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from curvscope.server.stores import SQLiteStore, Store


@pytest.fixture(params=["sqlite", "postgres"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """``store_factory()``: another store on this test's database (another worker, for
    PostgreSQL); every store it made is closed after the test."""
    opened: list[Store] = []
    if request.param == "sqlite":
        path = tmp_path / "store.sqlite"

        def factory() -> Store:
            opened.append(SQLiteStore(path))
            return opened[-1]

    else:
        url = request.getfixturevalue("postgres_url")
        from curvscope.server.stores.postgres import PostgresStore

        def factory() -> Store:
            opened.append(PostgresStore(url, max_size=4))
            return opened[-1]

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def any_store(store_factory: Any) -> Store:
    """A fresh store: a SQLite file, or a PostgreSQL database of its own."""
    return store_factory()
