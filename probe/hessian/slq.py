"""Stochastic Lanczos quadrature (SLQ): the spectral density of ``H`` from a few probes.

The spectral density ``φ(t) = (1/dim) Σ_i δ(t − λ_i)`` is estimated as in Ghorbani, Krishnan
and Xiao (2019) and PyHessian: for a probe ``v`` with Rademacher entries ``±1/√dim``
(``‖v‖ = 1``), ``vᵀ f(H) v = Σ_i (vᵀ u_i)² f(λ_i)`` is an integral against ``v``'s spectral
measure, whose ``m``-point Gauss quadrature comes from ``m`` Lanczos steps started at ``v``:
nodes ``θ_j`` (the Ritz values, eigenvalues of the tridiagonal ``T``) and weights
``τ_j = s_{1j}²`` (squared first components of ``T``'s unit eigenvectors; they add up to 1).
The rule is exact for polynomials of degree ``≤ 2m − 1``, and ``E[vᵀ f(H) v] = tr f(H) / dim``
for Rademacher ``v``, so :func:`moments` (``j ≤ 2m − 1``) are unbiased estimates of
``tr(H^j) / dim``. Averaging over probes reduces the variance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from curvscope.probe.hessian.lanczos import Matvec, lanczos

__all__ = ["density_on_grid", "moments", "quadrature", "rademacher", "slq_density"]


def rademacher(
    dim: int,
    probes: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``[probes, dim]`` unit probes with independent entries ``±1/√dim``, equally likely."""
    signs = torch.randint(0, 2, (probes, dim), generator=generator, device=device)
    dtype = dtype or torch.get_default_dtype()
    return (2 * signs - 1).to(dtype) / math.sqrt(dim)


def quadrature(alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    """Gauss quadrature of a tridiagonal ``T``: nodes ``[m]`` (ascending), weights ``[m]``."""
    t = torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)
    nodes, vecs = torch.linalg.eigh(t)
    return nodes, vecs[0].square()


def slq_density(
    matvec: Matvec,
    dim: int,
    *,
    probes: int = 4,
    steps: int = 30,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """SLQ nodes and weights of ``H``'s spectral density, one row per probe.

    Args:
        matvec: the symmetric operator ``[dim] -> [dim]``.
        dim: its size; probes: how many Rademacher probes; steps: Lanczos steps per probe
            (``m = min(steps, dim)``; fewer where the probe's Krylov space is invariant, and
            then its quadrature is exact).
        generator: draws the probes; dtype, device: of the vectors.

    Returns:
        ``(nodes, weights)``, both ``[probes, m]``; each row's weights add up to 1. A probe
        that stopped early has its rows padded with its largest node at weight 0.
        ``probes · min(steps, dim)`` products at most.
    """
    if probes < 1 or steps < 1:
        raise ValueError(f"probes and steps must be positive, got {probes} and {steps}")
    m = min(steps, dim)
    vs = rademacher(dim, probes, generator=generator, dtype=dtype, device=device)
    all_nodes, all_weights = [], []
    for v in vs:
        alpha, beta, _ = lanczos(matvec, dim, m, v0=v, generator=generator)
        nodes, weights = quadrature(alpha, beta)
        pad = m - nodes.shape[0]
        all_nodes.append(torch.cat([nodes, nodes[-1:].expand(pad)]))
        all_weights.append(torch.cat([weights, weights.new_zeros(pad)]))
    return torch.stack(all_nodes), torch.stack(all_weights)


def moments(nodes: Tensor, weights: Tensor, orders: Sequence[int]) -> Tensor:
    """The quadrature estimates of ``tr(H^j) / dim`` for each ``j`` in ``orders``.

    ``nodes``, ``weights``: ``[probes, m]`` from :func:`slq_density`. Returns ``[len(orders)]``,
    the mean over probes of ``Σ_i τ_i θ_i^j`` (``j = 0`` gives 1; unbiased for
    ``j ≤ 2m − 1``).
    """
    powers = torch.stack([nodes.pow(j) for j in orders])  # [J, probes, m]
    return (powers * weights).sum(-1).mean(-1)


def density_on_grid(nodes: Tensor, weights: Tensor, grid: Tensor, sigma: float) -> Tensor:
    """The SLQ density broadened by Gaussians of width ``sigma``, on ``grid``.

    ``φ_σ(t) = mean_probes Σ_i τ_i N(t; θ_i, σ²)``, scaled so that its trapezoidal integral
    over ``grid`` (``[G]``, increasing) is 1.

    Returns:
        ``[G]``.

    Raises:
        ValueError: ``sigma ≤ 0``, or the grid misses the density (numerically zero on it).
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    z = (grid.reshape(-1, 1, 1) - nodes.to(grid)) / sigma  # [G, probes, m]
    gauss = torch.exp(-0.5 * z.square()) / (sigma * math.sqrt(2 * math.pi))
    density = (gauss * weights.to(grid)).sum(-1).mean(-1)
    total = torch.trapezoid(density, grid)
    if not float(total) > 0:
        raise ValueError("the grid holds none of the density: widen it or increase sigma")
    return density / total
