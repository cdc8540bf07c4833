"""Readable figures: the spectral density's smoothed estimate and padded axis, legible
overlap bins, smoothed eigenvalue trajectories with their spread, and an SNR axis that one
extreme point cannot stretch. Expected values come from plain references written here
(an exact kernel sum, numpy-style quantiles by hand), not from the figure code."""

from __future__ import annotations

import math
import random
import statistics

import plotly.graph_objects as go
import pytest

from curvscope.server import figures


def _snapshot(step: int, eigvals, **stats) -> dict:  # type: ignore[no-untyped-def]
    k_stats = len(stats.get("gamma", eigvals))
    group = {
        "name": "all",
        "num_params": 10,
        "eigvals": list(eigvals),
        "gamma": stats.get("gamma", [1.0] * k_stats),
        "snr_gamma": stats.get("snr_gamma", [1.0] * k_stats),
        "snr_lambda": stats.get("snr_lambda", [1.0] * k_stats),
        "grad_overlap": stats.get("overlap", [0.0] * k_stats),
        "grad_norm_sq": 1.0,
    }
    return {"run": "r", "step": step, "loss": 1.0, "groups": [group]}


def _area(x: list[float], y: list[float]) -> float:
    return math.fsum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(len(x) - 1))


def _silverman(logs: list[float]) -> float:
    """Silverman's rule, from the statistics module (Python's quantiles 'inclusive' = numpy's)."""
    q1, _, q3 = statistics.quantiles(logs, n=4, method="inclusive")
    spread = min(statistics.stdev(logs), (q3 - q1) / 1.34)
    return max(0.9 * spread * len(logs) ** -0.2, figures.KDE_MIN_BANDWIDTH)


def _exact_kde(logs: list[float], h: float, at: list[float]) -> list[float]:
    norm = 1 / (len(logs) * h * math.sqrt(2 * math.pi))
    return [norm * sum(math.exp(-0.5 * ((u - c) / h) ** 2) for c in logs) for u in at]


# -- spectral density ----------------------------------------------------------------------
def test_the_smoothed_density_is_the_gaussian_kde_in_log_lambda() -> None:
    rng = random.Random(3)
    eigvals = [10 ** rng.gauss(-1.0, 0.8) for _ in range(300)]
    fig = figures.density_figure([("now", _snapshot(0, eigvals))], "all")
    bars, kde = fig.data
    assert kde.name == "now, smoothed (KDE)" and kde.mode == "lines"
    logs = [math.log10(v) for v in eigvals]
    h = _silverman(logs)
    assert figures.kde_bandwidth(logs) == pytest.approx(h, rel=1e-9)
    u = [math.log10(x) for x in kde.x]
    reference = _exact_kde(logs, h, u)
    peak = max(reference)
    assert max(abs(a - b) for a, b in zip(kde.y, reference, strict=True)) < 0.01 * peak
    # density per decade, as the bars: both integrate to 1 over log10 λ
    assert _area(u, list(kde.y)) == pytest.approx(1.0, abs=0.01)
    edges = [math.log10(e) for e in bars.x]
    assert math.fsum(bars.y[i] * (edges[i + 1] - edges[i]) for i in range(40)) == pytest.approx(1)
    # drawn over the histogram, which fades behind it
    assert bars.opacity < 1 and bars.line.width < kde.line.width


def test_in_count_mode_the_curve_counts_eigenvalues_per_bin() -> None:
    eigvals = [10 ** (-3 + 0.05 * i) for i in range(100)]
    fig = figures.density_figure([("now", _snapshot(0, eigvals))], "all", mode="count", n_bins=20)
    bars, kde = fig.data
    bin_decades = (math.log10(bars.x[-1]) - math.log10(bars.x[0])) / 20
    u = [math.log10(x) for x in kde.x]
    # the curve's area over log10 λ, in bins, is the number of eigenvalues
    assert _area(u, list(kde.y)) / bin_decades == pytest.approx(100, rel=0.01)


def test_a_small_spectrum_reads_as_a_curve_not_a_comb() -> None:
    """18 eigenvalues (late in training): most of the 40 bins are empty, the curve is not."""
    eigvals = [30.0, 12.0, 5.0] + [10 ** (-3 + 0.15 * i) for i in range(15)]
    fig = figures.density_figure([("step 900", _snapshot(900, eigvals))], "all")
    bars, kde = fig.data
    assert sum(1 for y in bars.y[:-1] if y == 0) > 20  # a comb of bars
    lo, hi = math.log10(min(eigvals)), math.log10(max(eigvals))
    inside = [y for x, y in zip(kde.x, kde.y, strict=True) if lo <= math.log10(x) <= hi]
    assert min(inside) > 0.05 * max(inside)  # no gap between the teeth
    peaks = sum(1 for i in range(1, len(kde.y) - 1) if kde.y[i - 1] < kde.y[i] >= kde.y[i + 1])
    assert peaks <= 2  # the bulk and the outliers, at most


def test_one_distinct_eigenvalue_is_a_bump_of_the_minimum_width() -> None:
    fig = figures.density_figure([("now", _snapshot(0, [2.0, 2.0, 2.0]))], "all")
    _, kde = fig.data
    top = max(kde.y)
    assert top == pytest.approx(1 / (figures.KDE_MIN_BANDWIDTH * math.sqrt(2 * math.pi)), rel=0.02)
    assert math.log10(kde.x[kde.y.index(top)]) == pytest.approx(math.log10(2.0), abs=0.01)


def test_the_axis_leaves_room_beyond_the_outermost_bars() -> None:
    eigvals = [10 ** (-2 + 0.1 * i) for i in range(41)]  # 1e-2 .. 1e2
    fig = figures.density_figure([("now", _snapshot(0, eigvals))], "all")
    lo, hi = fig.layout.xaxis.range
    assert lo <= -2 - 0.2 + 1e-9 and hi >= 2 + 0.2 - 1e-9  # 5 % of 4 decades each side
    assert lo > -3 and hi < 3
    tiny = figures.density_figure([("now", _snapshot(0, [5.0]))], "all").layout.xaxis.range
    assert tiny[0] < math.log10(5.0) - 0.5 and tiny[1] > math.log10(5.0) + 0.5


def test_an_empty_step_has_no_curve() -> None:
    fig = figures.density_figure([("now", _snapshot(0, []))], "all")
    assert len(fig.data) == 1 and fig.layout.annotations


# -- overlap bins ----------------------------------------------------------------------------
def test_overlap_bins_are_whole_decades_with_short_labels() -> None:
    eigvals = [50.0, 7.0, 0.3, 0.02, 0.002]
    overlap = [0.3, 0.2, 0.1, 0.05, 0.01]
    fig = figures.overlap_figure(_snapshot(0, eigvals, overlap=overlap), "all")
    bars, rest = fig.data
    assert list(bars.x) == ["1e-3–1e-2", "1e-2–1e-1", "1e-1–1e0", "1e0–1e1", "1e1–1e2"]
    assert list(bars.y) == pytest.approx([0.01, 0.05, 0.1, 0.2, 0.3])
    assert list(rest.x) == ["1 − Σ"] and rest.y[0] == pytest.approx(1 - 0.66)
    assert fig.layout.xaxis.automargin


def test_a_narrow_spectrum_gets_half_or_quarter_decades() -> None:
    eigvals = [4.0, 2.5, 1.2, 0.7]  # 10^-0.15 .. 10^0.6: under a decade
    fig = figures.overlap_figure(_snapshot(0, eigvals, overlap=[0.1] * 4), "all")
    labels = list(fig.data[0].x)
    assert labels == ["5.6e-1–1e0", "1e0–1.8e0", "1.8e0–3.2e0", "3.2e0–5.6e0"]
    assert list(fig.data[0].customdata) == [1, 1, 1, 1]


def test_a_wide_spectrum_gets_at_most_n_bins() -> None:
    eigvals = [10.0**e for e in range(4, -30, -3)]  # 34 decades
    fig = figures.overlap_figure(_snapshot(0, eigvals, overlap=[0.01] * len(eigvals)), "all")
    assert len(fig.data[0].x) <= 8 and sum(fig.data[0].customdata) == len(eigvals)
    assert all(len(label) <= 12 for label in fig.data[0].x)


def test_overlap_legend_is_above_the_plot_not_over_the_axis_title() -> None:
    fig = figures.overlap_figure(_snapshot(0, [2.0, 1.0], overlap=[0.1, 0.1]), "all")
    assert fig.layout.legend.yanchor == "bottom" and fig.layout.legend.y >= 1.0
    go.Figure(fig.to_dict())


# -- trajectories --------------------------------------------------------------------------
SPIKY = [1.0, 1.0, 100.0, 1.0, 1.0]


def _series(values: list[float], optimizer: dict | None = None) -> list[dict]:
    out = []
    for i, v in enumerate(values):
        snap = _snapshot(10 * i, [v, v / 10])
        if optimizer is not None:
            snap["optimizer"] = optimizer
        out.append(snap)
    return out


def test_the_moving_median_removes_a_one_snapshot_spike_and_the_band_shows_it() -> None:
    fig = figures.eigval_trajectories_figure(_series(SPIKY), "all", smooth="median", window=3)
    names = [t.name for t in fig.data]
    assert names == ["λ_1 10–90 %", "λ_2 10–90 %", "λ_1 (raw)", "λ_2 (raw)", "λ_1", "λ_2"]
    assert "(moving median of 3)" in fig.layout.title.text
    band, raw, line = fig.data[0], fig.data[2], fig.data[4]
    assert list(line.y) == [1.0, 1.0, 1.0, 1.0, 1.0]
    assert list(raw.y) == SPIKY and raw.mode == "markers" and raw.marker.opacity < 0.5
    # centred windows of 3 (2 at the ends); 90 % quantile of {1, 1, 100}: 1 + 0.8 · 99
    upper = list(band.y[:5])
    assert upper == pytest.approx([1.0, 1 + 0.8 * 99, 1 + 0.8 * 99, 1 + 0.8 * 99, 1.0])
    assert list(band.y[5:]) == pytest.approx([1.0] * 5)  # the 10 % quantiles, reversed
    assert band.fill == "toself" and list(band.x) == [0, 10, 20, 30, 40, 40, 30, 20, 10, 0]
    go.Figure(fig.to_dict())


def test_the_ema_is_a_trailing_average_of_log_lambda() -> None:
    fig = figures.eigval_trajectories_figure(
        _series([1.0, 100.0, 100.0]), "all", smooth="ema", window=3
    )
    assert "(EMA over 3)" in fig.layout.title.text
    line = next(t for t in fig.data if t.name == "λ_1")
    # α = 2 / (3 + 1) = 0.5 in log10: 0 → 1 → 1.5
    assert list(line.y) == pytest.approx([1.0, 10.0, 10**1.5])


def test_unsmoothed_trajectories_are_as_before() -> None:
    fig = figures.eigval_trajectories_figure(_series(SPIKY), "all")
    assert [t.name for t in fig.data] == ["λ_1", "λ_2"]
    assert list(fig.data[0].y) == SPIKY
    assert fig.layout.title.text == "Top-8 eigenvalues over steps — all"


# -- SNR y range -----------------------------------------------------------------------------
def test_one_tiny_snr_does_not_stretch_the_axis() -> None:
    lam = [10.0 / (i + 1) for i in range(12)]
    snr_lambda = [0.2 * (i + 1) for i in range(12)]
    snr_gamma = [0.5] * 11 + [1e-9]
    fig = figures.snr_figure(_snapshot(0, lam, snr_lambda=snr_lambda, snr_gamma=snr_gamma), "all")
    lam_trace, gam_trace, _, outside = fig.data
    lo, hi = fig.layout.yaxis.range
    assert lo > -2 and lo <= math.log10(0.2) and hi >= math.log10(2.4)
    assert lo < 0 < hi  # SNR = 1 in view
    assert list(lam_trace.y) == snr_lambda and list(gam_trace.y) == [0.5] * 11
    assert list(outside.x) == [lam[11]] and list(outside.customdata[0]) == [11, "SNR(γ_k)", 1e-9]
    assert lo < math.log10(outside.y[0]) < lo + 0.5  # at the bottom edge, inside the frame
    assert outside.marker.symbol[0] == "triangle-down"
    assert "1 outside the y range" in outside.name
    go.Figure(fig.to_dict())


def test_snrs_without_outliers_are_all_shown_with_the_snr_1_line() -> None:
    fig = figures.snr_figure(
        _snapshot(0, [4.0, 2.0, 1.0], snr_lambda=[30.0, 3.0, 0.3], snr_gamma=[0.05, 0.1, 0.2]),
        "all",
    )
    assert len(fig.data) == 3  # SNR(λ), SNR(γ), SNR = 1
    lo, hi = fig.layout.yaxis.range
    assert lo < math.log10(0.05) and hi > math.log10(30.0)
    only_large = figures.snr_figure(
        _snapshot(0, [4.0, 2.0], snr_lambda=[30.0, 50.0], snr_gamma=[40.0, 60.0]), "all"
    )
    assert only_large.layout.yaxis.range[0] < 0  # SNR = 1 stays in view
