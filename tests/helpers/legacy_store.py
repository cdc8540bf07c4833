"""A SQLite database as the first curvscope release wrote it (store schema 1): snapshots whose
``config`` has no ``backend``, for the migration tests."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from curvscope.server.protocol import SnapshotMessage
from curvscope.server.stores.sqlite import _MIGRATIONS, snapshot_payload_json

__all__ = ["schema_1_payload", "write_schema_1_database"]

_BACKEND_FIELD = ',"backend":"backpack"'


def schema_1_payload(message: dict[str, Any]) -> str:
    """The payload text a schema-1 server stored for this wire message: today's stored text
    without ``config.backend`` (the one field it did not know)."""
    text = snapshot_payload_json(SnapshotMessage.model_validate(message))
    assert text.count(_BACKEND_FIELD) == 1, text
    return text.replace(_BACKEND_FIELD, "")


def write_schema_1_database(path: Path, messages: Iterable[dict[str, Any]]) -> None:
    """Create ``path`` with the schema-1 tables (``PRAGMA user_version = 1``) holding these
    snapshot messages, stored as that release stored them."""
    version, statements = _MIGRATIONS[0]
    assert version == 1
    conn = sqlite3.connect(path)
    try:
        with conn:
            for statement in statements:
                conn.execute(statement)
            for message in messages:
                conn.execute(
                    "INSERT INTO snapshots (run, step, received_at, payload) VALUES (?, ?, ?, ?)",
                    (message["run"], message["step"], 1.0, schema_1_payload(message)),
                )
                conn.execute(
                    "INSERT OR REPLACE INTO runs (name, created_at, updated_at) VALUES (?, 1, 1)",
                    (message["run"],),
                )
        conn.execute("PRAGMA user_version = 1")
    finally:
        conn.close()
