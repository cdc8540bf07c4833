"""The layout test: where the samples are in a site's output, or that they are mixed."""

from __future__ import annotations

import pytest
import torch

from curvscope.probe.backends.layout import Layout, check_weights, sample_layout


def _weighted(plain: torch.Tensor, omega: torch.Tensor, axis: int) -> torch.Tensor:
    shape = [1] * plain.dim()
    shape[axis] = -1
    return plain * omega.reshape(shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finds_the_sample_axis_even_when_another_axis_has_size_n(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    n = 4
    omega = check_weights(n, torch.empty(0, dtype=dtype))
    plain = torch.randn(n, n, 5, dtype=dtype)  # [T, N, E] with T == N
    layout = sample_layout(plain, _weighted(plain, omega, 1), 2, omega)
    assert layout == Layout(2, "axis", 1)
    assert torch.equal(layout.apply(plain), plain.transpose(0, 1))
    layout = sample_layout(plain, _weighted(plain, omega, 0), 2, omega)
    assert layout == Layout(2, "axis", 0)


@pytest.mark.parametrize("kind", ["major", "minor"])
def test_finds_samples_folded_into_one_axis(kind: str) -> None:
    torch.manual_seed(0)
    n, t = 3, 5
    omega = check_weights(n, torch.empty(0, dtype=torch.float64))
    per_sample = torch.randn(n, t, 2, dtype=torch.float64)
    weighted = per_sample * omega[:, None, None]
    if kind == "major":  # rows n·T + t
        plain, scaled = per_sample.reshape(n * t, 2), weighted.reshape(n * t, 2)
    else:  # rows t·N + n
        plain = per_sample.transpose(0, 1).reshape(t * n, 2)
        scaled = weighted.transpose(0, 1).reshape(t * n, 2)
    layout = sample_layout(plain, scaled, 1, omega)
    assert layout is not None and layout.kind == kind
    assert torch.equal(layout.apply(plain), per_sample)


def test_mixed_samples_fail_every_arrangement() -> None:
    """A cotangent that leaks across samples (BatchNorm in training mode above the site)."""
    torch.manual_seed(0)
    n = 4
    omega = check_weights(n, torch.empty(0, dtype=torch.float64))
    plain = torch.randn(n, 3, dtype=torch.float64)
    mixing = torch.eye(n, dtype=torch.float64) + 0.01
    weighted = mixing @ (omega[:, None] * (torch.linalg.inv(mixing) @ plain))
    assert sample_layout(plain, weighted, 1, omega) is None
    assert sample_layout(plain, _weighted(plain, omega, 0), 1, omega) is not None


def test_no_candidate_without_a_sample_axis() -> None:
    omega = check_weights(4, torch.empty(0))
    plain = torch.randn(3, 5)  # no axis of size 4 and 3 is not a multiple of 4
    assert sample_layout(plain, plain, 1, omega) is None
