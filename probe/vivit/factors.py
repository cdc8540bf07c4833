"""Per-parameter pieces of the GGN factor ``V`` and of the per-sample gradients.

A *factor* holds, for one parameter ``p`` with ``P`` entries, what the snapshot needs of
the rows ``V_p`` (``P x R``, ``R = C·M`` columns, column ``r = c·M + m`` for factor ``c``
of curvature sample ``m``) and of the per-sample gradients ``g_{n,p}`` (``n = 1..N``):

- :meth:`gram`: ``V_pᵀ V_p``, shape ``[R, R]`` (this parameter's Gram contribution);
- :meth:`vt_grads`: ``V_pᵀ [g_1 … g_N]``, shape ``[R, N]`` (or of the samples of a subset);
- :meth:`vt_grad`: ``V_pᵀ g`` for the batch gradient ``g = Σ_n g_n`` (:meth:`grad`'s,
  passed in: it is not formed twice), shape ``[R]``;
- :meth:`grad`: the batch gradient ``g_p = Σ_n g_{n,p}``, shaped like ``p``;
- :meth:`lift`: ``V_p C`` for coefficients ``C`` of shape ``[R, K]``, shape ``[K, *p.shape]``;
- :meth:`grad_gram`: ``[g_1 … g_N]ᵀ [g_1 … g_N]``, shape ``[N, N]`` (this parameter's part of
  the per-sample gradients' Gram matrix, for the gradient-noise spectrum; or of a subset).

The per-sample methods take ``subset``, the batch indices of the ``N_g`` samples the
per-sample gradients are wanted for (``ViViTConfig(subsample_grad=...)``; ``None``: all N).

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
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal, get_args

import torch
from torch import Tensor

__all__ = [
    "ExpandedFactor",
    "Factor",
    "FactorForm",
    "OuterProductFactor",
    "ReducedFactor",
    "current_form",
    "factor_form",
]

FactorForm = Literal["auto", "structured", "expanded", "backpack"]
_FORM: ContextVar[FactorForm] = ContextVar("curvscope_factor_form", default="auto")


@contextmanager
def factor_form(form: FactorForm) -> Iterator[None]:
    """Force the form of every factor built inside (tests and benchmarks).

    ``"auto"`` (the default) lets :func:`~curvscope.probe.vivit.factors.prefer_structured`
    choose per layer; ``"structured"`` uses the structured form wherever a handler has
    one; ``"expanded"`` expands every weight (with the handler's own expansion where it
    has one, e.g. convolutions); ``"backpack"`` always uses BackPACK's generic expansion.
    """
    if form not in get_args(FactorForm):
        raise ValueError(f"unknown factor form {form!r}")
    token = _FORM.set(form)
    try:
        yield
    finally:
        _FORM.reset(token)


def current_form() -> FactorForm:
    """The form forced by the innermost :func:`factor_form` (``"auto"`` outside)."""
    return _FORM.get()


class Factor(ABC):
    """What one parameter contributes to the Gram matrix and the directional derivatives."""

    shape: torch.Size

    @abstractmethod
    def gram(self) -> Tensor:
        """``V_pᵀ V_p``, shape ``[R, R]``."""

    @abstractmethod
    def vt_grads(self, subset: list[int] | None = None) -> Tensor:
        """``V_pᵀ g_n`` for every sample of the batch, ``[R, N]`` (of ``subset``: ``[R, N_g]``)."""

    @abstractmethod
    def vt_grad(self, grad: Tensor) -> Tensor:
        """``V_pᵀ g`` for the batch gradient ``g = Σ_n g_n`` (``grad``, what :meth:`grad`
        returned), shape ``[R]``."""

    @abstractmethod
    def grad(self) -> Tensor:
        """The batch gradient ``Σ_n g_{n,p}``, shaped like the parameter."""

    @abstractmethod
    def lift(self, coeffs: Tensor) -> Tensor:
        """``V_p @ coeffs`` for ``coeffs`` of shape ``[R, K]``; returns ``[K, *shape]``."""

    @abstractmethod
    def grad_gram(self, subset: list[int] | None = None) -> Tensor:
        """``g_{n,p}ᵀ g_{n',p}`` for every pair of samples (of ``subset``), ``[N, N]``."""


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
        return symmetric_gram(self._v)

    def _per_sample(self, subset: list[int] | None) -> Tensor:
        return self._g if subset is None else self._g[subset]

    def vt_grads(self, subset: list[int] | None = None) -> Tensor:
        return self._v @ self._per_sample(subset).T

    def vt_grad(self, grad: Tensor) -> Tensor:
        return self._v @ grad.reshape(-1)

    def grad(self) -> Tensor:
        return self._g.sum(0).reshape(self.shape)

    def lift(self, coeffs: Tensor) -> Tensor:
        return (coeffs.T @ self._v).reshape(-1, *self.shape)

    def grad_gram(self, subset: list[int] | None = None) -> Tensor:
        return symmetric_gram(self._per_sample(subset))


class ReducedFactor(Factor):
    """Dense rows of ``V`` with ``Vᵀ g_n`` and ``g`` already reduced.

    For the ``func`` backend's generic path: the per-sample gradients arrive in chunks and
    are folded into ``Vᵀ g_n`` (and, when asked for, their Gram matrix) as they come,
    never stored for all samples at once. They are computed for one set of samples only
    (``subset``), so the per-sample methods must be asked for that same set.

    Args:
        v: ``[R, *shape]`` the factor's columns; vt_grads: ``[R, N_g]``; grad: ``shape``,
            the batch gradient;
        grad_gram: ``[N_g, N_g]`` the per-sample gradients' Gram matrix, or ``None`` (not
            computed: :meth:`grad_gram` raises);
        subset: the ``N_g`` samples of ``vt_grads`` and ``grad_gram`` (``None``: all).
    """

    def __init__(
        self,
        v: Tensor,
        vt_grads: Tensor,
        grad: Tensor,
        grad_gram: Tensor | None = None,
        subset: list[int] | None = None,
    ) -> None:
        self.shape = grad.shape
        self._v = v.reshape(v.shape[0], -1)
        self._vtg = vt_grads
        self._grad = grad
        self._grad_gram = grad_gram
        self._subset = subset

    def _check(self, subset: list[int] | None) -> None:
        if subset != self._subset:
            raise RuntimeError(
                f"this factor holds the per-sample gradients of samples {self._subset}, "
                f"not {subset}"
            )

    def gram(self) -> Tensor:
        return symmetric_gram(self._v)

    def vt_grads(self, subset: list[int] | None = None) -> Tensor:
        self._check(subset)
        return self._vtg

    def vt_grad(self, grad: Tensor) -> Tensor:
        return self._v @ grad.reshape(-1)

    def grad(self) -> Tensor:
        return self._grad

    def lift(self, coeffs: Tensor) -> Tensor:
        return (coeffs.T @ self._v).reshape(-1, *self.shape)

    def grad_gram(self, subset: list[int] | None = None) -> Tensor:
        self._check(subset)
        if self._grad_gram is None:
            raise RuntimeError("this factor was built without the per-sample gradients' Gram")
        return self._grad_gram


def symmetric_gram(v: Tensor) -> Tensor:
    """``v @ v.T`` for ``v`` ``[R, P]``, forming only the blocks on and above the diagonal.

    With ``B`` row blocks this costs ``(B + 1) / (2B)`` of the plain product (5/8 for the
    ``B = 4`` used from ``R >= 256`` on); the lower blocks are mirrored.
    """
    r = v.shape[0]
    blocks = 4 if r >= 256 else 1
    if blocks == 1:
        return v @ v.T
    out = v.new_empty(r, r)
    b = -(-r // blocks)
    for i in range(0, r, b):
        block = v[i : i + b] @ v[i:].T  # rows i..i+b, columns i..R
        out[i : i + b, i:] = block
        out[i + b :, i : i + b] = block[:, b:].T
    return out


class OuterProductFactor(Factor):
    """Rows of ``V`` of a weight used as ``z_t = W a_t`` (or a bias), never expanded.

    Grouped weights (grouped convolutions) are block-diagonal: ``W`` is ``G`` blocks of
    ``O x I`` (``O``, ``I`` per group), block ``j`` maps input group ``j`` to output group
    ``j``. Ungrouped layers pass tensors without the group axis (``G = 1``).

    Args:
        backproped: ``[C, M, T, (G,) O]``, the GGN factor backpropagated to the layer output.
        grad_out: ``[N, T, (G,) O]``, the gradient of the batch loss w.r.t. the layer output.
        inputs: ``[N, T, (G,) I]``, the layer input at every position, or ``None`` for a bias.
        subsampling: the batch indices of the M curvature samples (``None``: all N).
        shape: the parameter's shape (``G·O x I`` elements, or ``G·O`` for a bias).

    The structured products cost ``O(G (R·T)² (O + I))`` (:func:`prefer_structured`
    compares them with the expanded form). Intermediates are chunked over positions so that
    none holds more than :data:`CHUNK_ELEMENTS` entries (at least one position's worth).
    """

    def __init__(
        self,
        backproped: Tensor,
        grad_out: Tensor,
        inputs: Tensor | None,
        subsampling: list[int] | None,
        shape: torch.Size,
    ) -> None:
        grouped = grad_out.dim() == 4
        if not grouped:
            backproped, grad_out = backproped.unsqueeze(3), grad_out.unsqueeze(2)
            inputs = None if inputs is None else inputs.unsqueeze(2)
        self.shape = shape
        self._c, self._m = backproped.shape[:2]
        self._s = backproped.flatten(end_dim=1)  # [R, T, G, O]
        self._g = grad_out  # [N, T, G, O]
        self._a = inputs  # [N, T, G, I] or None
        self._a_sub = (
            None if inputs is None or subsampling is None else inputs[subsampling]
        )  # [M, T, G, I]

    def _curv_inputs(self) -> Tensor | None:
        return self._a if self._a_sub is None else self._a_sub

    def _tile(self, mat: Tensor) -> Tensor:
        """Repeat ``[M, ...]`` rows so that row ``c·M + m`` holds sample m's row."""
        return mat.repeat(self._c, *([1] * (mat.dim() - 1)))

    def _pairs(
        self,
        left: Tensor,
        right: Tensor,
        a_left: Tensor,
        a_right: Tensor,
        factors: tuple[int, int] | None = None,
    ) -> Tensor:
        """``out[x, y] = Σ_{g,t,u} (l_{x,t,g}·r_{y,u,g}) (a_{m(x),t,g}·b_{y',u,g})``.

        ``l = left``: ``[C·M, T, G, O]`` factor columns (sample ``m(x) = x mod M``) with
        inputs ``a = a_left`` ``[M, T, G, I]``; ``r = right``: ``[Y, T, G, O]`` with inputs
        ``b = a_right`` ``[Y', T, G, I]``, ``Y = C'·Y'``, ``y' = y mod Y'`` (tiled like the
        left side). Returns ``[C·M, Y]``. ``factors``: ``(C, M)`` of the left side when it
        is not the factor's own (``(1, N)`` for the per-sample gradients).

        Evaluation order: the input products ``a·b`` (``[Y', M, T, T]``) are contracted
        with ``r`` first (``M·Y·T²·O``, a batched product over ``y'``), then with ``l``
        (``C·M·Y·T·O``, batched over ``m``); forming all ``l·r`` products instead would cost
        ``C·M·Y·T²·O``, C times more. Chunked over samples and positions so that no
        intermediate exceeds :data:`CHUNK_ELEMENTS` (at least one position's worth).
        """
        c, m = (self._c, self._m) if factors is None else factors
        y, t, groups, o = right.shape
        yp = a_right.shape[0]
        cy = y // yp
        left = left.reshape(c, m, t, groups, o)
        out = left.new_zeros(m, c, yp, cy)  # out[m, c, n, d] = result[c·M + m, d·Y' + n]
        budget = max(1, CHUNK_ELEMENTS // max(yp * t, y * o))  # (sample, position) pairs
        tb = min(t, budget)
        mb = max(1, budget // tb)
        for g in range(groups):
            # r[n, u, (o, d)]: right's columns of sample n, position u
            r_g = right[:, :, g].reshape(cy, yp, t, o).permute(1, 2, 3, 0).reshape(yp, t, o * cy)
            for m0 in range(0, m, mb):
                ms = slice(m0, m0 + mb)
                for t0 in range(0, t, tb):
                    ts = slice(t0, t0 + tb)
                    ab = torch.einsum("mti,nui->nmtu", a_left[ms, ts, g], a_right[:, :, g])
                    mm, tt = ab.shape[1], ab.shape[2]
                    # p[n, (m, t), (o, d)] = Σ_u ab[n, m, t, u] r[n, u, (o, d)]
                    p = torch.bmm(ab.reshape(yp, mm * tt, t), r_g)
                    p = p.reshape(yp, mm, tt * o, cy).permute(1, 2, 0, 3).reshape(mm, tt * o, y)
                    lft = left[:, ms, ts, g].permute(1, 0, 2, 3).reshape(mm, c, tt * o)
                    out[ms] += torch.bmm(lft, p).reshape(mm, c, yp, cy)
        return out.permute(1, 0, 3, 2).reshape(c * m, y)

    def gram(self) -> Tensor:
        s, a = self._s, self._curv_inputs()
        if a is None:  # bias: v_r = Σ_t s_{r,t}
            s_sum = s.sum(1).flatten(start_dim=1)
            return s_sum @ s_sum.T
        if s.shape[1] == 1 and s.shape[2] == 1:  # (S Sᵀ) ⊙ (A Aᵀ), tiled over factors
            s0, a0 = s[:, 0, 0], a[:, 0, 0]
            return (s0 @ s0.T) * (a0 @ a0.T).repeat(self._c, self._c)
        return self._pairs(s, s, a, a)

    def _samples(self, subset: list[int] | None) -> tuple[Tensor, Tensor | None]:
        """Gradients ``[N_g, T, G, O]`` and inputs of the samples ``subset`` (``None``: all)."""
        if subset is None:
            return self._g, self._a
        return self._g[subset], None if self._a is None else self._a[subset]

    def vt_grads(self, subset: list[int] | None = None) -> Tensor:
        s, a_curv = self._s, self._curv_inputs()
        g, a = self._samples(subset)
        if a is None or a_curv is None:
            return s.sum(1).flatten(start_dim=1) @ g.sum(1).flatten(start_dim=1).T
        if s.shape[1] == 1 and s.shape[2] == 1:
            return (s[:, 0, 0] @ g[:, 0, 0].T) * self._tile(a_curv[:, 0, 0] @ a[:, 0, 0].T)
        return self._pairs(s, g, a_curv, a)

    def vt_grad(self, grad: Tensor) -> Tensor:
        s, a_curv = self._s, self._curv_inputs()
        if a_curv is None:  # bias: v_rᵀ g = (Σ_t s_{r,t})ᵀ g
            return s.sum(1).flatten(start_dim=1) @ grad.reshape(-1)
        # v_rᵀ g = Σ_t s_{r,t}ᵀ W_g a_{m(r),t} with W_g the batch gradient, per group
        w = grad.reshape(s.shape[2], s.shape[3], -1)  # [G, O, I], as grad() formed it
        c, m = self._c, self._m
        s = s.reshape(c, m, *s.shape[1:])  # [C, M, T, G, O]
        out = s.new_empty(c, m)
        step = max(1, CHUNK_ELEMENTS // max(1, c * a_curv[0].numel()))  # samples per chunk
        for m0 in range(0, m, step):
            ms = slice(m0, m0 + step)
            sw = torch.einsum("cmtgo,goi->cmtgi", s[:, ms], w)
            out[:, ms] = (sw * a_curv[ms]).sum((2, 3, 4))
        return out.reshape(c * m)

    def grad_gram(self, subset: list[int] | None = None) -> Tensor:
        # g_n = Σ_t g_{n,t} a_{n,t}ᵀ: the same pairs as the Gram, with the gradients as columns
        g, a = self._samples(subset)
        if a is None:
            g_sum = g.sum(1).flatten(start_dim=1)
            return g_sum @ g_sum.T
        if g.shape[1] == 1 and g.shape[2] == 1:
            g0, a0 = g[:, 0, 0], a[:, 0, 0]
            return (g0 @ g0.T) * (a0 @ a0.T)
        return self._pairs(g, g, a, a, factors=(1, g.shape[0]))

    def grad(self) -> Tensor:
        if self._a is None:
            return self._g.sum((0, 1)).reshape(self.shape)
        return torch.einsum("ntgo,ntgi->goi", self._g, self._a).reshape(self.shape)

    def lift(self, coeffs: Tensor) -> Tensor:
        s, a = self._s, self._curv_inputs()
        if a is None:
            return torch.einsum("rk,rtgo->kgo", coeffs, s).reshape(-1, *self.shape)
        c, m = self._c, self._m
        k = coeffs.shape[1]
        # contract the factor index c first: w[k, m] = Σ_c coeffs[c·M + m, k] s[c·M + m]
        w = torch.einsum("cmk,cmx->kmx", coeffs.reshape(c, m, k), s.reshape(c, m, -1))
        w = w.reshape(k, m, *s.shape[1:])  # [K, M, T, G, O]
        return torch.einsum("kmtgo,mtgi->kgoi", w, a).reshape(-1, *self.shape)


CHUNK_ELEMENTS = 1 << 24
"""Largest intermediate (entries) :class:`OuterProductFactor` forms at once (64 MiB in fp32)."""


def prefer_structured(
    r: int, t: int, n: int, out_dim: int, in_dim: int, groups: int = 1, m: int | None = None
) -> bool:
    """Cost model: is :class:`OuterProductFactor` cheaper than :class:`ExpandedFactor`?

    Counts multiply-adds of one weight of ``G`` blocks ``O x I`` (``P = G·O·I`` entries)
    used at ``T`` positions, with ``R = C·M`` factor columns from ``M`` curvature samples
    and ``N`` samples for the gradients:

    - structured (per group, :meth:`OuterProductFactor._pairs`): Gram
      ``(M·T)²·I + M·R·T²·O + R²·T·O``, ``Vᵀ g`` ``M·N·T²·(I + O) + R·N·T·O``;
    - expanded: forming ``V`` (``R·T·P``) and the per-sample gradients (``N·T·P``), the
      Gram (``R²·P``, :func:`symmetric_gram` does 5/8 of it) and ``Vᵀ g`` (``R·N·P``).

    Multiply-adds alone favour the structured form too often: its batched products have
    short inner dimensions (``T`` or ``O``) and its intermediates (``M·T·O·(R + N)`` entries
    per group, written, permuted and read) are streamed through memory, while the expanded
    form's Gram is one long, compute-bound product. So each entry streamed (about three
    passes over each intermediate, ``V`` and the per-sample gradients for the expanded
    form) is charged :data:`MOVE_COST` multiply-adds. On 3c3d (N = 64) this keeps the
    three convolutions expanded (the 6x6 one measured 6.8 s structured against 4.1 s
    expanded, although it needs 3x fewer multiply-adds) and the linear layers structured.

    The structured form wins when the positions are few relative to the weight (linear
    layers, convolutions on small feature maps); the expanded form wins for convolutions
    over many positions. The structured form's intermediates are chunked
    (:data:`CHUNK_ELEMENTS`), so either form's memory stays bounded by ``V``'s size.
    """
    m = n if m is None else m
    tt = t * t
    params = groups * out_dim * in_dim
    gram = m * m * tt * in_dim + m * r * tt * out_dim + r * r * t * out_dim
    vt_grads = m * n * tt * (in_dim + out_dim) + r * n * t * out_dim
    streamed = 3 * m * t * (out_dim * (r + n) + t * (m + n))
    structured = groups * (gram + vt_grads + MOVE_COST * streamed)
    expanded = (r * t + n * t + (5 * r * r) // 8 + r * n) * params
    expanded += MOVE_COST * 3 * (r + n) * params
    return structured < expanded


MOVE_COST = 250
"""Multiply-adds charged per tensor entry streamed through memory (:func:`prefer_structured`).

Calibrated on the 2-core AVX2 benchmark machine: long float32 GEMMs run at ~25 GFLOP/s,
permuting copies and short-inner-dimension batched products at ~0.1 G entries/s."""
