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
        NaN or infinity.
    """
    n, k = samples.shape
    if n < 2:
        return torch.full((k,), SNR_UNDEFINED, dtype=samples.dtype, device=samples.device)
    mean = samples.mean(0)
    var = samples.var(0, unbiased=True)
    ok = var > 0
    safe = torch.where(ok, var, torch.ones_like(var))
    return torch.where(ok, mean.square() / safe, torch.full_like(var, SNR_UNDEFINED))


def gradient_overlap(gamma: Tensor, grad_norm_sq: Tensor) -> Tensor:
    """``γ_k² / ‖g‖²`` per direction (zeros when ``g = 0``); sums to at most 1."""
    if float(grad_norm_sq) <= 0:
        return torch.zeros_like(gamma)
    return gamma.square() / grad_norm_sq
