"""Per-group summaries (server/summaries.py): hand-computed values, edge cases, wire order."""

from __future__ import annotations

import math

import pytest

from curvscope.server.summaries import group_summary, snapshot_summary
from tests.helpers.messages import make_group, make_snapshot


def test_summary_of_a_small_group_by_hand() -> None:
    group = {
        "name": "layer1",
        "eigvals": [4.0, 2.0, 1.0, 1.0],
        "gamma": [0.1, 0.2, 0.3],
        "snr_gamma": [0.5, -1.0, 2.0],  # the sentinel is not a value
        "snr_lambda": [1.0, 1.0, 1.0],
        "grad_overlap": [0.25, 0.125, 0.0625],
        "grad_norm_sq": 3.5,
    }
    summary = group_summary(group)
    # p = (1/2, 1/4, 1/8, 1/8): H = 1/2 ln 2 + 1/4 ln 4 + 2 * 1/8 ln 8 = 7/4 ln 2
    assert summary == {
        "lam_max": 4.0,
        "trace": 8.0,
        "k": 4,
        "effective_rank": pytest.approx(2 ** (7 / 4), rel=1e-12),
        "median_snr_gamma": 1.25,
        "overlap_top": 0.4375,
        "grad_norm_sq": 3.5,
        "hessian_min": None,
        "trust_share": None,
        "newton_reduction": None,
    }


def test_effective_rank_ranges_from_one_to_k() -> None:
    assert group_summary({"eigvals": [3.0]})["effective_rank"] == pytest.approx(1.0)
    flat = group_summary({"eigvals": [0.5] * 7})["effective_rank"]
    assert flat == pytest.approx(7.0, rel=1e-12)
    # a direction of zero curvature contributes nothing (0 log 0 = 0)
    assert group_summary({"eigvals": [1.0, 1.0, 0.0]})["effective_rank"] == pytest.approx(2.0)


def test_odd_median_and_a_group_without_statistics() -> None:
    odd = group_summary({"eigvals": [1.0], "snr_gamma": [3.0, 0.1, 7.0, -1.0, -1.0]})
    assert odd["median_snr_gamma"] == 3.0
    empty = group_summary(make_group("g", k=2, k_stats=0))
    assert empty["k"] == 2 and empty["lam_max"] == 2.0 and empty["trace"] == 3.0
    assert empty["median_snr_gamma"] is None  # K' = 0: no SNR at all
    assert empty["overlap_top"] is None
    only_sentinels = group_summary({"snr_gamma": [-1.0, -1.0]})
    assert only_sentinels["median_snr_gamma"] is None


def test_missing_or_unknown_fields_are_none() -> None:
    assert group_summary({}) == {
        "lam_max": None,
        "trace": None,
        "k": None,
        "effective_rank": None,
        "median_snr_gamma": None,
        "overlap_top": None,
        "grad_norm_sq": None,
        "hessian_min": None,
        "trust_share": None,
        "newton_reduction": None,
    }
    weird = group_summary({"eigvals": "12", "grad_norm_sq": True, "hessian_min": -0.25})
    assert weird["lam_max"] is None and weird["k"] is None and weird["grad_norm_sq"] is None
    assert weird["hessian_min"] == -0.25
    no_spectrum = group_summary({"eigvals": []})
    assert (no_spectrum["lam_max"], no_spectrum["trace"], no_spectrum["k"]) == (None, 0.0, 0)
    assert no_spectrum["effective_rank"] is None  # Σλ = 0


def test_snapshot_summary_keeps_the_model_order() -> None:
    groups = [make_group("z.out", k=2), make_group("a.in", k=5), make_group("m.mid", k=1)]
    snapshot = make_snapshot("r", 40, loss=0.75, groups=groups)
    summary = snapshot_summary(snapshot)
    assert (summary["step"], summary["loss"], summary["optimizer"]) == (40, 0.75, None)
    assert [(g["name"], g["k"], g["lam_max"]) for g in summary["groups"]] == [
        ("z.out", 2, 2.0),
        ("a.in", 5, 5.0),
        ("m.mid", 1, 1.0),
    ]
    assert snapshot_summary({**snapshot, "optimizer": {"name": "SGD", "lr": 0.1}})["optimizer"] == {
        "name": "SGD",
        "lr": 0.1,
    }
    assert snapshot_summary({"step": 1, "loss": 2.0, "groups": []})["groups"] == []


def test_sums_are_exactly_rounded() -> None:
    """Σ of many small terms next to a large one is the correctly rounded sum (fsum)."""
    eigvals = [1.0] + [1e-16] * 10
    assert group_summary({"eigvals": eigvals})["trace"] == math.fsum(eigvals) != sum(eigvals)


def test_step_trust_summary() -> None:
    trusted = make_group("g", k=4) | {
        "trust_damping": [0.5, None, None, 0.25],
        "trust_bound": [0.0, -1.0, -2.0, 3.0],
        "newton_reduction": 0.125,
    }
    summary = group_summary(trusted)
    assert summary["trust_share"] == 0.5  # 2 of 4 bounds are >= 0 (0.0 counts)
    assert summary["newton_reduction"] == 0.125
    none_trusted = group_summary(trusted | {"trust_bound": [-1e-9, -1.0, -2.0, -3.0]})
    assert none_trusted["trust_share"] == 0.0
    assert group_summary(trusted | {"trust_bound": []})["trust_share"] is None  # K' = 0
