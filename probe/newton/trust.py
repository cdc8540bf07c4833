"""Live step trust (paper §4.2): could a damped Newton step along each direction be trusted now?

From one snapshot group's per-sample directional derivatives (MATH.md: ``γ_nk``, ``λ_nk``,
whose batch means are ``γ_k = e_kᵀ g`` and ``λ_k``), :func:`step_trust` gives per
selected direction ``k``:

- ``damping`` ``δ_k``: the :class:`~curvscope.probe.newton.damping.BootstrapDamping` choice
  (``inf`` where no damping on the grid has a non-negative bound: the step leaves ``e_k``
  alone);
- ``bound``: ``max_δ q_0.05(R_k(δ))``, the largest 5 % bootstrap quantile over the grid of
  the predicted reduction ``R = −s·γ** − ½ s²·λ**`` of the step ``s = −γ*/(λ* + δ)`` (step
  and evaluation from independent resamples). It is the bound of ``δ_k`` where ``>= 0``; a
  negative value means that no damping makes a step along ``e_k`` trustworthy;

and, for the whole group, ``newton_reduction``: the loss decrease that the group's GGN
quadratic model predicts for the damped Newton step ``Δθ = −Σ_k γ_k/(λ_k + δ_k) e_k`` on the
batch, ``Σ_k (−s_k γ_k − ½ s_k² λ_k)`` with ``s_k = −γ_k/(λ_k + δ_k)`` over the directions
with a finite ``δ_k`` (the ``e_k`` are orthonormal eigenvectors of G, so the model
``gᵀΔθ + ½ Δθᵀ G Δθ`` splits over them exactly). Each term is
``γ_k² (λ_k + 2δ_k) / (2 (λ_k + δ_k)²) >= 0``.

The bootstrap draws from a generator seeded afresh on every call, so the numbers are a
function of ``(γ_nk, λ_nk, λ_k)`` and the settings: a replay of a snapshot gives them again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from curvscope.probe.newton.damping import BootstrapDamping, predicted_reduction
from curvscope.probe.newton.newton import newton_coefficients
from curvscope.probe.snapshot import GroupSpectrum

__all__ = ["StepTrust", "attach_step_trust", "step_trust"]


@dataclass(frozen=True)
class StepTrust:
    """The step trust of one group's ``K'`` selected directions.

    Attributes:
        damping: ``[K']`` bootstrap dampings ``δ_k`` (``inf``: no trusted step along ``e_k``).
        bound: ``[K']`` the largest 5 % quantile of the predicted reduction over the grid.
        newton_reduction: the predicted loss decrease of the damped Newton step (``>= 0``).
    """

    damping: Tensor
    bound: Tensor
    newton_reduction: float


def step_trust(
    gammas: Tensor,
    lambdas: Tensor,
    eigvals: Tensor,
    *,
    resamples: int = 100,
    seed: int = 0,
    quantile: float = 0.05,
    grid: Tensor | None = None,
    gamma: Tensor | None = None,
) -> StepTrust:
    """The step trust of ``K'`` directions (see the module's docstring).

    Args:
        gammas: ``[N, K']`` per-sample directional gradients ``γ_nk``.
        lambdas: ``[N', K']`` per-sample directional curvatures ``λ_nk``.
        eigvals: ``[K']`` the directions' eigenvalues ``λ_k`` (the batch curvatures).
        resamples: bootstrap rounds B; seed: the bootstrap generator's seed.
        quantile: the lower quantile (default 5 %); grid: candidate dampings (default
            :class:`~curvscope.probe.newton.damping.BootstrapDamping`'s ``1e-3 .. 1e2``).
        gamma: ``[K']`` the batch ``γ_k`` of the Newton step (default ``gammas.mean(0)``;
            it differs where ``gammas`` are of a subset of the batch, ``subsample_grad``).

    Returns:
        :class:`StepTrust`, tensors in ``gammas``' dtype and device.
    """
    policy = BootstrapDamping(grid=grid, resamples=resamples, quantile=quantile, seed=seed)
    with torch.no_grad():
        gammas, lambdas = gammas.detach(), lambdas.detach()
        delta, bound = policy.choose(gammas, lambdas)
        gamma = gammas.mean(0) if gamma is None else gamma.detach().to(gammas)
        lam = eigvals.detach().to(gamma)
        step = newton_coefficients(gamma, lam, delta.to(gamma))
        reduction = predicted_reduction(step, gamma, lam)
        total = math.fsum(float(r) for r in reduction.double().cpu().tolist())
    return StepTrust(damping=delta.to(gamma), bound=bound.to(gamma), newton_reduction=total)


def attach_step_trust(group: GroupSpectrum, *, resamples: int = 100, seed: int = 0) -> None:
    """Fill in ``group.trust_damping``, ``trust_bound`` (``[K']``) and ``newton_reduction``
    from its ``gammas``, ``lambdas``, batch ``gamma`` and selected eigenvalues
    (:func:`step_trust`): the bootstrap resamples the samples ``gammas`` has, the Newton
    step uses the batch's ``γ_k`` as :func:`~curvscope.probe.newton.newton.newton_step` does.

    With fewer than 2 samples of γ or of λ (a batch of one, ``subsample_grad=1``,
    ``subsample=1``) every resample is the same sample: the bootstrap has no spread and would
    trust every direction. The fields are then left ``None`` (not computed), as SNR(γ) is
    undefined there too."""
    if group.gammas.shape[0] < 2 or group.lambdas.shape[0] < 2:
        return
    trust = step_trust(
        group.gammas,
        group.lambdas,
        group.selected_eigvals,
        resamples=resamples,
        seed=seed,
        gamma=group.gamma,
    )
    group.trust_damping = trust.damping
    group.trust_bound = trust.bound
    group.newton_reduction = trust.newton_reduction
