"""Damping policies: constant damping and the bootstrap's choice on cases with a known answer."""

from __future__ import annotations

import math

import pytest
import torch

from curvscope.probe import BootstrapDamping, ConstantDamping, DampingPolicy
from curvscope.probe.newton.damping import _lower_quantile, predicted_reduction


def _samples(mean: float, std: float, n: int, seed: int) -> torch.Tensor:
    """``[n]`` samples with exactly the given mean and (population) standard deviation."""
    z = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = (z - z.mean()) / z.std(unbiased=False)
    return mean + std * z


def test_constant_damping_shape_and_value() -> None:
    gammas = torch.zeros(4, 3, 7, dtype=torch.float64)
    delta = ConstantDamping(0.25)(gammas, gammas)
    assert delta.shape == (4, 7) and delta.dtype == torch.float64
    assert bool((delta == 0.25).all())
    assert isinstance(ConstantDamping(), DampingPolicy)
    with pytest.raises(ValueError):
        ConstantDamping(-1.0)


def test_predicted_reduction_is_the_quadratic_model() -> None:
    # q(s) = γ s + ½ λ s²: with γ = 2, λ = 4 and s = -0.5, q = -1 + 0.5 = -0.5, R = 0.5
    r = predicted_reduction(torch.tensor(-0.5), torch.tensor(2.0), torch.tensor(4.0))
    assert float(r) == pytest.approx(0.5)


def test_quantile_matches_torch_quantile() -> None:
    values = torch.randn(37, 5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for q in (0.0, 0.05, 0.5, 1.0):
        expected = torch.quantile(values, q, dim=0)
        assert torch.allclose(_lower_quantile(values, q), expected, rtol=0, atol=1e-14)


def test_noise_free_samples_choose_the_smallest_damping() -> None:
    # identical samples: every resample gives the batch means, and the reduction
    # γ²(λ + 2δ) / (2(λ + δ)²) strictly decreases in δ
    gammas = torch.tensor([[3.0, -0.5, 10.0]], dtype=torch.float64).repeat(16, 1)
    lambdas = torch.tensor([[2.0, 0.1, 50.0]], dtype=torch.float64).repeat(16, 1)
    policy = BootstrapDamping(seed=0)
    delta = policy(gammas, lambdas)
    assert delta.shape == (3,)
    assert bool((delta == policy.grid[0]).all())


def test_noisy_curvature_chooses_a_large_damping() -> None:
    n = 32
    gammas = torch.stack([_samples(1.0, 0.01, n, 0), _samples(1.0, 0.01, n, 1)], dim=1)
    # direction 0: curvature 1 with little noise; direction 1: curvature 1, std 30,
    # so resampled means of λ scatter by about ±5 and can flip the step's sign
    lambdas = torch.stack([_samples(1.0, 0.01, n, 2), _samples(1.0, 30.0, n, 3)], dim=1)
    delta = BootstrapDamping(seed=0)(gammas, lambdas)
    assert float(delta[0]) < 0.01
    assert float(delta[1]) > 5.0


def test_pure_gradient_noise_takes_no_step() -> None:
    # zero-mean gradient samples: a step fitted to one resample is as likely to increase
    # the loss on another as to decrease it, so no damping has a non-negative 5 % bound
    n = 64
    gammas = _samples(0.0, 1.0, n, 4)[:, None]
    lambdas = _samples(1.0, 0.01, n, 5)[:, None]
    delta = BootstrapDamping(seed=0)(gammas, lambdas)
    assert math.isinf(float(delta[0]))


def test_leading_dimensions_are_independent_problems() -> None:
    quiet = torch.tensor([[3.0, 1.0]], dtype=torch.float64).repeat(8, 1)
    quiet_lam = torch.tensor([[2.0, 1.0]], dtype=torch.float64).repeat(8, 1)
    noisy_lam = torch.stack([_samples(2.0, 60.0, 8, 6), _samples(1.0, 60.0, 8, 7)], dim=1)
    gammas = torch.stack([quiet, quiet])  # [2, 8, 2]
    lambdas = torch.stack([quiet_lam, noisy_lam])
    policy = BootstrapDamping(seed=3)
    delta = policy(gammas, lambdas)
    assert delta.shape == (2, 2)
    assert bool((delta[0] == policy.grid[0]).all())
    assert bool((delta[1] > 1.0).all())


def test_seed_makes_the_choice_reproducible() -> None:
    n = 20
    gammas = torch.stack([_samples(1.0, 2.0, n, 8), _samples(-2.0, 1.0, n, 9)], dim=1)
    lambdas = torch.stack([_samples(1.0, 3.0, n, 10), _samples(4.0, 6.0, n, 11)], dim=1)
    first = BootstrapDamping(seed=42)(gammas, lambdas)
    second = BootstrapDamping(seed=42)(gammas, lambdas)
    assert torch.equal(first, second)


def test_curvature_samples_may_differ_in_number() -> None:
    gammas = torch.ones(10, 2, dtype=torch.float64)
    lambdas = torch.ones(4, 2, dtype=torch.float64)
    delta = BootstrapDamping(seed=0)(gammas, lambdas)
    assert delta.shape == (2,)
    with pytest.raises(ValueError, match="directions"):
        BootstrapDamping()(gammas, torch.ones(4, 3, dtype=torch.float64))


def _slow_bootstrap(gammas, lambdas, grid, resamples, q, seed):
    """Loop-by-loop reference; draws its resamples in the policy's documented order."""
    gen = torch.Generator().manual_seed(seed)
    n, m = gammas.shape[0], lambdas.shape[0]
    draws = [torch.randint(0, size, (resamples, size), generator=gen) for size in (n, m, n, m)]
    deltas = []
    for k in range(gammas.shape[1]):
        bounds = []
        for delta in grid.tolist():
            rs = []
            for b in range(resamples):
                g_step, l_step, g_eval, l_eval = (
                    samples[idx[b], k].mean()
                    for samples, idx in zip((gammas, lambdas, gammas, lambdas), draws, strict=True)
                )
                step = -g_step / (l_step + delta)
                rs.append(predicted_reduction(step, g_eval, l_eval))
            bounds.append(float(torch.quantile(torch.stack(rs), q)))
        ok = [(bound, i) for i, bound in enumerate(bounds) if bound >= 0]
        deltas.append(grid[max(ok, key=lambda t: (t[0], -t[1]))[1]] if ok else math.inf)
    return torch.tensor(deltas, dtype=torch.float64)


def test_vectorised_bootstrap_matches_a_loop_reference() -> None:
    n, m = 12, 7
    # two directions with an interior optimum, one with pure gradient noise (no step)
    gammas = torch.stack(
        [_samples(1.0, 0.3, n, 12), _samples(1.0, 0.5, n, 13), _samples(0.0, 1.0, n, 16)], dim=1
    )
    lambdas = torch.stack(
        [_samples(2.0, 0.5, m, 14), _samples(1.0, 2.0, m, 15), _samples(1.0, 0.1, m, 17)], dim=1
    )
    grid = torch.logspace(-2, 1, 9, dtype=torch.float64)
    ours = BootstrapDamping(grid=grid, resamples=30, quantile=0.1, seed=7)(gammas, lambdas)
    ref = _slow_bootstrap(gammas, lambdas, grid, 30, 0.1, seed=7)
    assert ref.isinf().tolist() == [False, False, True]
    assert float(ref[0]) > float(grid[0]) and float(ref[1]) > float(grid[0])
    assert torch.equal(ours.isinf(), ref.isinf())
    finite = ~ref.isinf()
    assert torch.allclose(ours[finite], ref[finite], rtol=0, atol=0)
