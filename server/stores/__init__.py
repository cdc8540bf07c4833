"""Storage behind one contract (:mod:`.base`): SQLite embedded, PostgreSQL for a team."""

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
    snapshot_payload_json,
)
from curvscope.server.stores.sqlite import SCHEMA_VERSION, SQLiteStore

__all__ = [
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
    "light_snapshot",
    "snapshot_payload_json",
]
