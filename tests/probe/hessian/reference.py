"""Slow, obviously-correct dense Hessians with ``torch.func.hessian`` (use float64).

The loss is written as a function of the group's parameters flattened into one vector
``θ`` (``functional_call``, the other parameters fixed, buffers copied on every call), and
``torch.func.hessian`` differentiates it twice: ``[P, P]``. Nothing here shares code with
``curvscope.probe.hessian``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, hessian
from torch.nn.attention import SDPBackend, sdpa_kernel


def flat_loss(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    inputs: Any,
    targets: Any,
    params: list[nn.Parameter],
    outputs: Callable[[Any], Tensor] | None = None,
) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """``(L(θ), θ₀)``: the batch loss as a function of the flat group, and its value now."""
    names = {id(p): n for n, p in model.named_parameters()}
    keys = [names[id(p)] for p in params]
    shapes = [p.shape for p in params]
    theta = torch.cat([p.detach().reshape(-1) for p in params])
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}

    def loss(flat: Tensor) -> Tensor:
        state, i = {n: b.clone() for n, b in buffers.items()}, 0
        for key, shape in zip(keys, shapes, strict=True):
            state[key] = flat[i : i + shape.numel()].reshape(shape)
            i += shape.numel()
        if isinstance(inputs, dict):
            out = functional_call(model, state, (), inputs)
        elif isinstance(inputs, tuple):
            out = functional_call(model, state, inputs)
        else:
            out = functional_call(model, state, (inputs,))
        return loss_fn(out if outputs is None else outputs(out), targets)

    return loss, theta


def dense_hessian(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    inputs: Any,
    targets: Any,
    params: list[nn.Parameter],
    outputs: Callable[[Any], Tensor] | None = None,
    *,
    coupled: bool = False,
) -> Tensor:
    """``∇²_θ L`` of the group ``params`` (flattened in order), ``[P, P]``.

    ``coupled``: the model has BatchNorm in training mode. ``torch.func.hessian`` (and
    ``jacrev(jacrev(f))``) give a wrong, non-symmetric matrix there in torch 2.14 (vmap over
    the double backward of batch norm; ``jacfwd(grad(f))`` and plain autograd agree with
    finite differences), so those use ``torch.autograd.functional.hessian``: a loop of
    double-backward products without vmap.
    """
    loss, theta = flat_loss(model, loss_fn, inputs, targets, params, outputs)
    if coupled:
        return torch.autograd.functional.hessian(loss, theta).detach()
    with sdpa_kernel([SDPBackend.MATH]):  # the fused attention kernels have no 2nd derivative
        return hessian(loss)(theta).detach()
