"""Storage behind one contract (:mod:`.base`): SQLite embedded, PostgreSQL for a team.

:func:`open_store` picks the backend from the ``--db`` setting. The PostgreSQL store
(:mod:`.postgres`) is imported only when a URL asks for it: psycopg is an optional
dependency (``pip install 'curvscope[postgres]'``).
"""

from __future__ import annotations

import os

from curvscope.server.stores.base import (
    EventRecord,
    LightSnapshot,
    RunSummary,
    RunTaken,
    SnapshotRecord,
    StepConflict,
    Store,
    StoreError,
    downsample_indices,
    light_snapshot,
    redact_url,
    snapshot_payload_json,
)
from curvscope.server.stores.sqlite import SCHEMA_VERSION, SQLiteStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
"""URL prefixes that :func:`open_store` opens with :class:`~.postgres.PostgresStore`."""


def is_postgres_url(db: str | os.PathLike[str]) -> bool:
    """Whether ``db`` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(db, str) and db.lower().startswith(POSTGRES_SCHEMES)


def open_store(db: str | os.PathLike[str]) -> Store:
    """The store ``db`` names: a ``postgresql://`` (or ``postgres://``) URL opens a
    :class:`~.postgres.PostgresStore`, anything else is a SQLite file path.

    Raises:
        StoreError: the database cannot be opened, or psycopg is not installed.
    """
    if not is_postgres_url(db):
        return SQLiteStore(db)
    try:
        from curvscope.server.stores.postgres import PostgresStore
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("psycopg", "psycopg_pool"):
            raise
        raise StoreError(
            f"a PostgreSQL database needs the Python package {exc.name!r}: "
            "pip install 'curvscope[postgres]'"
        ) from None
    return PostgresStore(str(db))


__all__ = [
    "POSTGRES_SCHEMES",
    "SCHEMA_VERSION",
    "EventRecord",
    "LightSnapshot",
    "RunSummary",
    "RunTaken",
    "SQLiteStore",
    "SnapshotRecord",
    "StepConflict",
    "Store",
    "StoreError",
    "downsample_indices",
    "is_postgres_url",
    "light_snapshot",
    "open_store",
    "redact_url",
    "snapshot_payload_json",
]
