"""Noise statistics of the directional derivatives."""

from __future__ import annotations

import torch
from torch import Tensor

from curvscope.server.protocol import SNR_UNDEFINED

__all__ = ["SNR_UNDEFINED", "gradient_overlap", "snr"]


def snr(samples: Tensor) -> Tensor:
    """Signal-to-noise ratio ``mean_n(x_nk)² / var_n(x_nk)`` per column.

    Args:
        samples: ``[N, K]`` per-sample values.

    Returns:
        ``[K]``; the variance is unbiased (divides by ``N - 1``). Where it is zero, or
        undefined because ``N = 1``, the result is :data:`SNR_UNDEFINED` (``-1``), never
        NaN or infinity. Computed in float64 as ``(mean / std)²`` so that large float32
        values neither overflow (``mean²`` of 1e20) nor lose the ratio.
    """
    n, k = samples.shape
    if n < 2:
        return torch.full((k,), SNR_UNDEFINED, dtype=samples.dtype, device=samples.device)
    wide = samples.double()
    mean = wide.mean(0)
    std = wide.std(0, unbiased=True)
    ok = std > 0
    ratio = mean / torch.where(ok, std, torch.ones_like(std))
    out = torch.where(ok, ratio.square(), torch.full_like(std, SNR_UNDEFINED))
    return out.to(samples.dtype)


def gradient_overlap(gamma: Tensor, grad_norm_sq: Tensor) -> Tensor:
    """``γ_k² / ‖g‖²`` per direction (zeros when ``g = 0``); sums to at most 1."""
    if float(grad_norm_sq) <= 0:
        return torch.zeros_like(gamma)
    wide = gamma.double()
    return (wide.square() / float(grad_norm_sq)).to(gamma.dtype)
