"""Per-sample directional derivatives along the GGN eigenvectors, and lifting them.

Index conventions: the Gram matrix's row ``r = c·M + m`` belongs to factor ``c`` of curvature
sample ``m`` (``C`` factors, ``M`` curvature samples, ``R = C·M``); ``ẽ_k`` are its unit
eigenvectors, ``e_k = V ẽ_k / √λ_k`` the GGN's.
"""

from __future__ import annotations

from torch import Tensor

__all__ = [
    "batch_directional_gradients",
    "directional_curvatures",
    "directional_gradients",
    "eigvec_coefficients",
]


def directional_gradients(
    vt_grads: Tensor, eigvals: Tensor, eigvecs: Tensor, batch_size: int | None = None
) -> Tensor:
    """``γ_nk = N · e_kᵀ g_n = N · ẽ_kᵀ (Vᵀ g_n) / √λ_k``.

    Args:
        vt_grads: ``[R, N_g]``, ``Vᵀ g_n`` for every sample n of the batch (or of a subset).
        eigvals: ``[K]``; eigvecs: ``[R, K]`` (Gram eigenpairs).
        batch_size: N (default ``N_g``: the columns are the whole batch).

    Returns:
        ``[N_g, K]``; over the whole batch, ``mean_n γ_nk = e_kᵀ g``.
    """
    n = vt_grads.shape[1] if batch_size is None else batch_size
    return n * (vt_grads.T @ eigvecs) / eigvals.sqrt()


def batch_directional_gradients(vt_grad: Tensor, eigvals: Tensor, eigvecs: Tensor) -> Tensor:
    """``γ_k = e_kᵀ g = ẽ_kᵀ (Vᵀ g) / √λ_k`` from ``Vᵀ g`` ``[R]`` (batch gradient): ``[K]``."""
    return (vt_grad @ eigvecs) / eigvals.sqrt()


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
