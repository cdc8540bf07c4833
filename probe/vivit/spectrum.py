"""The non-trivial GGN spectrum from the Gram matrix."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["default_rtol", "nontrivial_eigh"]


def default_rtol(size: int, dtype: torch.dtype) -> float:
    """Default relative cutoff ``R · eps(dtype)`` for a Gram matrix of size ``R``.

    This is the rank tolerance of ``numpy.linalg.matrix_rank``: eigenvalues below it are
    indistinguishable from the round-off of a rank-deficient ``R x R`` matrix.
    """
    return size * torch.finfo(dtype).eps


def nontrivial_eigh(gram: Tensor, rtol: float | None = None) -> tuple[Tensor, Tensor]:
    """Eigenpairs of the Gram matrix above the cutoff, in descending order.

    Args:
        gram: ``[R, R]`` symmetric PSD Gram matrix ``Vᵀ V``.
        rtol: keep ``λ > rtol · λ_max`` (and ``λ > 0``); default :func:`default_rtol`.

    Returns:
        ``(eigvals, eigvecs)`` of shapes ``[K]`` and ``[R, K]``; ``K`` may be 0. The
        non-zero eigenvalues of ``G = V Vᵀ`` are exactly ``eigvals``.
    """
    size = gram.shape[0]
    if rtol is None:
        rtol = default_rtol(size, gram.dtype)
    evals, evecs = torch.linalg.eigh(0.5 * (gram + gram.T))
    evals, evecs = evals.flip(0), evecs.flip(1)
    if size == 0 or evals[0] <= 0:
        return evals[:0], evecs[:, :0]
    keep = int((evals > rtol * evals[0]).sum())
    return evals[:keep], evecs[:, :keep]
