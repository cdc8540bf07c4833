"""Symmetric factors of the loss Hessian w.r.t. the model outputs (the ``func`` backend's S).

For a batch loss ``L(F)`` of the model outputs ``F`` (``[N, ...]``, dimension 0 the sample)
the Hessian ``∇²_F L`` is block-diagonal over samples, and over *positions* for the
position-wise losses (``CrossEntropyLoss`` on ``[N, C, d1, ...]``, element-wise ``MSELoss``
and ``BCEWithLogitsLoss``). :func:`loss_factor` returns ``S`` with ``H = Σ_j s_j s_jᵀ``
packed by *class*: ``packed[k]`` holds column ``k`` of every curvature sample at once, each
on its own rows of ``F`` (rows of the other samples are zero). Column ``(k, m)`` of the GGN
factor ``V = Jᵀ S`` is the backward pass of ``packed[k]`` restricted to sample m's rows.

Per position ``p`` of a sample (derivations in ``docs/maths.md``):

- ``CrossEntropyLoss``: ``H_p = κ β_p (diag(π_p) − π_p π_pᵀ)``, ``π_p = softmax(f_p)``, with
  ``β_p = (1 − ε) w_{y_p} + (ε / C) Σ_c w_c`` (class weights ``w``, label smoothing ``ε``;
  ``β_p = Σ_c w_c q_c`` for probability targets ``q``), ``β_p = 0`` at ``ignore_index``.
  Exact: ``C`` columns ``√(κ β_p π_c) (e_c − π_p)`` per position, so ``C·P`` per sample.
  Monte-Carlo: one label ``ŷ ~ π_p`` per position and draw, ``√(κ β_p / M) (π_p − e_ŷ)``,
  summed over the sample's positions: one column per draw and sample (unbiased: the
  columns of different positions have zero mean, so the cross terms vanish in expectation).
- ``BCEWithLogitsLoss``: diagonal ``h = κ w σ(1 − σ)(p_w y + 1 − y)`` (``weight`` ``w``,
  ``pos_weight`` ``p_w``); ``MSELoss``: ``h = 2κ``. Exact: one column ``√h_i e_i`` per output
  entry; Monte-Carlo: ``√(h / M) ⊙ ξ`` with Rademacher signs ``ξ`` (``E[ξ ξᵀ] = I``).

``κ`` is the reduction factor: 1 for ``sum``; for ``mean`` one over the number of
non-ignored positions (``CrossEntropyLoss``; the sum of their target weights with class
weights and hard labels) or output entries (the others), counted on the curvature samples,
so that a curvature subset gets the GGN of the same loss on that subset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from curvscope.probe.errors import UnsupportedLossError

__all__ = [
    "FUNC_LOSSES",
    "LossFactor",
    "check_func_loss",
    "exact_classes",
    "loss_factor",
    "packed_bytes",
]

FUNC_LOSSES: tuple[type[nn.Module], ...] = (
    nn.CrossEntropyLoss,
    nn.MSELoss,
    nn.BCEWithLogitsLoss,
)


@dataclass
class LossFactor:
    """``S`` packed by class.

    Attributes:
        packed: ``[K, *F.shape]``; ``packed[k]`` is column k of every curvature sample.
        classes: K, the columns per curvature sample (C·P exact cross-entropy, the output
            entries per sample for exact MSE/BCE, the draws for Monte-Carlo).
    """

    packed: Tensor
    classes: int


def check_func_loss(loss_fn: nn.Module) -> None:
    """Raise :class:`UnsupportedLossError` unless :func:`loss_factor` knows this loss."""
    if not isinstance(loss_fn, FUNC_LOSSES):
        names = ", ".join(cls.__name__ for cls in FUNC_LOSSES)
        raise UnsupportedLossError(
            f"loss {type(loss_fn).__name__} is not supported; use a module instance of {names}"
        )
    if loss_fn.reduction not in ("mean", "sum"):
        raise UnsupportedLossError(
            f"{type(loss_fn).__name__}(reduction={loss_fn.reduction!r}) is not supported: "
            "the batch loss must be a mean or a sum"
        )


def loss_factor(
    loss_fn: nn.Module,
    outputs: Tensor,
    targets: Tensor,
    subset: list[int] | None,
    curvature: str,
    mc_samples: int,
    generator: torch.Generator | None = None,
) -> LossFactor:
    """``S`` of ``loss_fn(outputs, targets)`` on the curvature samples ``subset``.

    Args:
        loss_fn: a module of :data:`FUNC_LOSSES` (checked by :func:`check_func_loss`).
        outputs: ``F``, ``[N, ...]`` (``[N, C, d1, ...]`` for cross-entropy); detached.
        targets: what the loss was called with.
        subset: the curvature samples' batch indices (``None``: all N).
        curvature: ``"exact"`` or ``"mc"``; mc_samples: draws per sample for ``"mc"``.
        generator: the Monte-Carlo draws' generator.

    Returns:
        :class:`LossFactor`, ``packed`` zero on the rows of samples outside ``subset``.
    """
    f = outputs.detach()
    n = f.shape[0]
    mask = torch.zeros(n, dtype=torch.bool, device=f.device)
    mask[subset if subset is not None else slice(None)] = True
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        return _cross_entropy(loss_fn, f, targets, mask, curvature, mc_samples, generator)
    if not isinstance(targets, Tensor) or targets.shape != f.shape:
        got = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
        raise UnsupportedLossError(
            f"{type(loss_fn).__name__} needs targets shaped like the outputs "
            f"{tuple(f.shape)}, got {got} (torch would broadcast them)"
        )
    if isinstance(loss_fn, nn.BCEWithLogitsLoss):
        sig = torch.sigmoid(f)
        h = sig * (1 - sig)
        y = targets.to(f.dtype)
        if loss_fn.pos_weight is not None:
            h = h * (loss_fn.pos_weight.to(f) * y + 1 - y)
        if loss_fn.weight is not None:
            h = h * loss_fn.weight.to(f)
    else:  # MSELoss
        h = torch.full_like(f, 2.0)
    h = h.expand_as(f)
    if loss_fn.reduction == "mean":
        h = h / (int(mask.sum()) * (f[0].numel()))
    return _diagonal(h.clamp(min=0).sqrt() * _rows(mask, f), curvature, mc_samples, generator)


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    """``[N]`` sample mask broadcast to ``like``'s shape (as its dtype)."""
    return mask.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def _diagonal(
    root: Tensor, curvature: str, mc_samples: int, generator: torch.Generator | None
) -> LossFactor:
    """Factor of a diagonal Hessian ``diag(root²)``, ``root`` shaped like ``F``."""
    n = root.shape[0]
    per_sample = root[0].numel()
    if curvature == "mc":
        signs = torch.randint(
            0, 2, (mc_samples, *root.shape), generator=generator, device=root.device
        )
        signs = (2 * signs.to(root.dtype) - 1) / math.sqrt(mc_samples)
        return LossFactor(root * signs, mc_samples)
    flat = root.reshape(n, per_sample)
    packed = torch.diag_embed(flat).permute(2, 0, 1)  # [P, N, P]
    return LossFactor(packed.reshape(per_sample, *root.shape), per_sample)


def _cross_entropy(
    loss_fn: nn.CrossEntropyLoss,
    f: Tensor,
    targets: Tensor,
    mask: Tensor,
    curvature: str,
    mc_samples: int,
    generator: torch.Generator | None,
) -> LossFactor:
    if f.dim() == 1:
        raise UnsupportedLossError(
            "CrossEntropyLoss needs batched outputs [N, C, ...]; got one unbatched sample"
        )
    n, c = f.shape[:2]
    probs = torch.softmax(f, dim=1)  # [N, C, *pos]
    eps = float(loss_fn.label_smoothing)
    weight = None if loss_fn.weight is None else loss_fn.weight.to(f)
    w = torch.ones(c, dtype=f.dtype, device=f.device) if weight is None else weight
    rows = _rows(mask, probs[:, 0])
    if targets.is_floating_point():  # class probabilities, [N, C, *pos]
        q = (1 - eps) * targets.to(f) + eps / c
        beta = torch.einsum("c,nc...->n...", w, q)
        count = float(rows.expand_as(beta).sum())
    else:
        valid = targets != loss_fn.ignore_index
        safe = torch.where(valid, targets, torch.zeros_like(targets))
        beta = (1 - eps) * w[safe] + eps / c * w.sum()
        beta = beta * valid.to(f.dtype)
        kept = valid.to(f.dtype) * rows
        count = float((kept * w[safe]).sum()) if weight is not None else float(kept.sum())
    scale = beta * rows  # [N, *pos]: κβ without κ, zero outside the subset
    if loss_fn.reduction == "mean":
        if count <= 0:
            raise UnsupportedLossError(
                "every target of the curvature samples is ignored (ignore_index): "
                "the mean loss has no curvature to measure"
            )
        scale = scale / count
    root = scale.clamp(min=0).sqrt().unsqueeze(1)  # [N, 1, *pos]
    if curvature == "mc":
        flat = probs.movedim(1, -1).reshape(-1, c)
        draws = torch.multinomial(flat, mc_samples, replacement=True, generator=generator)
        onehot = torch.nn.functional.one_hot(draws.T, c).to(f.dtype)  # [M, N·P, C]
        onehot = onehot.reshape(mc_samples, *probs.movedim(1, -1).shape).movedim(-1, 2)
        return LossFactor(root * (probs - onehot) / math.sqrt(mc_samples), mc_samples)
    positions = probs[0, 0].numel()
    # column (c, p): √(κβ_p π_{c,p}) (e_c − π_p) at position p
    flat_p = probs.reshape(n, c, positions)  # [N, C, P]
    root_p = root.reshape(n, 1, positions)
    eye = torch.eye(c, dtype=f.dtype, device=f.device)
    cols = flat_p.sqrt().unsqueeze(2) * (eye[None, :, :, None] - flat_p.unsqueeze(1))
    cols = cols * root_p.unsqueeze(1)  # [N, C(class), C(out), P]
    packed = f.new_zeros(c, positions, n, c, positions)
    index = torch.arange(positions, device=f.device)
    packed[:, index, :, :, index] = cols.permute(3, 1, 0, 2)  # [P, C, N, C]
    return LossFactor(packed.reshape(c * positions, *f.shape), c * positions)


def packed_bytes(classes: int, outputs: Tensor) -> int:
    """Memory of a packed factor of ``classes`` columns per sample for ``outputs``."""
    return classes * outputs.numel() * outputs.element_size()


def exact_classes(loss_fn: nn.Module, outputs: Tensor) -> int:
    """Columns per sample of the exact factor (before building it)."""
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        return outputs.shape[1] * math.prod(outputs.shape[2:])
    return math.prod(outputs.shape[1:])
