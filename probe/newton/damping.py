"""Damping policies for damped Newton steps along GGN eigenvectors (paper §4.2).

A policy maps the per-sample directional derivatives of ``K`` directions to one damping
per direction::

    δ = policy(gammas, lambdas)    # gammas [..., N, K], lambdas [..., N', K] -> δ [..., K]

``gammas[n, k] = γ_nk`` and ``lambdas[n, k] = λ_nk`` are scaled so that their means over
the samples are the batch quantities ``γ_k = e_kᵀ g`` and ``λ_k`` (MATH.md). Leading
dimensions ``...`` are independent problems (the noisy-quadratic benchmark uses them for
its seeds); the probe's snapshots have none.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "BootstrapDamping",
    "ConstantDamping",
    "DampingPolicy",
    "predicted_reduction",
]


@runtime_checkable
class DampingPolicy(Protocol):
    """Anything that maps ``gammas [..., N, K]`` and ``lambdas [..., N', K]`` to ``δ [..., K]``."""

    def __call__(self, gammas: Tensor, lambdas: Tensor) -> Tensor: ...


def predicted_reduction(step: Tensor, gamma: Tensor, lam: Tensor) -> Tensor:
    """Loss reduction of the 1-d quadratic model ``R = −s·γ − ½ s²·λ`` (paper eq. 10).

    ``step`` (``s``), ``gamma`` (``γ``) and ``lam`` (``λ``) broadcast against each other.
    """
    return -step * gamma - 0.5 * step.square() * lam


class ConstantDamping:
    """The same damping ``δ >= 0`` along every direction.

    Args:
        delta: the damping (``0`` gives the plain Newton step in the eigenspace).
    """

    def __init__(self, delta: float = 1.0) -> None:
        if not delta >= 0.0 or math.isinf(delta):
            raise ValueError(f"delta must be finite and >= 0, got {delta}")
        self.delta = float(delta)

    def __call__(self, gammas: Tensor, lambdas: Tensor) -> Tensor:
        """``[..., K]`` filled with ``delta``."""
        return torch.full(
            (*gammas.shape[:-2], gammas.shape[-1]),
            self.delta,
            dtype=gammas.dtype,
            device=gammas.device,
        )

    def __repr__(self) -> str:
        return f"ConstantDamping(delta={self.delta:g})"


class BootstrapDamping:
    """Noise-aware directional damping chosen by the bootstrap (paper §4.2).

    For every direction ``k`` and every candidate ``δ`` of ``grid``, each of ``resamples``
    bootstrap rounds draws four independent resamples (with replacement) of the samples:
    two give the means ``γ*``, ``λ*`` that define the step ``s = −γ*/(λ* + δ)``, the other
    two the means ``γ**``, ``λ**`` of the "other batch" that evaluates it,
    ``R = −s·γ** − ½ s²·λ**``. The ``quantile`` (5 %) of ``R`` over the rounds is a
    conservative estimate of the loss reduction; ``δ_k`` is the candidate that maximises
    it among those where it is ``>= 0`` (the smallest such candidate on ties). Where no
    candidate has a non-negative bound, ``δ_k = inf``: the step leaves direction ``k``
    alone. Step and evaluation come from different resamples, as in the original ViViT
    code, so that a step is never judged on the very means it was fitted to.

    Args:
        grid: ``[G]`` candidate dampings, ``> 0``; default ``torch.logspace(-3, 2, 100)``
            (100 log-spaced values from ``1e-3`` to ``1e2``).
        resamples: bootstrap rounds B (default 100).
        quantile: the lower quantile of the reduction that is maximised (default 0.05).
        seed: seed of the policy's own generator (``None``: the global torch RNG). The
            generator lives on the CPU and advances with every call; each call draws
            ``randint(0, N, (..., B, N))`` for the step's ``γ``, then ``(..., B, N')`` for
            its ``λ``, then the same two for the evaluation.

    Memory: one call holds ``[..., B, G, K]`` tensors (``B·G·K`` = 1e6 for ``K = 100``).
    """

    def __init__(
        self,
        grid: Tensor | None = None,
        resamples: int = 100,
        quantile: float = 0.05,
        seed: int | None = None,
    ) -> None:
        grid = torch.logspace(-3, 2, 100, dtype=torch.float64) if grid is None else grid
        grid = torch.as_tensor(grid, dtype=torch.float64).flatten()
        if grid.numel() == 0 or not bool((grid > 0).all()) or not bool(grid.isfinite().all()):
            raise ValueError("grid must hold finite dampings > 0")
        if resamples < 2:
            raise ValueError(f"resamples must be >= 2, got {resamples}")
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {quantile}")
        self.grid = grid
        self.resamples = int(resamples)
        self.quantile = float(quantile)
        self.seed = seed
        self._generator = None if seed is None else torch.Generator().manual_seed(seed)

    def __call__(self, gammas: Tensor, lambdas: Tensor) -> Tensor:
        """Choose ``δ [..., K]`` from ``gammas [..., N, K]`` and ``lambdas [..., N', K]``."""
        return self.choose(gammas, lambdas)[0]

    def choose(self, gammas: Tensor, lambdas: Tensor) -> tuple[Tensor, Tensor]:
        """``(δ, bound)``, both ``[..., K]``: the damping, and the largest ``quantile`` bound
        on the loss reduction over the grid.

        Where ``bound >= 0`` it is the bound of the chosen ``δ_k``; where ``bound < 0`` no
        candidate has a non-negative bound and ``δ_k = inf``. Draws as :meth:`__call__`.
        """
        if gammas.shape[-1] != lambdas.shape[-1]:
            raise ValueError(
                f"gammas {tuple(gammas.shape)} and lambdas {tuple(lambdas.shape)} "
                "differ in their number of directions"
            )
        if gammas.shape[-1] == 0:
            empty = gammas.new_zeros((*gammas.shape[:-2], 0))
            return empty, empty.clone()
        dtype = torch.promote_types(gammas.dtype, lambdas.dtype)
        grid = self.grid.to(dtype=dtype, device=gammas.device)[:, None]  # [G, 1]
        gam_step = self._resampled_mean(gammas)[..., None, :]  # [..., B, 1, K]
        lam_step = self._resampled_mean(lambdas)[..., None, :]
        gam_eval = self._resampled_mean(gammas)[..., None, :]
        lam_eval = self._resampled_mean(lambdas)[..., None, :]
        # s = −γ* u with u = 1/(λ* + δ), so R = −s γ** − ½ s² λ** = u (a − b u) with
        # a = γ* γ**, b = ½ γ*² λ**: few passes over the [..., B, G, K] tensors
        inv = (lam_step + grid).reciprocal_()  # [..., B, G, K]
        a, b = gam_step * gam_eval, 0.5 * gam_step.square() * lam_eval
        reduction = (b * inv).neg_().add_(a).mul_(inv)
        bound = _lower_quantile(reduction, self.quantile)
        bound = torch.where(bound.isnan(), -math.inf, bound)  # [..., G, K]
        best = torch.where(bound >= 0, bound, -math.inf).argmax(dim=-2)  # first on ties
        delta = grid[:, 0][best]
        none = ~(bound >= 0).any(dim=-2)
        return torch.where(none, math.inf, delta), bound.amax(dim=-2)

    def _resampled_mean(self, samples: Tensor) -> Tensor:
        """Means of ``B`` bootstrap resamples: ``[..., N, K]`` -> ``[..., B, K]``."""
        n = samples.shape[-2]
        lead = samples.shape[:-2]
        idx = torch.randint(0, n, (*lead, self.resamples, n), generator=self._generator)
        idx = idx.to(samples.device)
        if not lead:
            return samples[idx].mean(-2)
        flat = samples.reshape(-1, n, samples.shape[-1])  # [P, N, K]
        rows = torch.arange(flat.shape[0], device=samples.device)[:, None, None]
        picked = flat[rows, idx.reshape(flat.shape[0], self.resamples, n)]  # [P, B, N, K]
        return picked.mean(-2).reshape(*lead, self.resamples, samples.shape[-1])

    def __repr__(self) -> str:
        return (
            f"BootstrapDamping(grid=[{float(self.grid[0]):g}..{float(self.grid[-1]):g}] "
            f"x{self.grid.numel()}, resamples={self.resamples}, quantile={self.quantile:g}, "
            f"seed={self.seed})"
        )


def _lower_quantile(values: Tensor, q: float) -> Tensor:
    """Quantile over dim ``-3`` (the resamples) with linear interpolation: ``[..., B, G, K]``.

    Same definition as ``torch.quantile`` (which refuses inputs above 2**24 elements).
    """
    count = values.shape[-3]
    pos = q * (count - 1)
    lo = math.floor(pos)
    frac = pos - lo
    hi = min(lo + 1, count - 1)
    # the hi + 1 smallest values suffice (much cheaper than a full sort for small q)
    ordered = values.topk(hi + 1, dim=-3, largest=False, sorted=True).values
    low = ordered.select(-3, lo)
    return low + frac * (ordered.select(-3, hi) - low)
