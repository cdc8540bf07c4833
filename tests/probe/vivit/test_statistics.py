"""SNR and gradient overlap against their definitions, sentinels, and overflow safety."""

from __future__ import annotations

import math

import torch

from curvscope.probe.vivit.statistics import SNR_UNDEFINED, gradient_overlap, snr


def test_snr_is_mean_squared_over_unbiased_variance() -> None:
    samples = torch.tensor([[1.0, 2.0], [3.0, -2.0], [5.0, 3.0]], dtype=torch.float64)
    # column 0: mean 3, unbiased var 4 -> 9/4; column 1: mean 1, var ((1)+(9)+(4))/2 = 7
    assert torch.allclose(snr(samples), torch.tensor([9 / 4, 1 / 7], dtype=torch.float64))


def test_zero_or_undefined_variance_gives_the_sentinel() -> None:
    constant = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    assert snr(constant).tolist() == [SNR_UNDEFINED, SNR_UNDEFINED]
    single = torch.tensor([[1.0, 2.0, 3.0]])
    assert snr(single).tolist() == [SNR_UNDEFINED] * 3


def test_large_float32_values_do_not_overflow() -> None:
    samples = torch.tensor([[1e20], [3e20], [5e20]], dtype=torch.float32)
    value = snr(samples)
    assert value.dtype == torch.float32
    assert math.isfinite(float(value[0]))
    assert math.isclose(float(value[0]), 9 / 4, rel_tol=1e-6)
    overlap = gradient_overlap(torch.tensor([3e20, 4e20]), torch.tensor(25e40, dtype=torch.float64))
    assert torch.allclose(overlap, torch.tensor([9 / 25, 16 / 25]))


def test_overlap_of_a_zero_gradient_is_zero() -> None:
    assert gradient_overlap(torch.tensor([0.0, 0.0]), torch.tensor(0.0)).tolist() == [0.0, 0.0]
