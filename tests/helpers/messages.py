"""Factories of valid wire messages (plain dicts, as they travel as JSON)."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["make_event", "make_group", "make_snapshot"]


def make_group(name: str = "all", k: int = 3, k_stats: int | None = None) -> dict[str, Any]:
    """A valid group payload with K = ``k`` eigenvalues and statistics for ``k_stats`` <= K."""
    k_stats = k if k_stats is None else k_stats
    return {
        "name": name,
        "num_params": 10,
        "eigvals": [float(k - i) for i in range(k)],
        "gamma": [0.1 * (i + 1) for i in range(k_stats)],
        "snr_gamma": [1.0 + i for i in range(k_stats)],
        "snr_lambda": [-1.0] + [2.0] * (k_stats - 1) if k_stats else [],
        "grad_overlap": [0.5] * k_stats,
        "grad_norm_sq": 1.25,
    }


def make_snapshot(run: str = "run-a", step: int = 0, **overrides: Any) -> dict[str, Any]:
    """A valid ``snapshot`` message; keyword arguments replace top-level fields."""
    message: dict[str, Any] = {
        "type": "snapshot",
        "schema_version": 1,
        "run": run,
        "step": step,
        "wall_time": time.time(),
        "loss": 1.0 / (step + 1),
        "batch_size": 8,
        "config": {"curvature": "exact"},
        "groups": [make_group()],
    }
    message.update(overrides)
    return message


def make_event(run: str = "run-a", message: str = "something failed", **overrides: Any) -> dict:
    """A valid ``event`` message."""
    event: dict[str, Any] = {
        "type": "event",
        "schema_version": 1,
        "run": run,
        "step": None,
        "wall_time": 1700000000.0,
        "level": "error",
        "message": message,
    }
    event.update(overrides)
    return event
