"""The gradient-noise spectrum from the ``N x N`` Gram, against dense ``D x D`` matrices."""

from __future__ import annotations

import pytest
import torch

from curvscope.probe.vivit.noise import (
    centred,
    gradient_covariance_eigvals,
    gradient_moment_eigvals,
)


def _dense(grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Covariance and second moment of ``N·g_n`` straight from their definitions."""
    n = grads.shape[0]
    samples = n * grads  # [N, D]
    mean = samples.mean(0)
    cov = sum(torch.outer(s - mean, s - mean) for s in samples) / (n - 1)
    moment = sum(torch.outer(s, s) for s in samples) / n
    return cov, moment


def _nonzero(matrix: torch.Tensor) -> torch.Tensor:
    evals = torch.linalg.eigvalsh(matrix).flip(0)
    return evals[evals > 1e-10 * evals[0]]


@pytest.mark.parametrize(("n", "d"), [(2, 5), (5, 3), (6, 20), (9, 9), (12, 4)])
def test_eigenvalues_match_the_dense_matrices(n: int, d: int) -> None:
    gen = torch.Generator().manual_seed(n * 100 + d)
    grads = torch.randn(n, d, generator=gen, dtype=torch.float64) + 0.3
    cov, moment = _dense(grads)
    gram = grads @ grads.T
    ours_cov = gradient_covariance_eigvals(gram)
    ours_moment = gradient_moment_eigvals(gram)
    ref_cov, ref_moment = _nonzero(cov), _nonzero(moment)
    assert ours_cov.shape == ref_cov.shape
    assert ours_moment.shape == ref_moment.shape
    assert ours_cov.shape[0] == min(n - 1, d)  # centring removes one dimension
    assert ours_moment.shape[0] == min(n, d)
    torch.testing.assert_close(ours_cov, ref_cov, rtol=1e-12, atol=1e-12 * float(ref_cov[0]))
    torch.testing.assert_close(
        ours_moment, ref_moment, rtol=1e-12, atol=1e-12 * float(ref_moment[0])
    )


def test_rayleigh_quotient_is_the_variance_of_the_projections() -> None:
    """``eᵀ C e`` equals the unbiased variance over samples of ``N·eᵀ g_n`` for any unit e:
    the trace of C over an orthonormal basis is the sum of those variances."""
    gen = torch.Generator().manual_seed(3)
    n, d = 7, 4
    grads = torch.randn(n, d, generator=gen, dtype=torch.float64)
    projections = n * grads  # e = the standard basis
    variances = projections.var(0, unbiased=True)
    trace = gradient_covariance_eigvals(grads @ grads.T).sum()
    assert float(trace) == pytest.approx(float(variances.sum()), rel=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identical_samples_have_no_noise_not_even_round_off(dtype: torch.dtype) -> None:
    """Centring identical rows of 0.1s leaves round-off (not exactly zero in float32): the
    cutoff is relative to the uncentred scale, so none of it is reported as noise."""
    rows = torch.tensor([[0.1, 0.2, -0.3]] * 5, dtype=dtype)
    gram = rows @ rows.T
    assert float(centred(gram).abs().max()) > 0 or dtype == torch.float64
    assert gradient_covariance_eigvals(gram).numel() == 0
    # and a tiny real spread well above round-off is kept
    spread = rows.clone()
    spread[0, 0] += 1e-2
    assert gradient_covariance_eigvals(spread @ spread.T).numel() == 1


def test_identical_samples_have_no_noise() -> None:
    grads = torch.tensor([[1.0, 2.0, -1.0]] * 5, dtype=torch.float64)
    gram = grads @ grads.T
    assert gradient_covariance_eigvals(gram).numel() == 0
    moment = gradient_moment_eigvals(gram)  # S = N² g_1 g_1ᵀ: one eigenvalue N²‖g_1‖²
    assert moment.shape == (1,)
    assert float(moment[0]) == pytest.approx(25 * 6.0, rel=1e-14)


def test_one_sample_has_no_covariance() -> None:
    gram = torch.tensor([[4.0]], dtype=torch.float64)
    assert gradient_covariance_eigvals(gram).numel() == 0
    assert gradient_moment_eigvals(gram).tolist() == [4.0]


def test_centred_gram_is_the_gram_of_centred_columns() -> None:
    gen = torch.Generator().manual_seed(1)
    grads = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    c = grads - grads.mean(0)
    torch.testing.assert_close(centred(grads @ grads.T), c @ c.T, rtol=1e-13, atol=1e-14)
