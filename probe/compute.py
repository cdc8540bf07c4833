"""The functional entry point: :func:`compute_snapshot`."""

from __future__ import annotations

import math

from torch import Tensor, nn

from curvscope.probe.collector import ViViTCollector
from curvscope.probe.config import ViViTConfig
from curvscope.probe.errors import BatchSizeMismatchError, NonFiniteLossError
from curvscope.probe.snapshot import Snapshot
from curvscope.probe.validation import batch_size_of

__all__ = ["compute_snapshot"]


def compute_snapshot(
    model: nn.Module,
    loss_fn: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    config: ViViTConfig | None = None,
    *,
    keep_factors: bool = False,
) -> Snapshot:
    """Compute a ViViT snapshot of ``model`` on one batch, in one backward pass.

    Runs ``loss_fn(model(inputs), targets)`` forward and backward once with BackPACK and
    returns the non-trivial GGN spectrum of every parameter group with the per-sample
    directional gradients and curvatures along its eigenvectors and their statistics.

    Args:
        model: the network (BatchNorm in eval mode; BackPACK-supported layers).
        loss_fn: ``nn.CrossEntropyLoss``, ``nn.MSELoss`` or ``nn.BCEWithLogitsLoss``
            with ``reduction="mean"`` or ``"sum"``.
        inputs: ``[N, *]`` batch of inputs; targets: ``[N, *]`` matching targets.
        config: what to compute (default: exact curvature, one group, all directions).
        keep_factors: keep the GGN factors so that :meth:`GroupSpectrum.combine` works.

    Returns:
        The snapshot. The model's ``p.grad`` are left exactly as they were, and nothing
        stays attached to the model.

    Raises:
        CurvscopeError: an unsupported layer, loss or configuration, or a bad batch,
            before any heavy work; :class:`NonFiniteLossError` if the loss is NaN/inf.
    """
    collector = ViViTCollector(model, loss_fn, config, keep_factors=keep_factors)
    n = batch_size_of(inputs, targets)
    collector.config.subsample_indices(n)
    params = [p for p in model.parameters() if p.requires_grad]
    saved_grads = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        with collector.hooks():
            outputs = collector.module(inputs)
            if outputs.dim() == 0 or outputs.shape[0] != n:
                raise BatchSizeMismatchError(
                    f"the model returned {tuple(outputs.shape)} for a batch of {n} samples"
                )
            loss = loss_fn(outputs, targets)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise NonFiniteLossError(f"the loss is {value}; no snapshot computed")
            with collector.backward(n):
                loss.backward()
        return collector.snapshot(value)
    finally:
        for p, grad in zip(params, saved_grads, strict=True):
            p.grad = grad
