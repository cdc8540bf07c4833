"""Per-parameter GGN factors from the vectors backpropagated to a layer's output.

Given a :class:`~curvscope.probe.backends.tracer.Site`, the backpropagated curvature
columns ``s`` (``[K, M, T, ...]``: K columns of each of the M curvature samples at the T
positions of the sample's rows) and gradient vectors ``g`` (``[N, T, ...]``), each parameter
of the site gets a :class:`Piece`:

- linear and convolution weights and biases: an :class:`OuterPiece`, the column
  ``v_{k,m} = Σ_t s_{k,m,t} a_{m,t}ᵀ`` (``a`` the input, or the unfolded patches of a
  convolution; ``a = 1`` for a bias) -- structured, never expanded unless cheaper
  (:func:`~curvscope.probe.vivit.factors.prefer_structured`);
- embeddings: rows ``v_{k,m}[i] = Σ_{t: idx_{m,t} = i} s_{k,m,t}``, expanded on the rows the
  batch uses only (:class:`RowsFactor`);
- the affine parameters of ``layer_norm`` and ``batch_norm``: ``v_{k,m} = Σ_t s_{k,m,t} ⊙ x̂``
  (weight) and ``Σ_t s_{k,m,t}`` (bias), expanded (they are small).

A parameter used at several sites (a layer applied twice, tied weights) sums its pieces:
outer pieces of one shape are joined along the positions, anything else is expanded.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from curvscope.probe.backends.layout import Layout
from curvscope.probe.backends.tracer import Site
from curvscope.probe.vivit.conv_factors import unfold_groups
from curvscope.probe.vivit.factors import (
    ExpandedFactor,
    Factor,
    OuterProductFactor,
    current_form,
    prefer_structured,
)

__all__ = ["ExpandedPiece", "OuterPiece", "RowsFactor", "factor_of", "site_pieces"]


@dataclass
class OuterPiece:
    """``v_{k,m} = Σ_t s_{k,m,t} a_{m,t}ᵀ`` per group of a (grouped) weight, or a bias.

    Attributes:
        s: ``[K, M, T, G, O]`` curvature columns at the output; g: ``[N, T, G, O]``.
        a: ``[N, T, G, I]`` inputs of all N samples, or ``None`` for a bias.
    """

    s: Tensor
    g: Tensor
    a: Tensor | None
    subset: list[int] | None = None

    def curvature_inputs(self) -> Tensor | None:
        """The M curvature samples' inputs ``[M, T, G, I]``."""
        if self.a is None or self.subset is None:
            return self.a
        return self.a[self.subset]


@dataclass
class ExpandedPiece:
    """Dense columns ``v`` (``[K, M, *shape]``) and per-sample gradients (``[N, *shape]``)."""

    v: Tensor
    grads: Tensor


Piece = OuterPiece | ExpandedPiece


class RowsFactor(ExpandedFactor):
    """An :class:`ExpandedFactor` of the rows ``rows`` of a ``[V, E]`` parameter only.

    The other rows of the factor and of the gradients are zero (an embedding's rows that
    no token of the batch selects), so the Gram matrix and ``Vᵀ g_n`` need these rows only.
    """

    def __init__(self, v: Tensor, grads: Tensor, rows: Tensor, shape: torch.Size) -> None:
        super().__init__(v, grads)
        self._c, self._m = v.shape[:2]
        self._rows = rows
        self._full = shape

    def grad(self) -> Tensor:
        out = self._g.new_zeros(self._full)
        out[self._rows] = super().grad()
        return out

    def vt_grad(self, grad: Tensor) -> Tensor:
        return super().vt_grad(grad[self._rows])  # V is zero outside the selected rows

    def lift(self, coeffs: Tensor) -> Tensor:
        out = self._v.new_zeros(coeffs.shape[1], *self._full)
        out[:, self._rows] = super().lift(coeffs)
        return out

    def dense(self) -> ExpandedPiece:
        """All rows: ``V`` ``[K, M, V, E]`` and gradients ``[N, V, E]``."""
        k, m = self._c, self._m
        v = self._v.new_zeros(k * m, *self._full)
        v[:, self._rows] = self._v.reshape(k * m, -1, self._full[1])
        grads = self._g.new_zeros(self._g.shape[0], *self._full)
        grads[:, self._rows] = self._g.reshape(self._g.shape[0], -1, self._full[1])
        return ExpandedPiece(v.reshape(k, m, *self._full), grads)


def site_pieces(
    site: Site, layout: Layout, s: Tensor, g: Tensor, subset: list[int] | None
) -> dict[int, tuple[nn.Parameter, Piece | RowsFactor]]:
    """The pieces of the site's parameters, keyed by ``id(param)``.

    Args:
        site: the recorded call.
        layout: where the samples are in ``site.output``.
        s: ``[K, *output.shape]`` backpropagated curvature columns (all samples packed).
        g: ``[*output.shape]`` backpropagated gradient.
        subset: the curvature samples (``None``: all).
    """
    if site.kind == "shift":
        return _shift(site, layout, s, g, subset)
    s = layout.apply(s, offset=1)  # [K, N, T, *feature]
    g = layout.apply(g)  # [N, T, *feature]
    if subset is not None:
        s = s[:, subset]
    out: dict[int, tuple[nn.Parameter, Piece | RowsFactor]] = {}
    weight, bias = site.params.get("weight"), site.params.get("bias")
    if site.kind == "embedding":
        assert weight is not None
        idx = layout.apply(site.inputs)  # [N, T]
        padding_idx = site.options["padding_idx"]
        out[id(weight)] = (weight, _embedding(weight, idx, s, g, subset, padding_idx))
        return out
    if site.kind in ("linear", "conv"):
        if site.kind == "linear":
            a = layout.apply(site.inputs).unsqueeze(2)  # [N, T, 1, I]
            s, g = s.unsqueeze(3), g.unsqueeze(2)  # [K, M, T, 1, O], [N, T, 1, O]
        else:
            s, g, a = _conv_rows(site, s, g)
        if weight is not None:
            out[id(weight)] = (weight, OuterPiece(s, g, a, subset))
        if bias is not None:
            out[id(bias)] = (bias, OuterPiece(s, g, None, subset))
        return out
    xhat = layout.apply(site.inputs)  # [N, T, *feature]
    if site.kind == "batch_norm":  # [N, 1, C, *spatial] -> [N, L, C]
        spatial = site.output.dim() - 2
        xhat, s, g = (_channels_last(t, spatial) for t in (xhat, s, g))
    x_curv = xhat if subset is None else xhat[subset]
    if weight is not None:
        v, grads = (s * x_curv).sum(2), (g * xhat).sum(1)
        out[id(weight)] = (weight, ExpandedPiece(v.reshape(*v.shape[:2], *weight.shape), grads))
    if bias is not None:
        v, grads = s.sum(2), g.sum(1)
        out[id(bias)] = (bias, ExpandedPiece(v.reshape(*v.shape[:2], *bias.shape), grads))
    return out


def _shift(
    site: Site, layout: Layout, s: Tensor, g: Tensor, subset: list[int] | None
) -> dict[int, tuple[nn.Parameter, Piece | RowsFactor]]:
    """``out = x + p``, ``p`` broadcast over the samples: ``v_{k,m}`` is ``s_{k,m}`` summed to p."""
    p = site.params["bias"]
    out = site.output
    if layout.kind != "axis":
        return {}
    axis = layout.axis
    aligned = (1,) * (out.dim() - p.dim()) + tuple(p.shape)
    if aligned[axis] != 1:
        return {}
    rest_p = aligned[:axis] + aligned[axis + 1 :]
    s = s.movedim(1 + axis, 1)  # [K, N, *rest]
    g = g.movedim(axis, 0)  # [N, *rest]
    if subset is not None:
        s = s[:, subset]
    rest = g.shape[1:]
    dims = [i for i, (a, b) in enumerate(zip(rest_p, rest, strict=True)) if a == 1 and b != 1]
    v = s.sum([2 + i for i in dims], keepdim=True) if dims else s
    grads = g.sum([1 + i for i in dims], keepdim=True) if dims else g
    v = v.reshape(*v.shape[:2], *p.shape)
    return {id(p): (p, ExpandedPiece(v, grads.reshape(g.shape[0], *p.shape)))}


def _channels_last(t: Tensor, spatial: int) -> Tensor:
    """``[..., 1, C, *spatial]`` -> ``[..., L, C]``: the spatial positions become T."""
    t = t.flatten(start_dim=t.dim() - spatial) if spatial else t.unsqueeze(-1)
    return t.squeeze(-3).transpose(-1, -2)


def _conv_rows(site: Site, s: Tensor, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Columns ``[K, M, L, G, O]``, gradients ``[N, L, G, O]``, patches ``[N, L, G, I·K]``.

    ``s`` is ``[K, M, 1, Cout, *out]`` and ``g`` ``[N, 1, Cout, *out]`` (a convolution's
    sample axis is its first, so T = 1 before the output positions are unfolded).
    """
    opts = site.options
    groups = opts["groups"]
    s = s.flatten(start_dim=4).squeeze(2)  # [K, M, Cout, L]
    g = g.flatten(start_dim=3).squeeze(1)  # [N, Cout, L]
    k, m, cout, positions = s.shape
    n, o = g.shape[0], cout // groups
    s = s.reshape(k, m, groups, o, positions).permute(0, 1, 4, 2, 3)
    g = g.reshape(n, groups, o, positions).permute(0, 3, 1, 2)
    spec = SimpleNamespace(
        kernel_size=tuple(_kernel(site)),
        stride=opts["stride"],
        padding=opts["padding"],
        dilation=opts["dilation"],
        groups=groups,
        padding_mode="zeros",
    )
    patches = unfold_groups(spec, site.inputs)  # [N, G, I·K, L]
    return s, g, patches.permute(0, 3, 1, 2)


def _kernel(site: Site) -> torch.Size:
    """The kernel size: the weight's, or read off the shapes for a bias-only site."""
    weight = site.params.get("weight")
    if weight is not None:
        return weight.shape[2:]
    x, out, opts = site.inputs, site.output, site.options
    sizes = []
    for i, (inp, outp) in enumerate(zip(x.shape[2:], out.shape[2:], strict=True)):
        span = inp + 2 * opts["padding"][i] - (outp - 1) * opts["stride"][i]
        sizes.append((span - 1) // opts["dilation"][i] + 1)
    return torch.Size(sizes)


def _embedding(
    weight: nn.Parameter,
    idx: Tensor,
    s: Tensor,
    g: Tensor,
    subset: list[int] | None,
    padding_idx: int | None,
) -> RowsFactor:
    """Rows the batch selects: ``idx`` ``[N, T]``, ``s`` ``[K, M, T, E]``, ``g`` ``[N, T, E]``."""
    n, t = idx.shape
    k, m = s.shape[:2]
    keep = torch.ones_like(idx, dtype=s.dtype)
    if padding_idx is not None:  # no gradient reaches the padding row
        keep = (idx != padding_idx % weight.shape[0]).to(s.dtype)
    rows, inverse = torch.unique(idx, return_inverse=True)
    u, e = rows.shape[0], weight.shape[1]
    grads = g.new_zeros(n, u, e)
    grads.view(n * u, e).index_add_(0, _flat(inverse, u), (g * keep[..., None]).reshape(n * t, e))
    inv_curv = inverse if subset is None else inverse[subset]
    keep_curv = keep if subset is None else keep[subset]
    v = s.new_zeros(k, m, u, e)
    cols = (s * keep_curv[None, ..., None]).reshape(k, m * t, e)
    v.view(k, m * u, e).index_add_(1, _flat(inv_curv, u), cols)
    return RowsFactor(v, grads, rows, weight.shape)


def _flat(inverse: Tensor, u: int) -> Tensor:
    """Row ``inverse[n, t]`` of sample n as an index into ``[N·U]``."""
    n = inverse.shape[0]
    offsets = torch.arange(n, device=inverse.device).unsqueeze(1) * u
    return (inverse + offsets).reshape(-1)


def factor_of(param: nn.Parameter, pieces: list[Piece | RowsFactor], m: int) -> Factor:
    """One factor for all of a parameter's pieces (see the module docstring)."""
    if len(pieces) == 1 and isinstance(pieces[0], RowsFactor):
        return pieces[0]
    if all(isinstance(p, OuterPiece) for p in pieces):
        outer = [p for p in pieces if isinstance(p, OuterPiece)]
        weights = {p.a is None for p in outer}
        shapes = {(p.s.shape[3:], None if p.a is None else p.a.shape[3]) for p in outer}
        if len(weights) == 1 and len(shapes) == 1:
            return _outer_factor(param, _join(outer), m)
    total: ExpandedPiece | None = None
    for piece in pieces:
        dense = _expanded(param, piece)
        if total is not None:
            dense = ExpandedPiece(total.v + dense.v, total.grads + dense.grads)
        total = dense
    assert total is not None
    return ExpandedFactor(total.v, total.grads)


def _join(pieces: list[OuterPiece]) -> OuterPiece:
    if len(pieces) == 1:
        return pieces[0]
    a = None if pieces[0].a is None else torch.cat([p.a for p in pieces], dim=1)  # type: ignore[misc]
    s = torch.cat([p.s for p in pieces], dim=2)
    return OuterPiece(s, torch.cat([p.g for p in pieces], dim=1), a, pieces[0].subset)


def _outer_factor(param: nn.Parameter, piece: OuterPiece, m: int) -> Factor:
    s, g, a = piece.s, piece.g, piece.a
    k, _, t, groups, o = s.shape
    n = g.shape[0]
    form = current_form()
    if a is not None:
        structured = form == "structured" or (
            form == "auto" and prefer_structured(k * m, t, n, o, a.shape[3], groups, m)
        )
        if not structured:
            return ExpandedFactor(*_dense(param, piece))
    return OuterProductFactor(s, g, a, piece.subset, param.shape)


def _expanded(param: nn.Parameter, piece: Piece | RowsFactor) -> ExpandedPiece:
    if isinstance(piece, ExpandedPiece):
        return piece
    if isinstance(piece, RowsFactor):
        return piece.dense()
    return ExpandedPiece(*_dense(param, piece))


def _dense(param: nn.Parameter, piece: OuterPiece) -> tuple[Tensor, Tensor]:
    """``V`` as ``[K, M, *shape]`` and the per-sample gradients ``[N, *shape]``.

    One batched product per factor column ``k`` into a preallocated ``V`` (as
    :func:`~curvscope.probe.vivit.conv_factors.expanded_conv_weight`): no intermediate larger
    than one column's share of ``s`` is formed.
    """
    s, g, a = piece.s, piece.g, piece.a
    k, m, t, groups, o = s.shape
    n = g.shape[0]
    if a is None:
        return s.sum(2).reshape(k, m, *param.shape), g.sum(1).reshape(n, *param.shape)
    a_curv = piece.curvature_inputs()
    assert a_curv is not None
    i = a.shape[-1]
    a_t = a_curv.permute(0, 2, 1, 3).reshape(m * groups, t, i)
    v = s.new_empty(k, m * groups, o, i)
    for c in range(k):
        torch.bmm(s[c].permute(0, 2, 3, 1).reshape(m * groups, o, t), a_t, out=v[c])
    g_t = g.permute(0, 2, 3, 1).reshape(n * groups, o, t)
    grads = torch.bmm(g_t, a.permute(0, 2, 1, 3).reshape(n * groups, t, i))
    return v.reshape(k, m, *param.shape), grads.reshape(n, *param.shape)
