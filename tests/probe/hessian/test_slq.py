"""Stochastic Lanczos quadrature: exact per probe, unbiased over probes, a proper density."""

from __future__ import annotations

import math

import pytest
import torch

from curvscope.probe.hessian import (
    GroupHessian,
    density_on_grid,
    moments,
    rademacher,
    slq_density,
)
from tests.probe.hessian.problems import BY_NAME
from tests.probe.hessian.reference import dense_hessian

F64 = torch.float64


def _symmetric(eigvals: torch.Tensor, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(len(eigvals), len(eigvals), generator=gen, dtype=F64))
    return u @ torch.diag(eigvals) @ u.T


def _matrix() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return _symmetric(
        torch.cat([torch.tensor([6.0, -2.0], dtype=F64), torch.randn(78, generator=gen, dtype=F64)])
    )


def test_rademacher_probes_are_unit_sign_vectors() -> None:
    v = rademacher(50, 7, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert v.shape == (7, 50)
    torch.testing.assert_close(v.abs(), torch.full_like(v, 1 / math.sqrt(50)), rtol=0, atol=0)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(7, dtype=F64), rtol=1e-15, atol=0)


def test_quadrature_is_exact_per_probe_up_to_degree_2m_minus_1() -> None:
    h = _matrix()
    steps = 6
    nodes, weights = slq_density(
        lambda v: h @ v,
        80,
        probes=3,
        steps=steps,
        generator=torch.Generator().manual_seed(0),
        dtype=F64,
    )
    assert nodes.shape == weights.shape == (3, steps)
    probes = rademacher(80, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    for i, v in enumerate(probes):
        hv = v
        for j in range(2 * steps):
            quad = float((weights[i] * nodes[i] ** j).sum())
            exact = float(v @ hv)  # vᵀ H^j v
            assert quad == pytest.approx(exact, rel=1e-9, abs=1e-12 * 6.0**j), (i, j)
            hv = h @ hv
    torch.testing.assert_close(weights.sum(1), torch.ones(3, dtype=F64), rtol=0, atol=1e-14)


def test_moment_zero_is_one_and_moments_are_means_over_probes() -> None:
    h = _matrix()
    nodes, weights = slq_density(
        lambda v: h @ v,
        80,
        probes=5,
        steps=10,
        generator=torch.Generator().manual_seed(1),
        dtype=F64,
    )
    m = moments(nodes, weights, [0, 1, 2])
    assert float(m[0]) == pytest.approx(1.0, abs=1e-14)
    per_probe = (weights * nodes).sum(1)
    assert float(m[1]) == pytest.approx(float(per_probe.mean()), rel=1e-14)


@pytest.mark.parametrize("source", ["matrix", "mlp-hessian"])
def test_moments_are_unbiased_trace_estimates(source: str) -> None:
    # tr(H^j)/P for j = 1, 2: per-probe estimates (300 probes, 3 steps: exact up to degree
    # 5 per probe) average to the dense trace within 3 standard errors (fixed seed)
    if source == "matrix":
        h = _matrix()
        matvec = lambda v: h @ v  # noqa: E731
    else:
        problem = BY_NAME["mlp-tanh-ce"]
        model, x, y, params = problem.build()
        h = dense_hessian(model, problem.loss_fn, x, y, params)
        matvec = GroupHessian(model, problem.loss_fn, x, y, params).matvec
    dim = h.shape[0]
    nodes, weights = slq_density(
        matvec, dim, probes=300, steps=3, generator=torch.Generator().manual_seed(2), dtype=F64
    )
    for j, exact in [(1, torch.trace(h) / dim), (2, torch.trace(h @ h) / dim)]:
        per_probe = (weights * nodes**j).sum(1)
        mean, se = float(per_probe.mean()), float(per_probe.std() / math.sqrt(len(per_probe)))
        assert abs(mean - float(exact)) <= 3 * se, (j, mean, float(exact), se)
        assert float(moments(nodes, weights, [j])[0]) == pytest.approx(mean, rel=1e-12)


def test_early_breakdown_pads_with_zero_weights() -> None:
    h = _symmetric(torch.tensor([3.0] * 10 + [-1.0] * 10, dtype=F64))  # 2 distinct
    nodes, weights = slq_density(
        lambda v: h @ v,
        20,
        probes=2,
        steps=8,
        generator=torch.Generator().manual_seed(0),
        dtype=F64,
    )
    assert nodes.shape == (2, 8)
    assert bool((weights[:, 2:] == 0).all())
    torch.testing.assert_close(nodes[:, :2], torch.tensor([[-1.0, 3.0]] * 2, dtype=F64))
    torch.testing.assert_close(nodes[:, 2:], torch.full((2, 6), 3.0, dtype=F64))
    # exact: the probes' spectral measures have their two atoms; moments are exact
    m = moments(nodes, weights, [0, 1, 2, 3])
    probes = rademacher(20, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    for j in range(4):
        exact = torch.stack([v @ torch.linalg.matrix_power(h, j) @ v for v in probes]).mean()
        assert float(m[j]) == pytest.approx(float(exact), rel=1e-12, abs=1e-13)


def test_density_integrates_to_one_and_keeps_the_mean() -> None:
    h = _matrix()
    nodes, weights = slq_density(
        lambda v: h @ v,
        80,
        probes=4,
        steps=20,
        generator=torch.Generator().manual_seed(3),
        dtype=F64,
    )
    grid = torch.linspace(-12.0, 12.0, 4001, dtype=F64)
    density = density_on_grid(nodes, weights, grid, sigma=0.1)
    assert density.shape == grid.shape
    assert bool((density >= 0).all())
    assert float(torch.trapezoid(density, grid)) == pytest.approx(1.0, abs=1e-12)
    # Gaussian broadening keeps the first moment: ∫ t φ_σ(t) dt = moments(j=1)
    mean = float(torch.trapezoid(grid * density, grid))
    assert mean == pytest.approx(float(moments(nodes, weights, [1])[0]), abs=1e-8)
    # a grid covering part of it is still normalised on that part
    half = torch.linspace(0.0, 12.0, 2001, dtype=F64)
    assert float(torch.trapezoid(density_on_grid(nodes, weights, half, 0.1), half)) == (
        pytest.approx(1.0, abs=1e-12)
    )


def test_density_refuses_bad_arguments() -> None:
    nodes = torch.tensor([[0.0, 1.0]], dtype=F64)
    weights = torch.tensor([[0.5, 0.5]], dtype=F64)
    grid = torch.linspace(-1.0, 2.0, 50, dtype=F64)
    with pytest.raises(ValueError, match="sigma"):
        density_on_grid(nodes, weights, grid, 0.0)
    with pytest.raises(ValueError, match="grid"):
        density_on_grid(nodes, weights, torch.linspace(1e3, 1e3 + 1, 10, dtype=F64), 0.01)
    with pytest.raises(ValueError, match="positive"):
        slq_density(lambda v: v, 4, probes=0)
