"""``compute_snapshot`` against the dense ``torch.func`` reference, in float64."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from curvscope.probe import compute_snapshot
from curvscope.probe.vivit.statistics import SNR_UNDEFINED
from tests.probe.reference import DenseViViT, dense_vivit, reference_snr
from tests.probe.settings import SETTINGS, Setting

# Errors relative to each quantity's natural scale (λ_max for eigenvalues and λ_nk, N·‖g_n‖
# for γ_nk). Measured worst cases over SETTINGS: 1e-15 for eigenvalues and λ_nk, 1e-13 for
# γ_nk (e_k = V ẽ_k / √λ_k amplifies round-off along small eigenvalues); bounds keep 100x.
RTOL = 1e-13
RTOL_GAMMA = 1e-11


def _build(setting: Setting, seed: int = 0):
    torch.manual_seed(seed)
    model = setting.make_model().double()
    gen = torch.Generator().manual_seed(seed)
    x, y = setting.make_batch(gen)
    x = x.double()
    if y.is_floating_point():
        y = y.double()
    config = setting.config
    if setting.groups is not None:
        config = dataclasses.replace(config, param_groups=setting.groups(model))
    return model, x, y, config


def _close(
    ours: torch.Tensor, ref: torch.Tensor, scale: float | None = None, rtol: float = RTOL
) -> None:
    scale = float(ref.abs().max()) if scale is None else scale
    err = float((ours - ref).abs().max()) if ref.numel() else 0.0
    assert err <= rtol * max(scale, 1e-300), f"max error {err:.3e} vs scale {scale:.3e}"


def _separated(eigvals: torch.Tensor, k: int) -> bool:
    """Direction k has a unique eigenvector (relative gap > 1e-6 to its neighbours)."""
    lam = eigvals
    gaps = [abs(lam[k] - lam[j]) for j in (k - 1, k + 1) if 0 <= j < len(lam)]
    return all(g > 1e-6 * lam[0] for g in gaps)


def _check_group(group, ref: DenseViViT, n: int, m: int) -> None:
    k = group.eigvals.shape[0]
    lam_max = float(ref.eigvals[0])
    assert k > 0
    _close(group.eigvals, ref.eigvals[:k], lam_max)
    if k < ref.eigvals.shape[0]:  # nothing non-trivial was cut off
        assert float(ref.eigvals[k]) <= 1e-9 * lam_max
    assert torch.all(group.eigvals[:-1] >= group.eigvals[1:])
    _close(torch.tensor(group.grad_norm_sq, dtype=torch.float64), ref.grad.square().sum())

    kk = group.gammas.shape[1]
    assert group.gammas.shape == (n, kk) and group.lambdas.shape == (m, kk)
    checked = 0
    # |γ_nk| <= N ‖g_n‖ and λ_nk <= M λ_max bound the errors' natural scales
    gamma_scale = n * float(ref.grads.norm(dim=1).max())
    for j in range(kk):
        if not _separated(ref.eigvals[: k + 1], j):
            continue
        e = ref.eigvecs[:, j]
        gam_ref = n * ref.grads @ e
        lam_ref = m * torch.einsum("i,nij,j->n", e, ref.ggn_per_sample, e)
        sign = 1.0 if float(group.gammas[:, j] @ gam_ref) >= 0 else -1.0
        _close(sign * group.gammas[:, j], gam_ref, gamma_scale, RTOL_GAMMA)
        _close(group.lambdas[:, j], lam_ref, m * lam_max)
        _close(group.lambdas[:, j].mean(), ref.eigvals[j], lam_max)
        _close(group.gammas[:, j].mean() * sign, e @ ref.grad, gamma_scale, RTOL_GAMMA)
        overlap_ref = (e @ ref.grad) ** 2 / ref.grad.square().sum()
        _close(group.grad_overlap[j], overlap_ref, 1.0, RTOL_GAMMA)
        for ours, samples in ((group.snr_gamma[j], gam_ref), (group.snr_lambda[j], lam_ref)):
            expected = reference_snr(samples[:, None])[0]
            assert ours != SNR_UNDEFINED
            assert abs(float(ours - expected)) <= 1e-8 * max(1.0, float(expected))
        checked += 1
    assert checked >= min(kk, 2), "too few well-separated directions to compare"


@pytest.mark.parametrize("setting", SETTINGS, ids=[s.name for s in SETTINGS])
def test_matches_dense_reference(setting: Setting) -> None:
    model, x, y, config = _build(setting)
    snap = compute_snapshot(model, setting.loss_fn, x, y, config)
    assert snap.batch_size == x.shape[0]
    with torch.no_grad():
        expected_loss = float(setting.loss_fn(model(x), y))
    assert snap.loss == pytest.approx(expected_loss, rel=1e-14)
    n = x.shape[0]
    sub = config.subsample_indices(n)
    m = n if sub is None else len(sub)
    assert snap.groups, "no groups"
    for group in snap.groups:
        ref = dense_vivit(model, setting.loss_fn, x, y, group.params, sub)
        _check_group(group, ref, n, m)
        if config.top_k is not None:
            assert group.gammas.shape[1] == min(config.top_k, group.eigvals.shape[0])
        if config.eigenvectors:
            _check_eigenvectors(group, ref, config.eigenvectors)


def _check_eigenvectors(group, ref: DenseViViT, count: int) -> None:
    vecs = torch.stack([torch.cat([t.flatten() for t in v]) for v in group.eigenvectors])
    assert vecs.shape[0] == min(count, group.eigvals.shape[0])
    for t, p in zip(group.eigenvectors[0], group.params, strict=True):
        assert t.shape == p.shape
    _close(vecs @ vecs.T, torch.eye(vecs.shape[0], dtype=vecs.dtype), 1.0)
    lam = group.eigvals[: vecs.shape[0]]
    _close(vecs @ ref.ggn, lam[:, None] * vecs, float(lam[0]))


def test_groups_cover_the_layers() -> None:
    setting = next(s for s in SETTINGS if s.name == "layer-groups")
    model, x, y, config = _build(setting)
    snap = compute_snapshot(model, setting.loss_fn, x, y, config)
    assert [g.name for g in snap.groups] == ["0", "2", "4"]
    assert sum(g.num_params for g in snap.groups) == sum(p.numel() for p in model.parameters())
