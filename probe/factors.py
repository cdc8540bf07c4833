"""Per-parameter pieces of the GGN factor ``V`` and of the per-sample gradients.

A *factor* holds, for one parameter ``p`` with ``P`` entries, what the snapshot needs of
the rows ``V_p`` (``P x R``, ``R = C·M`` columns, column ``r = c·M + m`` for factor ``c``
of curvature sample ``m``) and of the per-sample gradients ``g_{n,p}`` (``n = 1..N``):

- :meth:`gram`: ``V_pᵀ V_p``, shape ``[R, R]`` (this parameter's Gram contribution);
- :meth:`vt_grads`: ``V_pᵀ [g_1 … g_N]``, shape ``[R, N]``;
- :meth:`grad`: the batch gradient ``g_p = Σ_n g_{n,p}``, shaped like ``p``;
- :meth:`lift`: ``V_p C`` for coefficients ``C`` of shape ``[R, K]``, shape ``[K, *p.shape]``.

Two forms exist. :class:`ExpandedFactor` stores ``V_p`` and the per-sample gradients as
dense tensors (BackPACK's ``SqrtGGN*`` and ``BatchGrad`` layouts): it works for every
layer. :class:`OuterProductFactor` never forms ``V_p``: for a weight ``W`` (``O x I``)
used as ``z_t = W a_t`` at positions ``t = 1..T`` (``T = 1`` for a plain linear layer,
extra input dimensions or convolution patches otherwise), the column ``v_r`` is
``Σ_t s_{r,t} a_{m,t}ᵀ``, where ``s`` is the factor backpropagated to the layer output
and ``a`` its input, so ``v_rᵀ v_q = Σ_{t,u} (s_{r,t}ᵀ s_{q,u}) (a_{m,t}ᵀ a_{m',u})``.
A bias is the same with ``a = 1``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

__all__ = ["ExpandedFactor", "Factor", "OuterProductFactor"]


class Factor(ABC):
    """What one parameter contributes to the Gram matrix and the directional derivatives."""

    shape: torch.Size

    @abstractmethod
    def gram(self) -> Tensor:
        """``V_pᵀ V_p``, shape ``[R, R]``."""

    @abstractmethod
    def vt_grads(self) -> Tensor:
        """``V_pᵀ g_n`` for every sample of the batch, shape ``[R, N]``."""

    @abstractmethod
    def grad(self) -> Tensor:
        """The batch gradient ``Σ_n g_{n,p}``, shaped like the parameter."""

    @abstractmethod
    def lift(self, coeffs: Tensor) -> Tensor:
        """``V_p @ coeffs`` for ``coeffs`` of shape ``[R, K]``; returns ``[K, *shape]``."""


class ExpandedFactor(Factor):
    """Dense rows of ``V`` and dense per-sample gradients of one parameter.

    Args:
        sqrt_ggn: ``[C, M, *shape]``, BackPACK's ``SqrtGGN{Exact,MC}`` layout.
        grad_batch: ``[N, *shape]``, the per-sample gradients (BackPACK's ``BatchGrad``).
    """

    def __init__(self, sqrt_ggn: Tensor, grad_batch: Tensor) -> None:
        self.shape = grad_batch.shape[1:]
        self._v = sqrt_ggn.flatten(start_dim=2).flatten(end_dim=1)  # [R, P]
        self._g = grad_batch.flatten(start_dim=1)  # [N, P]

    def gram(self) -> Tensor:
        return self._v @ self._v.T

    def vt_grads(self) -> Tensor:
        return self._v @ self._g.T

    def grad(self) -> Tensor:
        return self._g.sum(0).reshape(self.shape)

    def lift(self, coeffs: Tensor) -> Tensor:
        return (coeffs.T @ self._v).reshape(-1, *self.shape)


class OuterProductFactor(Factor):
    """Rows of ``V`` of a weight used as ``z_t = W a_t`` (or a bias), never expanded.

    Args:
        backproped: ``[C, M, T, O]``, the GGN factor backpropagated to the layer output.
        grad_out: ``[N, T, O]``, the gradient of the batch loss w.r.t. the layer output.
        inputs: ``[N, T, I]``, the layer input at every position, or ``None`` for a bias.
        subsampling: the batch indices of the M curvature samples (``None``: all N).
        shape: the parameter's shape (``O x I`` elements, or ``O`` for a bias).

    The structured products cost ``O((R·T)² (O + I))``; use :func:`prefer_structured`
    to compare with the expanded form before building one.
    """

    def __init__(
        self,
        backproped: Tensor,
        grad_out: Tensor,
        inputs: Tensor | None,
        subsampling: list[int] | None,
        shape: torch.Size,
    ) -> None:
        self.shape = shape
        c, m, t, o = backproped.shape
        self._s = backproped.reshape(c * m, t, o)  # [R, T, O]
        self._g = grad_out  # [N, T, O]
        self._a = inputs  # [N, T, I] or None
        self._a_sub = (
            None if inputs is None or subsampling is None else inputs[subsampling]
        )  # [M, T, I]
        self._c = c

    def _curv_inputs(self) -> Tensor | None:
        return self._a if self._a_sub is None else self._a_sub

    def _tile(self, mat: Tensor) -> Tensor:
        """Repeat ``[M, ...]`` rows so that row ``c·M + m`` holds sample m's row."""
        return mat.repeat(self._c, *([1] * (mat.dim() - 1)))

    def gram(self) -> Tensor:
        s, a = self._s, self._curv_inputs()
        if a is None:  # bias: v_r = Σ_t s_{r,t}
            s_sum = s.sum(1)
            return s_sum @ s_sum.T
        if s.shape[1] == 1:  # one position: (S Sᵀ) ⊙ (A Aᵀ), tiled over the factor index
            return (s[:, 0] @ s[:, 0].T) * (a[:, 0] @ a[:, 0].T).repeat(self._c, self._c)
        ss = torch.einsum("rto,quo->rtqu", s, s)
        aa = torch.einsum("mti,nui->mtnu", a, a)
        aa = aa.repeat(self._c, 1, self._c, 1)
        return torch.einsum("rtqu,rtqu->rq", ss, aa)

    def vt_grads(self) -> Tensor:
        s, g, a, a_curv = self._s, self._g, self._a, self._curv_inputs()
        if a is None or a_curv is None:
            return s.sum(1) @ g.sum(1).T
        if s.shape[1] == 1:
            return (s[:, 0] @ g[:, 0].T) * self._tile(a_curv[:, 0] @ a[:, 0].T)
        sg = torch.einsum("rto,nuo->rtnu", s, g)
        aa = self._tile(torch.einsum("mti,nui->mtnu", a_curv, a))
        return torch.einsum("rtnu,rtnu->rn", sg, aa)

    def grad(self) -> Tensor:
        if self._a is None:
            return self._g.sum((0, 1)).reshape(self.shape)
        return torch.einsum("nto,nti->oi", self._g, self._a).reshape(self.shape)

    def lift(self, coeffs: Tensor) -> Tensor:
        s, a = self._s, self._curv_inputs()
        if a is None:
            return torch.einsum("rk,rto->ko", coeffs, s).reshape(-1, *self.shape)
        c, m = self._c, a.shape[0]
        weighted = torch.einsum("rk,rto->krto", coeffs, s).reshape(-1, c, m, *s.shape[1:])
        return torch.einsum("kcmto,mti->koi", weighted, a).reshape(-1, *self.shape)


def prefer_structured(r: int, t: int, n: int, out_dim: int, in_dim: int) -> bool:
    """Cost model: is :class:`OuterProductFactor` cheaper than :class:`ExpandedFactor`?

    Counts multiply-adds of the Gram and ``Vᵀ g`` products for one weight with ``R``
    factor columns, ``T`` positions, ``N`` samples, ``O`` outputs and ``I`` inputs:

    - structured: ``(R·T)²·O + (M·T)²·I + (R·T)²`` for the Gram and
      ``R·N·T²·(O + I)`` for ``Vᵀ g`` (``M <= N`` samples, bounded by ``N``);
    - expanded: forming ``V`` (``R·T·O·I``), per-sample gradients (``N·T·O·I``), the
      Gram (``R²·O·I``) and ``Vᵀ g`` (``R·N·O·I``).

    Memory follows the same pattern (``(R·T)²`` against ``(R + N)·O·I``), so the cheaper
    form is also the smaller one in practice.
    """
    rt = r * t
    structured = (
        rt * rt * (out_dim + 1) + (n * t) ** 2 * in_dim + r * n * t * t * (out_dim + in_dim)
    )
    expanded = (r * t + n * t + r * r + r * n) * out_dim * in_dim
    return structured < expanded
