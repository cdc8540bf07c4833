"""``subsample_grad``: per-sample directional gradients (and SNR(γ), the gradient-noise
spectrum) from a subset of the batch, the batch's ``γ_k``, overlap and ``‖g‖²`` exact —
against the same snapshot without the subset and the dense float64 per-sample gradients,
on both backends and every factor form."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from curvscope.probe import ConfigError, ViViTConfig, compute_snapshot
from curvscope.probe.vivit.factors import factor_form
from tests.probe.backends.test_func import _problem
from tests.probe.func_settings import FUNC_SETTINGS
from tests.probe.reference import dense_vivit_full, reference_snr
from tests.probe.settings import SETTINGS
from tests.probe.test_compute import _build

RTOL = 1e-11


def _close(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    scale = max(float(ref.abs().max()) if ref.numel() else 0.0, 1e-300)
    err = float((ours - ref).abs().max()) if ref.numel() else 0.0
    assert err <= RTOL * scale, f"{what}: max error {err:.2e} vs scale {scale:.2e}"


def _subset(n: int) -> list[int]:
    return [n - 1, 0, n // 2] if n >= 4 else [n - 1, 0]


def _compare(full, sub, subset: list[int], noise_ref: torch.Tensor | None = None) -> None:
    for g_full, g_sub in zip(full.groups, sub.groups, strict=True):
        _close(g_sub.eigvals, g_full.eigvals, "eigvals")
        assert g_sub.gammas.shape == (len(subset), g_full.gammas.shape[1])
        scale = float(g_full.gammas.abs().max())
        err = float((g_sub.gammas - g_full.gammas[subset]).abs().max())
        assert err <= RTOL * scale, f"gammas: {err:.2e} vs {scale:.2e}"
        _close(g_sub.gamma, g_full.gamma, "batch gamma")  # exact, not the subset's mean
        _close(g_sub.grad_overlap, g_full.grad_overlap, "overlap")
        assert g_sub.grad_norm_sq == pytest.approx(g_full.grad_norm_sq, rel=1e-13)
        _close(g_sub.lambdas, g_full.lambdas, "lambdas")  # curvature untouched
        expected = reference_snr(g_full.gammas[subset])
        defined = g_full.gammas[subset].var(0) > 0
        _close(g_sub.snr_gamma[defined], expected[defined], "snr_gamma")


@pytest.mark.parametrize("form", ["auto", "structured", "expanded", "backpack"])
@pytest.mark.parametrize("setting", SETTINGS, ids=[s.name for s in SETTINGS])
def test_backpack_settings(setting, form: str) -> None:
    model, x, y, config = _build(setting)
    subset = _subset(x.shape[0])
    with factor_form(form):  # type: ignore[arg-type]
        full = compute_snapshot(model, setting.loss_fn, x, y, config)
        sub = compute_snapshot(
            model, setting.loss_fn, x, y, dataclasses.replace(config, subsample_grad=subset)
        )
    _compare(full, sub, subset)


@pytest.mark.parametrize("form", ["structured", "expanded"])
@pytest.mark.parametrize("setting", FUNC_SETTINGS, ids=[s.name for s in FUNC_SETTINGS])
def test_func_settings_and_the_noise_of_the_subset(setting, form: str) -> None:
    """Also the generic path (attention, BatchNorm in training mode), whose per-sample
    backward passes run for the subset only; the noise spectrum is the subset's."""
    model, loss_fn, x, y = _problem(setting)
    n = y.shape[0]
    subset = _subset(n)
    config = dataclasses.replace(setting.config, backend="func", gradient_spectrum=True)
    with factor_form(form):  # type: ignore[arg-type]
        full = compute_snapshot(model, loss_fn, x, y, config, outputs=setting.outputs)
        sub = compute_snapshot(
            model,
            loss_fn,
            x,
            y,
            dataclasses.replace(config, subsample_grad=subset),
            outputs=setting.outputs,
        )
    _compare(full, sub, subset)
    for group in sub.groups:
        ref = dense_vivit_full(model, loss_fn, x, y, group.params, None, setting.outputs)
        samples = n * ref.grads[subset]  # N·g_n of the subset
        centred = samples - samples.mean(0)
        cov = torch.linalg.eigvalsh(centred.T @ centred / (len(subset) - 1)).flip(0)
        moment = torch.linalg.eigvalsh(samples.T @ samples / len(subset)).flip(0)
        for ours, dense in ((group.gradient_eigvals, cov), (group.gradient_moment_eigvals, moment)):
            assert ours is not None and ours.numel() <= len(subset)
            k = ours.numel()
            _close(ours, dense[:k], "noise spectrum")
            assert float(dense[k:].abs().max()) <= 1e-9 * float(dense[0])


def test_the_whole_batch_in_order_is_no_subset() -> None:
    config = ViViTConfig(subsample_grad=8)
    assert config.grad_indices(8) is None and config.grad_indices(5) is None
    assert config.grad_indices(10) == list(range(8))
    assert ViViTConfig(subsample_grad=[2, 0]).grad_indices(3) == [2, 0]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ([0, 0], "subsample_grad indices must be distinct"),
        ([7], "subsample_grad index 7 is out of range for a batch of 6"),
        ([], "subsample_grad must select at least one sample"),
        (0, "subsample_grad must be an int >= 1"),
    ],
)
def test_bad_selections_are_refused_before_any_work(value, fragment: str) -> None:
    model = torch.nn.Linear(3, 2)
    with pytest.raises(ConfigError, match=fragment):
        compute_snapshot(
            model,
            torch.nn.MSELoss(),
            torch.randn(6, 3),
            torch.randn(6, 2),
            ViViTConfig(subsample_grad=value),
        )


def test_a_string_is_not_a_selection() -> None:
    with pytest.raises(ConfigError, match="subsample_grad must be an int or a sequence"):
        ViViTConfig(subsample_grad="0,1")  # type: ignore[arg-type]
