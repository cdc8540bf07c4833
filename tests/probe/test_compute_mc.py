"""Monte-Carlo curvature: exact against its own sampled factor, unbiased for the exact GGN."""

from __future__ import annotations

import copy
import warnings

import torch
from backpack import backpack, extend
from backpack.extensions import SqrtGGNMC
from torch import nn

from curvscope.probe import ViViTConfig, compute_snapshot
from tests.probe.reference import dense_vivit
from tests.probe.settings import mlp

SEED = 7


def _problem(n: int = 5):
    torch.manual_seed(3)
    model = mlp().double()
    x = torch.randn(n, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (n,))
    return model, x, y


def _backpack_mc_factor(model: nn.Module, x, y, mc_samples: int) -> torch.Tensor:
    """BackPACK's own expanded MC factor ``V`` as ``[M, N, D]`` with the same RNG draw."""
    model = extend(copy.deepcopy(model))
    loss_fn = extend(nn.CrossEntropyLoss())
    loss = loss_fn(model(x), y)
    torch.manual_seed(SEED)
    with backpack(SqrtGGNMC(mc_samples=mc_samples)), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        loss.backward()
    return torch.cat([p.sqrt_ggn_mc.flatten(start_dim=2) for p in model.parameters()], dim=2)


def test_mc_matches_its_own_factor() -> None:
    model, x, y = _problem()
    mc = 3
    snap = compute_snapshot(
        model, nn.CrossEntropyLoss(), x, y, ViViTConfig(curvature="mc", mc_samples=mc, seed=SEED)
    )
    group = snap.groups[0]
    v = _backpack_mc_factor(model, x, y, mc)  # [M, N, D]
    n = x.shape[0]
    v_flat = v.reshape(mc * n, -1)
    evals, evecs = torch.linalg.eigh(v_flat @ v_flat.T)
    evals, evecs = evals.flip(0), evecs.flip(1)
    k = group.eigvals.shape[0]
    assert k == int((evals > 1e-12 * evals[0]).sum())
    assert torch.allclose(group.eigvals, evals[:k], rtol=1e-12, atol=1e-14 * float(evals[0]))

    ref = dense_vivit(model, nn.CrossEntropyLoss(), x, y, list(model.parameters()))
    for j in range(k):
        e = v_flat.T @ evecs[:, j] / evals[j].sqrt()  # [D]
        gam = n * ref.grads @ e
        per_sample = torch.einsum("mnd,d->mn", v, e)  # e_kᵀ v_{n,m}
        lam = n * per_sample.square().sum(0)
        sign = 1.0 if float(group.gammas[:, j] @ gam) >= 0 else -1.0
        assert torch.allclose(sign * group.gammas[:, j], gam, atol=1e-10 * float(gam.abs().max()))
        assert torch.allclose(group.lambdas[:, j], lam, atol=1e-10 * n * float(evals[0]))


def _mc_ggn(model, x, y, mc: int) -> torch.Tensor:
    config = ViViTConfig(curvature="mc", mc_samples=mc, seed=SEED, eigenvectors=10_000)
    group = compute_snapshot(model, nn.CrossEntropyLoss(), x, y, config).groups[0]
    vecs = torch.stack([torch.cat([t.flatten() for t in v]) for v in group.eigenvectors])
    return vecs.T @ torch.diag(group.eigvals) @ vecs


def test_mc_mean_approaches_exact_ggn() -> None:
    model, x, y = _problem(n=3)
    exact = dense_vivit(model, nn.CrossEntropyLoss(), x, y, list(model.parameters())).ggn
    errors = {
        mc: float((_mc_ggn(model, x, y, mc) - exact).norm() / exact.norm()) for mc in (4, 400)
    }
    # Monte-Carlo error ~ 1/sqrt(M): ~0.05 expected at M = 400
    assert errors[400] < 0.15, errors
    assert errors[400] < errors[4], errors
