"""Accumulate one parameter group's Gram matrix ``Vᵀ V`` and ``Vᵀ g_n`` over its layers (and,
when asked for, the per-sample gradients' Gram matrix ``[g_1 … g_N]ᵀ [g_1 … g_N]``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from curvscope.probe.vivit.factors import Factor

__all__ = ["GramAccumulator"]


class GramAccumulator:
    """Sums per-parameter contributions as BackPACK hands them over during backward.

    ``Gram = Σ_p V_pᵀ V_p`` (``[R, R]``) and ``Vᵀ g_n = Σ_p V_pᵀ g_{n,p}`` (``[R, N]``) are
    exact sums over the group's parameters, so every factor can be dropped once added,
    unless ``keep_factors`` asks to keep them for lifting eigenvectors to parameter space.
    So is the per-sample gradients' Gram ``grad_gram = Σ_p G_pᵀ G_p`` (``[N, N]``, ``G_p``
    the ``[P, N]`` per-sample gradients of parameter p), summed when ``grad_gram`` is set.

    Args:
        name: the group's name.
        params: the group's parameters, in order.
        keep_factors: keep each parameter's factor for :meth:`lift`.
        grad_gram: also sum the per-sample gradients' Gram matrix.
        grad_subset: the per-sample quantities (``Vᵀ g_n``, the gradients' Gram) of these
            batch indices only (``subsample_grad``); then ``vt_grad = Vᵀ g`` (``[R]``) of the
            batch gradient is summed too. ``None``: all samples.
    """

    def __init__(
        self,
        name: str,
        params: list[nn.Parameter],
        keep_factors: bool,
        grad_gram: bool = False,
        grad_subset: list[int] | None = None,
    ) -> None:
        self.name = name
        self.params = params
        self.keep_factors = keep_factors
        self.want_grad_gram = grad_gram
        self.grad_subset = grad_subset
        self.vt_grad: Tensor | None = None
        self.gram: Tensor | None = None
        self.vt_grads: Tensor | None = None
        self.grad_norm_sq: Tensor | None = None
        self.grad_gram: Tensor | None = None
        self.factors: dict[int, Factor] = {}

    def add(self, param: nn.Parameter, factor: Factor) -> None:
        """Fold ``factor`` (of one of this group's parameters) into the sums."""
        gram, vtg, grad = factor.gram(), factor.vt_grads(self.grad_subset), factor.grad()
        sq = (grad * grad).sum()
        if self.gram is None:
            self.gram, self.vt_grads, self.grad_norm_sq = gram, vtg, sq
        else:
            self.gram = self.gram + gram
            self.vt_grads = self.vt_grads + vtg
            self.grad_norm_sq = self.grad_norm_sq + sq
        if self.grad_subset is not None:
            vg = factor.vt_grad(grad)
            self.vt_grad = vg if self.vt_grad is None else self.vt_grad + vg
        if self.want_grad_gram:
            gg = factor.grad_gram(self.grad_subset)
            self.grad_gram = gg if self.grad_gram is None else self.grad_gram + gg
        if self.keep_factors:
            self.factors[id(param)] = factor

    def lift(self, coeffs: Tensor) -> list[Tensor]:
        """``V @ coeffs`` per parameter: ``coeffs`` ``[R, K]`` -> list of ``[K, *p.shape]``.

        Parameters that did not take part in the forward pass get zeros.
        """
        if not self.keep_factors:
            raise RuntimeError(f"group {self.name!r} did not keep its factors")
        out = []
        for p in self.params:
            factor = self.factors.get(id(p))
            if factor is None:
                out.append(torch.zeros(coeffs.shape[1], *p.shape, dtype=p.dtype, device=p.device))
            else:
                out.append(factor.lift(coeffs))
        return out
