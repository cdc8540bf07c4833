"""``gradient_spectrum=True``: the gradient-noise spectrum of every group against the dense
per-sample gradients of the ``torch.func`` references, in float64, on both backends and
both factor forms; and its consistency with the SNR(γ) of the same snapshot."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from curvscope.probe import ViViTConfig, compute_snapshot
from curvscope.probe.vivit.factors import factor_form
from tests.probe.backends.test_func import _problem
from tests.probe.func_settings import FUNC_SETTINGS
from tests.probe.reference import dense_vivit, dense_vivit_full
from tests.probe.settings import SETTINGS
from tests.probe.test_compute import _build

RTOL = 1e-11


def _dense_noise(grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-zero eigenvalues of the ``D x D`` covariance and second moment of ``N·g_n``."""
    n = grads.shape[0]
    samples = n * grads
    centred = samples - samples.mean(0)
    cov = centred.T @ centred / (n - 1)
    moment = samples.T @ samples / n
    out = []
    for matrix in (cov, moment):
        evals = torch.linalg.eigvalsh(matrix).flip(0)
        out.append(evals[evals > 1e-9 * max(float(evals[0]), 1e-300)])
    return out[0], out[1]


def _check(group, grads: torch.Tensor) -> None:
    ref_cov, ref_moment = _dense_noise(grads)
    for ours, ref in (
        (group.gradient_eigvals, ref_cov),
        (group.gradient_moment_eigvals, ref_moment),
    ):
        assert ours is not None
        assert torch.all(ours[:-1] >= ours[1:])
        scale = float(ref[0]) if ref.numel() else 1.0
        # eigenvalues the cutoffs treat differently sit at round-off level of the largest
        k = min(ours.numel(), ref.numel())
        extra = torch.cat([ours[k:], ref[k:]])
        assert not extra.numel() or float(extra.abs().max()) <= 1e-9 * scale
        err = float((ours[:k] - ref[:k]).abs().max()) if k else 0.0
        assert err <= RTOL * scale, f"{group.name}: max error {err:.2e} vs λ_max {scale:.2e}"


@pytest.mark.parametrize("form", ["auto", "backpack"])
@pytest.mark.parametrize("setting", SETTINGS, ids=[s.name for s in SETTINGS])
def test_backpack_settings_match_the_dense_per_sample_gradients(setting, form: str) -> None:
    """BackPACK's structured factors (our outer products) and its own expansion."""
    model, x, y, config = _build(setting)
    config = dataclasses.replace(config, gradient_spectrum=True)
    with factor_form(form):  # type: ignore[arg-type]
        snap = compute_snapshot(model, setting.loss_fn, x, y, config)
    for group in snap.groups:
        ref = dense_vivit(model, setting.loss_fn, x, y, group.params)
        _check(group, ref.grads)


@pytest.mark.parametrize("form", ["structured", "expanded"])
@pytest.mark.parametrize("setting", FUNC_SETTINGS, ids=[s.name for s in FUNC_SETTINGS])
def test_func_settings_match_the_full_batch_reference(setting, form: str) -> None:
    """Structured and expanded sites, the generic path (attention, BatchNorm in training
    mode: coupled samples, ``g_n`` the sample's contribution), subsampled curvature."""
    model, loss_fn, x, y = _problem(setting)
    config = dataclasses.replace(setting.config, backend="func", gradient_spectrum=True)
    with factor_form(form):  # type: ignore[arg-type]
        snap = compute_snapshot(model, loss_fn, x, y, config, outputs=setting.outputs)
    for group in snap.groups:
        ref = dense_vivit_full(model, loss_fn, x, y, group.params, None, setting.outputs)
        _check(group, ref.grads)


@pytest.mark.parametrize("backend", ["backpack", "func"])
def test_rayleigh_quotients_are_the_snr_variances(backend: str) -> None:
    """``e_kᵀ C e_k = var_n γ_nk``: ``Σ_k var γ_nk <= Σ eigvals(C)`` over the K GGN
    directions, with equality of each projected variance checked on the dense covariance."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)
    ).double()
    x = torch.randn(7, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (7,))
    loss_fn = torch.nn.CrossEntropyLoss()
    config = ViViTConfig(gradient_spectrum=True, eigenvectors=4, backend=backend)
    snap = compute_snapshot(model, loss_fn, x, y, config)
    (group,) = snap.groups
    ref = dense_vivit(model, loss_fn, x, y, group.params)
    n = x.shape[0]
    samples = n * ref.grads
    cov = (samples - samples.mean(0)).T @ (samples - samples.mean(0)) / (n - 1)
    for k, vec in enumerate(group.eigenvectors):
        e = torch.cat([t.flatten() for t in vec])
        variance = group.gammas[:, k].var(unbiased=True)
        assert float(e @ cov @ e) == pytest.approx(float(variance), rel=1e-10, abs=1e-14)
    assert float(group.gammas.var(0, unbiased=True).sum()) <= float(
        group.gradient_eigvals.sum()
    ) * (1 + 1e-12)


def test_scaled_backward_in_a_loop_is_unscaled() -> None:
    """The in-loop collector divides the per-sample gradients by the loss scale s (BackPACK's
    gradients are of ``s·loss``): the spectrum is of the loss itself (scales by s²)."""
    from curvscope.probe.collector import ViViTCollector

    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    model = model.double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
    loss_fn = torch.nn.CrossEntropyLoss()
    config = ViViTConfig(gradient_spectrum=True, backend="backpack")
    expected = compute_snapshot(model, loss_fn, x, y, config).groups[0]
    collector = ViViTCollector(model, loss_fn, config)
    with collector.hooks():
        loss = loss_fn(collector.forward(x), y)
        with collector.backward(6):
            (0.25 * loss).backward()
    group = collector.snapshot(float(loss.detach()), grad_scale=0.25).groups[0]
    torch.testing.assert_close(
        group.gradient_eigvals, expected.gradient_eigvals, rtol=1e-12, atol=0
    )
    torch.testing.assert_close(
        group.gradient_moment_eigvals, expected.gradient_moment_eigvals, rtol=1e-12, atol=0
    )


def test_off_by_default() -> None:
    model = torch.nn.Linear(3, 2)
    snap = compute_snapshot(model, torch.nn.MSELoss(), torch.randn(4, 3), torch.randn(4, 2))
    assert snap.groups[0].gradient_eigvals is None
    assert snap.groups[0].gradient_moment_eigvals is None
