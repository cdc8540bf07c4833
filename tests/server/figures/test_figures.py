"""Figure definitions: histogram and overlap sums against plain references, points left
out of log plots, and the shape of each figure (pure functions, no server)."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest

from curvscope.server import figures
from curvscope.server.protocol import SNR_UNDEFINED


def _snapshot(step: int, group: dict) -> dict:
    return {"run": "r", "step": step, "loss": 1.0 / (step + 1), "groups": [group]}


def _group(eigvals, gamma=None, snr_gamma=None, snr_lambda=None, overlap=None, name="all"):
    k_stats = len(gamma) if gamma is not None else len(eigvals)
    return {
        "name": name,
        "num_params": 10,
        "eigvals": list(eigvals),
        "gamma": list(gamma) if gamma is not None else [1.0] * k_stats,
        "snr_gamma": list(snr_gamma) if snr_gamma is not None else [1.0] * k_stats,
        "snr_lambda": list(snr_lambda) if snr_lambda is not None else [1.0] * k_stats,
        "grad_overlap": list(overlap) if overlap is not None else [0.0] * k_stats,
        "grad_norm_sq": 1.0,
    }


def _reference_counts(values, edges):
    """Obvious reference: each bin [e_i, e_{i+1}), the last one closed."""
    counts = []
    for i in range(len(edges) - 1):
        last = i == len(edges) - 2
        counts.append(
            sum(
                1
                for v in values
                if edges[i] <= v and (v < edges[i + 1] or (last and v <= edges[i + 1]))
            )
        )
    return counts


def test_log_edges_are_geometric_and_cover_the_values() -> None:
    values = [3e-4, 0.2, 7.0, 1.5e3]
    edges = figures.log_edges(values, 10)
    assert len(edges) == 11
    assert edges[0] == pytest.approx(3e-4) and edges[-1] == pytest.approx(1.5e3)
    ratios = [edges[i + 1] / edges[i] for i in range(10)]
    assert ratios == pytest.approx([ratios[0]] * 10)
    assert figures.log_edges([5.0], 4)[0] < 5.0 < figures.log_edges([5.0], 4)[-1]


def test_histogram_matches_the_reference() -> None:
    rng = random.Random(0)
    values = [10 ** rng.uniform(-6, 3) for _ in range(500)]
    edges = figures.log_edges(values, 37)
    counts = figures.histogram(values, edges)
    # the extremes may sit a rounding error outside 10**log10(v); the reference uses exact edges
    assert sum(counts) == len(values)
    inner = [v for v in values if edges[0] < v < edges[-1]]
    assert figures.histogram(inner, edges) == _reference_counts(inner, edges)


def test_density_figure_counts_and_density_normalisation() -> None:
    eigvals = [10 ** (-3 + 0.05 * i) for i in range(100)]
    snap = _snapshot(0, _group(eigvals))
    count = figures.density_figure([("now", snap)], "all", mode="count", n_bins=20)
    trace, smoothed = count.data  # the histogram, its KDE
    assert smoothed.name == "now, smoothed (KDE)"
    assert len(trace.x) == 21 and len(trace.y) == 21
    edges = list(trace.x)
    edges[0], edges[-1] = edges[0] * (1 - 1e-9), edges[-1] * (1 + 1e-9)  # exact extremes
    assert list(trace.y[:-1]) == _reference_counts(eigvals, edges)
    assert sum(trace.y[:-1]) == 100
    dens = figures.density_figure([("now", snap)], "all", mode="density", n_bins=20)
    x, y = dens.data[0].x, dens.data[0].y
    integral = sum(y[i] * (math.log10(x[i + 1]) - math.log10(x[i])) for i in range(20))
    assert integral == pytest.approx(1.0)
    assert dens.layout.xaxis.type == "log"


def test_density_overlay_shares_bins_covering_every_entry() -> None:
    a = _snapshot(0, _group([1e-4, 1e-2]))
    b = _snapshot(5, _group([1.0, 1e3]))
    fig = figures.density_figure([("a", a), ("b", b)], "all", mode="count", n_bins=8)
    assert len(fig.data) == 4  # two histograms, then their smoothed estimates
    assert list(fig.data[0].x) == list(fig.data[1].x)
    assert [sum(t.y[:-1]) for t in fig.data[:2]] == [2, 2]
    widened = figures.density_figure([("a", a)], "all", n_bins=8, range_values=[1e5])
    assert widened.data[0].x[-1] == pytest.approx(1e5)


def test_snr_figure_leaves_out_undefined_and_zero_and_says_so() -> None:
    group = _group(
        [8.0, 4.0, 2.0, 1.0],
        snr_lambda=[SNR_UNDEFINED, 3.0, 0.0, 0.5],
        snr_gamma=[2.0, 2.0, SNR_UNDEFINED, SNR_UNDEFINED],
    )
    fig = figures.snr_figure(_snapshot(0, group), "all")
    lam, gam, line = fig.data
    assert list(lam.x) == [4.0, 1.0] and list(lam.y) == [3.0, 0.5]
    assert "1 undefined" in lam.name and "1 zero" in lam.name
    assert list(gam.x) == [8.0, 4.0] and "2 undefined" in gam.name
    assert list(line.y) == [1.0, 1.0] and list(line.x) == [1.0, 8.0]
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"


def test_snr_figure_says_when_nothing_can_be_shown() -> None:
    group = _group([2.0, 1.0], snr_lambda=[SNR_UNDEFINED] * 2, snr_gamma=[SNR_UNDEFINED] * 2)
    fig = figures.snr_figure(_snapshot(0, group), "all")
    assert any("undefined" in a.text for a in fig.layout.annotations)


def test_gamma_figure_uses_absolute_values_of_the_top_k_prime() -> None:
    group = _group([9.0, 3.0, 1.0, 0.5], gamma=[-0.5, 0.0, 0.25])
    fig = figures.gamma_figure(_snapshot(0, group), "all")
    (trace,) = fig.data
    assert list(trace.x) == [9.0, 1.0] and list(trace.y) == [0.5, 0.25]
    assert "1 zero" in trace.name


def test_overlap_bars_hand_example() -> None:
    edges = [0.1, 1.0, 10.0, 100.0]
    sums, counts, rest = figures.overlap_bars([100.0, 10.0, 1.0, 0.1], [0.4, 0.3, 0.1, 0.05], edges)
    assert sums == pytest.approx([0.05, 0.1, 0.7])
    assert counts == [1, 1, 2]
    assert rest == pytest.approx(0.15)


def test_overlap_figure_bars_sum_with_remainder_to_one() -> None:
    rng = random.Random(1)
    eigvals = sorted((10 ** rng.uniform(-3, 2) for _ in range(40)), reverse=True)
    overlap = [rng.uniform(0, 0.02) for _ in range(30)]
    fig = figures.overlap_figure(
        _snapshot(0, _group(eigvals, gamma=[1.0] * 30, overlap=overlap)), "all", n_bins=6
    )
    bars, rest = fig.data
    assert len(bars.y) <= 6 and sum(bars.customdata) == 30
    assert sum(bars.y) == pytest.approx(sum(overlap))
    assert rest.y[0] == pytest.approx(1 - sum(overlap))
    assert rest.name.endswith("(flat space + directions without statistics)")  # K' < K
    full = figures.overlap_figure(_snapshot(0, _group(eigvals[:3], overlap=[0.1] * 3)), "all")
    assert full.data[1].name.endswith("(flat space)")


def test_trajectories_and_loss_have_one_point_per_snapshot() -> None:
    series = [_snapshot(s, _group([3.0 + s, 2.0, 1.0])) for s in range(0, 50, 10)]
    fig = figures.eigval_trajectories_figure(series, "all", top=8)
    assert len(fig.data) == 3  # only K = 3 eigenvalues
    assert [len(t.x) for t in fig.data] == [5, 5, 5]
    assert list(fig.data[0].y) == [3.0, 13.0, 23.0, 33.0, 43.0]
    assert fig.layout.yaxis.type == "log"
    loss = figures.loss_figure(series)
    assert list(loss.data[0].x) == [0, 10, 20, 30, 40]


def test_comparison_figures_have_one_trace_per_run() -> None:
    a = [_snapshot(s, _group([2.0, 1.0])) for s in range(3)]
    b = [_snapshot(s, _group([5.0, 0.5])) for s in range(4)]
    density = figures.compare_density_figure([("a", a[-1]), ("b", b[-1])], "all").data
    assert [t.name for t in density][:2] == ["a @ step 2 (K=2)", "b @ step 3 (K=2)"]
    assert len(density) == 4  # and their smoothed estimates
    traj = figures.compare_trajectories_figure([("a", a), ("b", b)], "all", top=2)
    assert [t.name for t in traj.data] == ["a λ_1", "a λ_2", "b λ_1", "b λ_2"]
    assert [len(t.x) for t in figures.compare_loss_figure([("a", a), ("b", b)]).data] == [3, 4]


def test_empty_inputs_give_a_message_not_a_blank_plot() -> None:
    empty = _snapshot(0, _group([]))
    for fig in (
        figures.density_figure([("now", empty)], "all"),
        figures.snr_figure(empty, "all"),
        figures.gamma_figure(empty, "all"),
        figures.overlap_figure(empty, "all"),
        figures.eigval_trajectories_figure([], "all"),
        figures.loss_figure([]),
    ):
        assert fig.layout.annotations, fig.layout.title.text


def test_figure_json_has_only_finite_numbers() -> None:
    group = _group([4.0, 2.0, 1.0], snr_lambda=[SNR_UNDEFINED, 1.0, 2.0])
    snap = _snapshot(3, group)
    built = figures.step_figures(snap, "all", first=snap, latest=snap, overlay="both")

    def refuse(token: str) -> None:
        raise AssertionError(f"non-finite {token} in figure JSON")

    for fig in built.values():
        json.loads(fig.to_json(), parse_constant=refuse)


def test_every_figure_is_valid_plotly() -> None:
    """The figures are built unvalidated for speed; plotly's validator must accept them."""
    import plotly.graph_objects as go

    group = _group([4.0, 2.0, 1.0], gamma=[0.1, 0.2], snr_lambda=[SNR_UNDEFINED, 1.0])
    snap = _snapshot(3, group)
    built = [
        *figures.step_figures(snap, "all", first=snap, latest=snap, overlay="both").values(),
        *figures.series_figures([snap, snap], "all").values(),
        figures.loss_figure([snap]),
        figures.compare_density_figure([("a", snap)], "all"),
        figures.compare_trajectories_figure([("a", [snap])], "all"),
        figures.compare_loss_figure([("a", [snap])]),
        figures.snr_figure(_snapshot(0, _group([])), "all"),
    ]
    for fig in built:
        go.Figure(fig.to_dict())  # raises ValueError on an invalid property


def test_markup_in_a_group_name_is_shown_not_interpreted() -> None:
    """Plotly reads ``<a href>`` in titles as a link: a group name arrives escaped."""
    name = '<a href="https://evil.example">click</a>'
    snap = _snapshot(0, _group([3.0, 1.0], name=name))
    for fig in (
        figures.density_figure([("step 0", snap)], name),
        figures.snr_figure(snap, name),
        figures.gamma_figure(snap, name),
        figures.overlap_figure(snap, name),
    ):
        title = fig.layout.title.text
        assert "<a" not in title and '&lt;a href="https://evil.example"&gt;' in title


def test_direction_figures_pair_statistics_with_the_selected_eigenvalues() -> None:
    group = _group([8.0, 4.0, 2.0, 1.0], gamma=[0.5, 0.25], snr_gamma=[2.0, 3.0])
    group["directions"] = [2, 3]  # the bottom two
    fig = figures.gamma_figure(_snapshot(0, group), "all")
    (trace,) = fig.data
    assert list(trace.x) == [2.0, 1.0] and list(trace.y) == [0.5, 0.25]


def _hessian_group(with_density: bool = True) -> dict:
    group = _group([4.0, 2.0, 1.0]) | {"hessian_eigvals": [5.0, 3.0], "hessian_min": -0.5}
    if with_density:
        group["hessian_density"] = {
            "nodes": [[-0.5, 1.0, 5.0], [-0.25, 2.0, 4.5]],
            "weights": [[0.25, 0.5, 0.25], [0.5, 0.25, 0.25]],
        }
    return group


def test_hessian_figure_density_integrates_to_one_and_marks_the_extremes() -> None:
    import plotly.graph_objects as go

    snap = _snapshot(2, _hessian_group()) | {"config": {"hessian_top_k": 2}}
    fig = figures.hessian_figure(snap, "all", n_points=2001)
    go.Figure(fig.to_dict())
    density, top, low, ggn, ggn_density = fig.data
    x, y = list(density.x), list(density.y)
    sigma = 0.02 * (5.0 - -0.5)
    assert x[0] == pytest.approx(-0.5 - 3 * sigma) and x[-1] == pytest.approx(5.0 + 3 * sigma)

    def area(heights, keep=lambda v: True) -> float:
        return math.fsum(
            (x[i + 1] - x[i]) * (heights[i] + heights[i + 1]) / 2
            for i in range(len(x) - 1)
            if keep(x[i])
        )

    assert area(y) == pytest.approx(1.0, abs=0.01)  # the Gaussians' tails beyond 3σ: ~0.3 %
    # the GGN's density on the same grid: D = 10 eigenvalues, 3 non-zero (1/10 each), 7 at 0
    g = list(ggn_density.y)
    assert list(ggn_density.x) == x and ggn_density.name == "GGN density (same broadening)"
    assert area(g) == pytest.approx(1.0, abs=0.01)
    assert area(g, lambda v: abs(v) < 0.5) == pytest.approx(0.7, abs=0.01)
    assert area(g, lambda v: 3.5 < v < 4.5) == pytest.approx(0.1, abs=0.01)
    assert [v for v in top.x if v is not None] == [5.0, 5.0, 3.0, 3.0]
    assert [v for v in low.x if v is not None] == [-0.5, -0.5]
    assert max(v for v in top.y if v is not None) == pytest.approx(1.05 * max(y))
    assert list(ggn.x) == [4.0, 2.0, 1.0] and set(ggn.y) == {0.0}
    assert "hessian" in figures.step_figures(snap, "all")


def test_hessian_figure_without_density_or_without_hessian() -> None:
    fig = figures.hessian_figure(_snapshot(0, _hessian_group(with_density=False)), "all")
    assert [t.name for t in fig.data] == ["top-2 of H", "λ_min(H) = -0.5", "GGN eigenvalues (K=3)"]
    plain = _snapshot(1, _group([4.0, 2.0]))
    assert "hessian" not in figures.step_figures(plain, "all")  # a run without the Hessian
    skipped = plain | {"config": {"hessian_top_k": 2}}  # a run with it, not at this step
    fig = figures.step_figures(skipped, "all")["hessian"]
    assert not fig.data
    assert fig.layout.annotations[0].text == "no Hessian at this step"


def test_noise_figure_shares_bins_and_normalises_each_spectrum() -> None:
    group = _group([10.0, 1.0, 0.1]) | {
        "grad_norm_sq": 4.0,
        "gradient_eigvals": [100.0, 1.0],
        "gradient_moment_eigvals": [150.0, 2.0, 0.5],
    }
    fig = json.loads(figures.noise_figure(_snapshot(0, group), "all").to_json())
    names = [t["name"] for t in fig["data"]]
    assert names == [
        "GGN (K=3)",
        "gradient covariance (K=2, tr C = 101, tr C/‖g‖² = 25.2)",
        "second moment (K=3)",
        "GGN, smoothed (KDE)",
        "covariance, smoothed (KDE)",
    ]
    assert fig["data"][2]["visible"] == "legendonly"
    edges = fig["data"][0]["x"]
    assert all(t["x"] == edges for t in fig["data"][:3])  # one set of bins
    assert edges[0] == pytest.approx(0.1) and edges[-1] == pytest.approx(150.0)
    for trace, count in zip(fig["data"][:3], (3, 2, 3), strict=True):
        widths = [math.log10(b) - math.log10(a) for a, b in itertools.pairwise(edges)]
        mass = sum(h * w for h, w in zip(trace["y"][:-1], widths, strict=True))  # per decade
        assert mass == pytest.approx(1.0)
        assert sum(c[2] for c in trace["customdata"]) == count
    counts = json.loads(figures.noise_figure(_snapshot(0, group), "all", mode="count").to_json())
    assert [sum(t["y"][:-1]) for t in counts["data"][:3]] == [3, 2, 3]


def test_noise_figure_says_why_it_is_empty() -> None:
    plain = figures.noise_figure(_snapshot(0, _group([1.0])), "all")
    assert [a["text"] for a in plain.layout.annotations] == [
        "no gradient-noise spectrum at this step"
    ]
    quiet = _group([1.0]) | {"gradient_eigvals": [], "gradient_moment_eigvals": [3.0]}
    fig = figures.noise_figure(_snapshot(0, quiet), "all")
    assert "per-sample gradients are identical (or zero)" in fig.layout.annotations[0].text


def test_step_figures_include_noise_only_for_runs_that_compute_it() -> None:
    plain = _snapshot(0, _group([1.0, 0.5]))
    assert "noise" not in figures.step_figures(plain, "all")
    noisy = plain | {"config": {"gradient_spectrum": True}}
    assert "noise" in figures.step_figures(noisy, "all")  # a step without it still gets the plot
