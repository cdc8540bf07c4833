"""Plotly figure definitions of the dashboard and the HTML report (no torch, no numpy).

Every function takes snapshots in their REST JSON shape (``GET /api/runs/{run}/snapshots``
entries: ``run, step, wall_time, loss, batch_size, config, groups[...]``; see
:class:`curvscope.server.protocol.SnapshotMessage`) and returns a
:class:`plotly.graph_objects.Figure`. The same functions serve the browser (as figure JSON
from :mod:`curvscope.server.routes.figure_api`) and the standalone report
(:mod:`curvscope.server.report`).

Conventions:

- Eigenvalues ``eigvals`` (K of them) are in descending order; the per-direction statistics
  (``gamma``, ``snr_gamma``, ``snr_lambda``, ``grad_overlap``) cover the top K' <= K, so
  direction k's curvature is ``eigvals[k]`` for ``k < K'``.
- Log axes cannot show zero or negative values: SNRs equal to the sentinel
  :data:`~curvscope.server.protocol.SNR_UNDEFINED` (zero variance) and exact zeros are left
  out, and the trace's legend says how many.
- Spectral densities are histograms on log-spaced bins, drawn as step lines (bars have no
  usable width on a log axis). ``mode="density"`` divides the counts by
  ``K · Δlog10(λ)`` (a density per decade that integrates to 1 over ``log10 λ``);
  ``mode="count"`` shows the counts.
- Figures are built with plotly's property validation switched off (``_validate=False``):
  it costs more than the rest of a request for K ≈ 1,000; the tests validate every figure.
"""

from __future__ import annotations

from curvscope.server.figures.base import (
    COLORS,
    DensityMode,
    Snapshot,
    find_group,
    group_names,
    plain,
)
from curvscope.server.figures.bundles import Overlay, series_figures, step_figures
from curvscope.server.figures.compare import (
    compare_density_figure,
    compare_loss_figure,
    compare_trajectories_figure,
)
from curvscope.server.figures.density import (
    KDE_MIN_BANDWIDTH,
    KDE_POINTS,
    density_figure,
    histogram,
    kde_bandwidth,
    log_edges,
)
from curvscope.server.figures.directions import (
    aligned_edges,
    gamma_figure,
    overlap_bars,
    overlap_figure,
    snr_figure,
)
from curvscope.server.figures.hessian import has_hessian, hessian_figure
from curvscope.server.figures.noise import has_noise, noise_figure
from curvscope.server.figures.series import (
    ADAPTIVE_NOTE,
    DEFAULT_SMOOTH_WINDOW,
    THRESHOLD_NAMES,
    Smoothing,
    eigval_trajectories_figure,
    loss_figure,
    stability_threshold,
)
from curvscope.server.figures.summary_series import (
    hessian_min_figure,
    newton_reduction_figure,
    observed_loss_changes,
    summary_series_figures,
    trust_share_figure,
)
from curvscope.server.figures.trust import Summary, has_trust, trust_figure

__all__ = [
    "ADAPTIVE_NOTE",
    "COLORS",
    "DEFAULT_SMOOTH_WINDOW",
    "KDE_MIN_BANDWIDTH",
    "KDE_POINTS",
    "THRESHOLD_NAMES",
    "DensityMode",
    "Overlay",
    "Smoothing",
    "Snapshot",
    "Summary",
    "aligned_edges",
    "compare_density_figure",
    "compare_loss_figure",
    "compare_trajectories_figure",
    "density_figure",
    "eigval_trajectories_figure",
    "find_group",
    "gamma_figure",
    "group_names",
    "has_hessian",
    "has_noise",
    "has_trust",
    "hessian_figure",
    "hessian_min_figure",
    "histogram",
    "kde_bandwidth",
    "log_edges",
    "loss_figure",
    "newton_reduction_figure",
    "noise_figure",
    "observed_loss_changes",
    "overlap_bars",
    "overlap_figure",
    "plain",
    "series_figures",
    "snr_figure",
    "stability_threshold",
    "step_figures",
    "summary_series_figures",
    "trust_figure",
    "trust_share_figure",
]
