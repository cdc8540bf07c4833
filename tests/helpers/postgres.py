"""A PostgreSQL server for tests: ``CURVSCOPE_TEST_POSTGRES_URL`` names one (an admin URL;
each test gets a database of its own, created and dropped around it). ``eval "$(bash
.ci/postgres.sh)"`` starts a throwaway one and sets the variable. Without it the tests that
need it skip, except under CI (``CI`` set), where they fail: CI must run them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

__all__ = ["database_url", "postgres_admin", "postgres_admin_url", "postgres_url"]

POSTGRES_URL_ENV = "CURVSCOPE_TEST_POSTGRES_URL"
MISSING_POSTGRES = f"set {POSTGRES_URL_ENV} (see .ci/postgres.sh) to run the PostgreSQL store tests"


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: these tests must run)", pytrace=False)
    pytest.skip(reason)


def postgres_admin_url() -> str:
    """The admin URL of the test server; skips (fails under CI) without one."""
    url = os.environ.get(POSTGRES_URL_ENV, "").strip()
    if not url:
        _skip_or_fail(MISSING_POSTGRES)
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ModuleNotFoundError as exc:
        _skip_or_fail(f"the PostgreSQL store tests need {exc.name} (pip install -e '.[dev]')")
    return url


def database_url(admin_url: str, name: str) -> str:
    """``admin_url`` pointing at database ``name`` instead."""
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Any]:
    """An autocommit connection to the test server's admin database."""
    url = postgres_admin_url()
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        yield conn


@pytest.fixture
def postgres_url(postgres_admin: Any) -> Iterator[str]:
    """The URL of a fresh, empty database, dropped after the test (connections and all)."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    postgres_admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url(postgres_admin_url(), name)
    finally:
        postgres_admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
