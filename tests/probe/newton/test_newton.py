"""Damped Newton steps against a dense solve in the non-trivial eigenspace, in float64."""

from __future__ import annotations

import pytest
import torch

from curvscope.probe import (
    BootstrapDamping,
    ConstantDamping,
    compute_snapshot,
    damped_newton_step,
    newton_step,
)
from curvscope.probe.snapshot import GroupSpectrum
from tests.probe.reference import DenseViViT, dense_vivit
from tests.probe.settings import SETTINGS
from tests.probe.test_compute import _build

NAMES = ["mlp-ce-mean", "mlp-mse-sum", "cnn-ce-mean", "subsample-int", "layer-groups", "top-k"]
CASES = [s for s in SETTINGS if s.name in NAMES]


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.flatten() for t in tensors])


def _eigenspace(ggn: torch.Tensor, count: int) -> torch.Tensor:
    """``[D, count]`` orthonormal basis of the top-``count`` eigenspace of ``ggn``.

    Checked to be well defined: the next eigenvalue is separated from the last kept one.
    """
    evals, evecs = torch.linalg.eigh(ggn)
    evals, evecs = evals.flip(0), evecs.flip(1)
    if count < evals.shape[0]:
        assert evals[count - 1] - evals[count] > 1e-10 * evals[0], "eigenspace not separated"
    return evecs[:, :count]


@pytest.mark.parametrize("delta", [0.0, 1e-3, 0.7])
@pytest.mark.parametrize("setting", CASES, ids=[s.name for s in CASES])
def test_constant_damping_matches_dense_solve(setting, delta: float) -> None:
    model, x, y, config = _build(setting)
    snap = compute_snapshot(model, setting.loss_fn, x, y, config, keep_factors=True)
    sub = config.subsample_indices(x.shape[0])
    for group in snap.groups:
        ref = dense_vivit(model, setting.loss_fn, x, y, group.params, sub)
        basis = _eigenspace(ref.ggn, group.gammas.shape[1])
        proj = basis @ basis.T
        eye = torch.eye(proj.shape[0], dtype=proj.dtype)
        # −(G + δI)⁻¹ g restricted to the eigenspace; on the flat space (G + δI) = δ, so
        # the flat part of the solve is projected away (δ = 0: the pseudo-inverse there).
        rhs = proj @ ref.grad
        system = ref.ggn + delta * eye + (eye - proj) if delta == 0.0 else ref.ggn + delta * eye
        expected = -proj @ torch.linalg.solve(system, rhs)
        step = damped_newton_step(group, delta)
        assert [t.shape for t in step] == [p.shape for p in group.params]
        ours = _flat(step).detach()
        # the solve's condition number on the eigenspace bounds the attainable accuracy
        lam = group.eigvals[: group.gammas.shape[1]]
        cond = float((lam[0] + delta) / (lam[-1] + delta))
        scale = float(expected.abs().max())
        assert float((ours - expected).abs().max()) <= 1e-10 * max(cond, 100.0) * scale


def _single_group(name: str) -> tuple[GroupSpectrum, DenseViViT]:
    """The one group of setting ``name`` (factors kept) and its dense reference."""
    setting = next(s for s in SETTINGS if s.name == name)
    model, x, y, config = _build(setting)
    snap = compute_snapshot(model, setting.loss_fn, x, y, config, keep_factors=True)
    (group,) = snap.groups
    return group, dense_vivit(model, setting.loss_fn, x, y, group.params)


def test_directional_damping_matches_dense_eigendecomposition() -> None:
    group, ref = _single_group("mlp-mse-sum")
    k = group.gammas.shape[1]
    gaps = (ref.eigvals[: k - 1] - ref.eigvals[1:k]).abs()
    assert bool((gaps > 1e-6 * ref.eigvals[0]).all()), "eigenvalues not separated"
    delta = torch.logspace(-2, 1, k, dtype=torch.float64)
    delta[2] = torch.inf  # direction 2 is skipped
    vecs = ref.eigvecs[:, :k]
    coeff = (vecs.T @ ref.grad) / (ref.eigvals[:k] + delta)
    coeff[2] = 0.0
    expected = -vecs @ coeff  # invariant to the eigenvectors' signs
    ours = _flat(newton_step(group, delta))
    assert float((ours - expected).abs().max()) <= 1e-8 * float(expected.abs().max())


def test_step_is_orthogonal_to_the_flat_space() -> None:
    group, ref = _single_group("mlp-ce-mean")
    k = group.eigvals.shape[0]
    assert k < ref.eigvals.shape[0], "the setting should have a flat space"
    flat_basis = ref.eigvecs[:, k:]
    step = _flat(damped_newton_step(group, BootstrapDamping(seed=0)))
    assert float(step.norm()) > 0
    assert float((flat_basis.T @ step).abs().max()) <= 1e-10 * float(step.norm())


def test_needs_kept_factors() -> None:
    setting = next(s for s in SETTINGS if s.name == "mlp-ce-mean")
    model, x, y, config = _build(setting)
    snap = compute_snapshot(model, setting.loss_fn, x, y, config)
    with pytest.raises(RuntimeError, match="keep_factors"):
        damped_newton_step(snap.groups[0], ConstantDamping(1.0))
