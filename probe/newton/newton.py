"""Damped Newton steps in the non-trivial GGN eigenspace (paper §4.2, MATH.md).

``Δθ = −Σ_k γ_k / (λ_k + δ_k) · e_k`` over the ``K'`` directions a snapshot group carries;
flat (zero-curvature) directions are left alone. The sum is formed in Gram space and
lifted with one application of ``V`` (:meth:`GroupSpectrum.combine`), so the step costs
one ``O(R·D)`` product however many directions it uses.
"""

from __future__ import annotations

import torch
from torch import Tensor

from curvscope.probe.newton.damping import ConstantDamping, DampingPolicy
from curvscope.probe.snapshot import GroupSpectrum

__all__ = ["damped_newton_step", "newton_coefficients", "newton_step"]


def newton_coefficients(gamma: Tensor, lam: Tensor, delta: Tensor) -> Tensor:
    """``−γ_k / (λ_k + δ_k)``, all ``[K]``; an infinite ``δ_k`` gives ``0``."""
    coeffs = -gamma / (lam + delta)
    return torch.where(delta.isinf(), torch.zeros_like(coeffs), coeffs)


def damped_newton_step(group: GroupSpectrum, damping: DampingPolicy | float) -> list[Tensor]:
    """The damped Newton step of one parameter group, in parameter shapes.

    Uses the group's ``K'`` directions (all non-trivial ones unless ``top_k`` was set):
    ``γ_k`` is the batch mean of ``group.gammas``, ``λ_k`` the eigenvalue, and
    ``δ_k = damping(group.gammas, group.lambdas)``.

    Args:
        group: a snapshot group computed with ``keep_factors=True``.
        damping: a policy (:class:`ConstantDamping`, :class:`BootstrapDamping`, ...) or a
            number (constant damping).

    Returns:
        tensors shaped like ``group.params``.

    Raises:
        RuntimeError: the snapshot kept no GGN factors.
    """
    policy = ConstantDamping(damping) if isinstance(damping, (int, float)) else damping
    return newton_step(group, policy(group.gammas, group.lambdas))


def newton_step(group: GroupSpectrum, delta: Tensor) -> list[Tensor]:
    """``−Σ_k γ_k / (λ_k + δ_k) · e_k`` for given dampings ``delta`` ``[K']``, in parameter shapes.

    An infinite ``δ_k`` drops direction ``k``. The result is detached from autograd.
    Raises ``RuntimeError`` without kept factors.
    """
    count = group.gammas.shape[1]
    if delta.shape != (count,):
        raise ValueError(f"delta has shape {tuple(delta.shape)}, expected ({count},)")
    if count == 0:
        return [torch.zeros_like(p) for p in group.params]
    lam = group.selected_eigvals
    coeffs = newton_coefficients(group.gamma, lam, delta.to(lam)).detach()
    return [t.detach() for t in group.combine(coeffs)]
