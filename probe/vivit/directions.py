"""Per-sample directional derivatives along the GGN eigenvectors, and lifting them.

Index conventions: the Gram matrix's row ``r = c·M + m`` belongs to factor ``c`` of curvature
sample ``m`` (``C`` factors, ``M`` curvature samples, ``R = C·M``); ``ẽ_k`` are its unit
eigenvectors, ``e_k = V ẽ_k / √λ_k`` the GGN's.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["directional_curvatures", "directional_gradients", "eigvec_coefficients"]


def directional_gradients(vt_grads: Tensor, eigvals: Tensor, eigvecs: Tensor) -> Tensor:
    """``γ_nk = N · e_kᵀ g_n = N · ẽ_kᵀ (Vᵀ g_n) / √λ_k``.

    Args:
        vt_grads: ``[R, N]``, ``Vᵀ g_n`` for every sample n of the batch.
        eigvals: ``[K]``; eigvecs: ``[R, K]`` (Gram eigenpairs).

    Returns:
        ``[N, K]``; ``mean_n γ_nk = e_kᵀ g``.
    """
    n = vt_grads.shape[1]
    return n * (vt_grads.T @ eigvecs) / eigvals.sqrt()


def directional_curvatures(eigvals: Tensor, eigvecs: Tensor, num_factors: int) -> Tensor:
    """``λ_nk = M · e_kᵀ G_n e_k = M · λ_k · ‖ẽ_k[n, :]‖²``, free from the Gram eigenvectors.

    Args:
        eigvals: ``[K]``; eigvecs: ``[R, K]`` with ``R = C·M``.
        num_factors: C (classes for exact curvature, MC samples for ``"mc"``).

    Returns:
        ``[M, K]`` for the M curvature samples; ``mean_m λ_mk = λ_k``.
    """
    r, k = eigvecs.shape
    m = r // num_factors
    per_sample = eigvecs.reshape(num_factors, m, k).square().sum(0)  # [M, K]
    return m * eigvals * per_sample


def eigvec_coefficients(eigvals: Tensor, eigvecs: Tensor) -> Tensor:
    """Gram-space coefficients of the GGN eigenvectors: ``e_k = V (ẽ_k / √λ_k)``, ``[R, K]``."""
    return eigvecs / eigvals.sqrt()
