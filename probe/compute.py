"""The functional entry point: :func:`compute_snapshot`."""

from __future__ import annotations

import math

from torch import Tensor, nn

from curvscope.probe.collector import (
    Inputs,
    OutputsAdapter,
    ViViTCollector,
    batch_size_of,
    snapshot_pass,
    untouched_state,
)
from curvscope.probe.config import ViViTConfig
from curvscope.probe.errors import BatchSizeMismatchError, NonFiniteLossError
from curvscope.probe.hessian.spectrum import hessian_spectrum
from curvscope.probe.precision import full_precision, no_autocast
from curvscope.probe.snapshot import Snapshot

__all__ = ["attach_hessian", "compute_snapshot"]


def compute_snapshot(
    model: nn.Module,
    loss_fn: nn.Module,
    inputs: Inputs,
    targets: Tensor,
    config: ViViTConfig | None = None,
    *,
    keep_factors: bool = False,
    outputs: OutputsAdapter | None = None,
) -> Snapshot:
    """Compute a ViViT snapshot of ``model`` on one batch, with one forward pass.

    Runs ``loss_fn(outputs(model(inputs)), targets)`` once and returns the non-trivial GGN
    spectrum of every parameter group with the per-sample directional gradients and
    curvatures along its eigenvectors and their statistics.

    Args:
        model: the network, in whatever mode it is in (BatchNorm in training mode uses
            the batch's statistics: samples are coupled, see docs/maths.md; dropout draws
            its masks from the RNG, whose state is restored afterwards).
        loss_fn: ``nn.CrossEntropyLoss``, ``nn.MSELoss`` or ``nn.BCEWithLogitsLoss``
            with ``reduction="mean"`` or ``"sum"``.
        inputs: a tensor ``[N, *]``, a tuple of tensors (positional arguments) or a dict
            (keyword arguments), batch on dim 0; targets: ``[N, *]`` matching targets.
        config: what to compute (default: exact curvature, one group, all directions,
            backend ``"auto"``).
        keep_factors: keep the GGN factors so that :meth:`GroupSpectrum.combine` works.
        outputs: adapter from the model's return value to the loss input.

    With ``config.hessian_top_k > 0`` each group also gets its Hessian's extreme
    eigenvalues (and SLQ density), by :func:`attach_hessian` after the GGN pass.

    The pass runs outside ``torch.autocast`` (also when called inside it), and a model with
    ``float16``/``bfloat16`` weights is measured on ``float32`` versions of them (the batch
    cast alike; see :mod:`curvscope.probe.precision`): the snapshot is ``float32``.

    Returns:
        The snapshot. The model's ``p.grad``, buffers (running statistics), modes and the
        RNG state are left exactly as they were, and nothing stays attached to the model.

    Raises:
        CurvscopeError: an unsupported layer, loss or configuration, or a bad batch,
            before any heavy work; :class:`NonFiniteLossError` if the loss is NaN/inf.
    """
    collector = ViViTCollector(model, loss_fn, config, keep_factors, outputs=outputs)
    batch = inputs, targets
    n = batch_size_of(inputs, targets)
    collector.config.subsample_indices(n)
    params = [p for p in model.parameters() if p.requires_grad]
    saved_grads = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        with (
            full_precision(model, collector.module, loss_fn) as cast,
            no_autocast(),
            snapshot_pass(),
            untouched_state(model),
            collector.hooks(),
        ):
            inputs, targets = cast(inputs), cast(targets)
            out = collector.forward(inputs)
            if not isinstance(out, Tensor) or out.dim() == 0 or out.shape[0] != n:
                shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise BatchSizeMismatchError(
                    f"the model returned {shape} for a batch of {n} samples"
                    + ("" if isinstance(out, Tensor) else "; pass outputs= to pick the tensor")
                )
            loss = loss_fn(out, targets)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise NonFiniteLossError(f"the loss is {value}; no snapshot computed")
            with collector.backward(n):
                if collector.backend.needs_loss_backward:
                    loss.backward()
        snapshot = collector.snapshot(value)
    finally:
        for p, grad in zip(params, saved_grads, strict=True):
            p.grad = grad
    if collector.config.hessian_top_k > 0:
        attach_hessian(snapshot, model, loss_fn, *batch, collector.config, outputs=outputs)
    return snapshot


def attach_hessian(
    snapshot: Snapshot,
    model: nn.Module,
    loss_fn: nn.Module,
    inputs: Inputs,
    targets: Tensor,
    config: ViViTConfig,
    *,
    outputs: OutputsAdapter | None = None,
) -> None:
    """Fill in each group's ``hessian_*`` fields: its Hessian on this batch.

    :func:`~curvscope.probe.hessian.hessian_spectrum` per group (``config.hessian_top_k``
    eigenvalues, ``config.hessian_slq_probes`` SLQ probes of ``hessian_slq_steps`` steps,
    seeded by ``config.seed``). The model's ``p.grad``, buffers, modes and RNG state are left
    as they were.
    """
    for group in snapshot.groups:
        if not group.params:
            continue
        spectrum = hessian_spectrum(
            model,
            loss_fn,
            inputs,
            targets,
            params=group.params,
            top_k=config.hessian_top_k,
            slq_probes=config.hessian_slq_probes,
            slq_steps=config.hessian_slq_steps,
            outputs=outputs,
            seed=config.seed,
        )
        group.hessian_eigvals = spectrum.eigvals
        group.hessian_min = spectrum.min_eigval
        if spectrum.density_nodes is not None and spectrum.density_weights is not None:
            group.hessian_density = (spectrum.density_nodes, spectrum.density_weights)
