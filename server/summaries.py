"""Per-group summaries of a snapshot: the few numbers the run overview draws.

Computed once at ingest from the wire form of a snapshot (stored next to it, see
:meth:`~curvscope.server.stores.base.Store.read_summaries`), so the overview of a run with
many groups and snapshots reads a few numbers per group and step instead of decoding every
snapshot. Pure Python: the server never imports torch.

A summary value is a number or ``None`` (the snapshot does not have it: a field that is
missing, an empty spectrum, no defined SNR). Summaries are plain JSON.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from curvscope.server.protocol import SNR_UNDEFINED

__all__ = ["SUMMARY_VERSION", "group_summary", "snapshot_summary"]

SUMMARY_VERSION = 1
"""Version of the summary's keys; stored summaries of another version are computed again."""

Summary = dict[str, float | int | None]


def _numbers(value: Any) -> list[float] | None:
    """``value`` as a list of floats, or ``None`` when it is not a list of numbers."""
    if not isinstance(value, Sequence) or isinstance(value, str):
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return None
    return [float(v) for v in value]


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def effective_rank(eigvals: Sequence[float]) -> float | None:
    """``exp(H(p))`` with ``p = λ / Σλ`` (Roy & Vetterli's effective rank): between 1 (one
    direction holds all the curvature) and K (a flat spectrum); ``None`` for ``Σλ = 0``."""
    trace = math.fsum(eigvals)
    if not eigvals or trace <= 0.0:
        return None
    entropy = -math.fsum(p * math.log(p) for p in (v / trace for v in eigvals) if p > 0.0)
    return math.exp(entropy)


def group_summary(group: Mapping[str, Any]) -> Summary:
    """The summary of one group in its wire form (a :class:`GroupPayload` as a dict).

    Keys: ``lam_max`` (the largest GGN eigenvalue, ``eigvals[0]``), ``trace`` (Σλ_k over
    the K kept eigenvalues), ``k`` (K), ``effective_rank`` (see :func:`effective_rank`),
    ``median_snr_gamma`` (the median SNR(γ_k) over the K' statistics directions whose SNR is
    defined, i.e. not the sentinel ``-1``), ``overlap_top`` (Σ grad_overlap over the K'
    directions: the share of ‖g‖² in the directions the statistics are for),
    ``grad_norm_sq`` and ``hessian_min``; with the step trust, ``trust_share`` (the share of
    the K' directions whose ``trust_bound`` is ``>= 0``: a damped Newton step along them is
    trusted) and ``newton_reduction`` (the predicted loss decrease of the damped step).
    """
    eigvals = _numbers(group.get("eigvals"))
    snr_gamma = _numbers(group.get("snr_gamma"))
    overlap = _numbers(group.get("grad_overlap"))
    defined_snr = [v for v in snr_gamma or [] if v != SNR_UNDEFINED]
    return {
        "lam_max": eigvals[0] if eigvals else None,
        "trace": math.fsum(eigvals) if eigvals is not None else None,
        "k": len(eigvals) if eigvals is not None else None,
        "effective_rank": effective_rank(eigvals) if eigvals is not None else None,
        "median_snr_gamma": statistics.median(defined_snr) if defined_snr else None,
        "overlap_top": math.fsum(overlap) if overlap else None,
        "grad_norm_sq": _number(group.get("grad_norm_sq")),
        "hessian_min": _number(group.get("hessian_min")),
        "trust_share": _share_non_negative(_numbers(group.get("trust_bound"))),
        "newton_reduction": _number(group.get("newton_reduction")),
    }


def _share_non_negative(values: list[float] | None) -> float | None:
    """The share of ``values`` that are ``>= 0``; ``None`` for none or no values."""
    if not values:
        return None
    return sum(1 for v in values if v >= 0) / len(values)


def snapshot_summary(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """The summary of one snapshot in its wire (or stored) form: ``{"step", "loss",
    "optimizer", "groups": [{"name", **group_summary(g)}]}``, groups in model order."""
    return {
        "step": snapshot.get("step"),
        "loss": snapshot.get("loss"),
        "optimizer": snapshot.get("optimizer"),
        "groups": [
            {"name": g.get("name"), **group_summary(g)} for g in snapshot.get("groups") or []
        ],
    }
