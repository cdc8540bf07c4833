"""The gradient-noise spectrum from the per-sample gradients' ``N x N`` Gram matrix.

With ``g_n`` sample n's contribution to the batch gradient (``Σ_n g_n = g``, MATH.md) and
``M = [N·g_1 … N·g_N]`` (``D x N``), two ``D x D`` matrices describe the mini-batch noise:

- the *gradient covariance* ``C = (1/(N−1)) Σ_n (N g_n − g)(N g_n − g)ᵀ``, the unbiased
  covariance over samples of ``N·g_n`` (whose mean is ``g``), so that ``e_kᵀ C e_k`` is
  exactly the variance of ``γ_nk`` that SNR(γ_k) divides by;
- the *gradient second moment* ``S = (1/N) Σ_n (N g_n)(N g_n)ᵀ`` (uncentred;
  ``S = ((N−1)/N)·C + g gᵀ``).

Neither is formed: with the Gram ``Γ = [g_1 … g_N]ᵀ [g_1 … g_N]`` (``[N, N]``),
``MᵀM = N²·Γ``, so the non-zero eigenvalues of ``S = (1/N) M Mᵀ`` are those of ``N·Γ``, and
those of ``C = (1/(N−1)) (MP)(MP)ᵀ`` (``P = I − 11ᵀ/N`` centres the columns) are those of
``(N²/(N−1))·PΓP``.

With gradient sub-sampling (``subsample_grad``) the sums run over the ``N_g`` samples of the
subset: ``Γ`` is ``N_g x N_g``, the covariance is that of the subset (``1/(N_g − 1)``, centred
on the subset's mean) and the second moment ``1/N_g``, still of ``N·g_n`` with the batch's N.
"""

from __future__ import annotations

import torch
from torch import Tensor

from curvscope.probe.vivit.spectrum import default_rtol, nontrivial_eigh

__all__ = ["centred", "gradient_covariance_eigvals", "gradient_moment_eigvals"]


def centred(gram: Tensor) -> Tensor:
    """``P Γ P`` with ``P = I − 11ᵀ/N``: the Gram matrix of the centred columns, ``[N, N]``."""
    row = gram.mean(1, keepdim=True)
    col = gram.mean(0, keepdim=True)
    return gram - row - col + gram.mean()


def gradient_covariance_eigvals(
    grad_gram: Tensor, rtol: float | None = None, batch_size: int | None = None
) -> Tensor:
    """Non-zero eigenvalues of the gradient covariance ``C``, descending.

    Args:
        grad_gram: ``[N_g, N_g]`` ``Γ_nm = g_nᵀ g_m`` (all N samples, or a subset).
        rtol: relative cutoff of :func:`~curvscope.probe.vivit.spectrum.nontrivial_eigh`.
        batch_size: N, the batch the ``g_n`` are contributions to (default ``N_g``).

    Returns:
        ``[K_g]`` with ``K_g <= N_g − 1`` (empty for ``N_g < 2``: no covariance from one
        sample), the eigenvalues above ``rtol`` times the largest of the *uncentred*
        ``(N²/(N_g−1))·Γ`` (default ``rtol = N_g·eps``): identical per-sample gradients give
        none, not their round-off.
    """
    m = grad_gram.shape[0]
    n = m if batch_size is None else batch_size
    if m < 2:
        return grad_gram.new_zeros(0)
    scale = n * n / (m - 1)
    evals = torch.linalg.eigvalsh(centred(grad_gram) * scale).flip(0)
    # The cutoff is relative to the *uncentred* Gram's largest eigenvalue: centring identical
    # gradients leaves round-off, whose own largest eigenvalue must not count as a scale.
    if rtol is None:
        rtol = default_rtol(m, grad_gram.dtype)
    reference = float(torch.linalg.eigvalsh(grad_gram)[-1]) * scale
    if reference <= 0:
        return evals[:0]
    return evals[evals > rtol * reference]


def gradient_moment_eigvals(
    grad_gram: Tensor, rtol: float | None = None, batch_size: int | None = None
) -> Tensor:
    """Non-zero eigenvalues of the uncentred second moment ``S``, descending.

    Args:
        grad_gram: ``[N_g, N_g]`` ``Γ_nm = g_nᵀ g_m``; rtol, batch_size: as for the
            covariance.

    Returns:
        ``[K_s]`` with ``K_s <= N_g``.
    """
    m = grad_gram.shape[0]
    n = m if batch_size is None else batch_size
    eigvals, _ = nontrivial_eigh(grad_gram * (n * n / max(m, 1)), rtol)
    return eigvals
