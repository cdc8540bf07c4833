"""Deterministic synthetic snapshots (wire dicts) and a helper that writes them into a real
SQLite store, for the dashboard's tests and its load benchmark."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from curvscope.server.protocol import SNR_UNDEFINED, SnapshotMessage
from curvscope.server.stores import SQLiteStore

__all__ = ["layer_names", "seed_run", "synthetic_group", "synthetic_snapshot"]


def layer_names(n: int) -> list[str]:
    """``n`` parameter-group names as ``param_groups="layer"`` gives a ResNet-like model, in
    model order: a stem, blocks of three layers, and a head (``n >= 1``)."""
    if n == 1:
        return ["stem.conv.weight"]
    body = [f"layer{i // 3 + 1}.{i % 3}.conv.weight" for i in range(max(n - 2, 0))]
    return ["stem.conv.weight", *body, "fc.weight"][:n]


def synthetic_group(name: str, step: int, k: int, k_stats: int) -> dict[str, Any]:
    """A group with K = ``k`` eigenvalues spread over four decades (shifting with ``step``)
    and statistics for the top ``k_stats``. Every third SNR(λ) is the sentinel (undefined)
    and every fifth γ is 0, so log plots must leave those out."""
    shift = 0.002 * step
    eigvals = [10.0 ** (2.0 - 4.0 * i / max(k - 1, 1) - shift) for i in range(k)]
    gamma = [0.0 if i % 5 == 4 else (-1) ** i * 0.5 / (i + 1) for i in range(k_stats)]
    norm_sq = 2.0 * math.fsum(g * g for g in gamma) + 0.1
    return {
        "name": name,
        "num_params": 1000,
        "eigvals": eigvals,
        "gamma": gamma,
        "snr_gamma": [0.1 * (i + 1) + 0.01 * step for i in range(k_stats)],
        "snr_lambda": [SNR_UNDEFINED if i % 3 == 0 else 5.0 / (i + 1) for i in range(k_stats)],
        "grad_overlap": [g * g / norm_sq for g in gamma],
        "grad_norm_sq": norm_sq,
    }


def synthetic_snapshot(
    run: str, step: int, *, k: int = 30, k_stats: int = 12, groups: Sequence[str] = ("all",)
) -> dict[str, Any]:
    """A valid snapshot message (dict) of ``run`` at ``step``."""
    return {
        "type": "snapshot",
        "schema_version": 1,
        "run": run,
        "step": step,
        "wall_time": 1_700_000_000.0 + step,
        "loss": 2.0 / (1.0 + 0.01 * step),
        "batch_size": 16,
        "config": {"curvature": "exact"},
        "groups": [synthetic_group(g, step, k, k_stats) for g in groups],
    }


def seed_run(
    db: Path,
    run: str,
    steps: Sequence[int],
    *,
    k: int = 30,
    k_stats: int = 12,
    groups: Sequence[str] = ("all",),
) -> None:
    """Write snapshots of ``run`` at ``steps`` into the SQLite store at ``db``."""
    store = SQLiteStore(db)
    try:
        for step in steps:
            message = SnapshotMessage(
                **synthetic_snapshot(run, step, k=k, k_stats=k_stats, groups=groups)
            )
            store.append_snapshot(message, time.time())
    finally:
        store.close()
