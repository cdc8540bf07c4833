"""The functional entry point: :func:`hessian_spectrum`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from curvscope.probe.collector import (
    Inputs,
    OutputsAdapter,
    batch_size_of,
    resolve_groups,
    snapshot_pass,
    untouched_state,
)
from curvscope.probe.errors import ConfigError, NonFiniteLossError
from curvscope.probe.hessian.hvp import GroupHessian, HVPMethod
from curvscope.probe.hessian.lanczos import extreme_eigenpairs
from curvscope.probe.hessian.slq import slq_density
from curvscope.probe.precision import full_precision, no_autocast

__all__ = ["DEFAULT_MAX_STEPS", "HessianSpectrum", "hessian_spectrum"]

DEFAULT_MAX_STEPS = 128
"""Default cap on the Lanczos basis (products; memory ``P · max_steps`` entries)."""


@dataclass(frozen=True)
class HessianSpectrum:
    """Extreme eigenvalues (and optionally the spectral density) of a batch loss's Hessian.

    Attributes:
        eigvals: ``[k]``, the ``k`` largest eigenvalues, descending.
        min_eigval: the smallest eigenvalue (negative where the loss is not locally convex).
        converged: every one of them passed the residual test (else ``max_steps`` ran out).
        matvecs: Hessian-vector products made (Lanczos and SLQ together).
        density_nodes, density_weights: ``[probes, m]`` SLQ quadrature (see
            :mod:`curvscope.probe.hessian.slq`), or ``None`` without SLQ.
    """

    eigvals: Tensor
    min_eigval: float
    converged: bool
    matvecs: int
    density_nodes: Tensor | None = None
    density_weights: Tensor | None = None


def hessian_spectrum(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    inputs: Inputs,
    targets: Tensor,
    *,
    params: Sequence[nn.Parameter] | None = None,
    top_k: int = 5,
    tol: float = 1e-8,
    max_steps: int | None = None,
    slq_probes: int = 0,
    slq_steps: int = 30,
    outputs: OutputsAdapter | None = None,
    seed: int | None = None,
    method: HVPMethod = "auto",
) -> HessianSpectrum:
    """The ``top_k`` largest and the smallest eigenvalue of ``∇²_θ L`` on one batch.

    ``L = loss_fn(outputs(model(inputs)), targets)``, ``θ`` the parameters ``params``
    (default: all trainable parameters of ``model``). Block Lanczos with full
    reorthogonalisation on Hessian-vector products (see
    :func:`~curvscope.probe.hessian.lanczos.extreme_eigenpairs`; block size ``top_k``, so
    repeated eigenvalues come out as often as they occur), optionally followed by SLQ.

    Args:
        model: the network, in the mode whose loss is wanted (BatchNorm in training mode:
            batch statistics; dropout: one set of masks for every product).
        loss_fn: a scalar loss, twice differentiable.
        inputs: a tensor ``[N, *]``, a tuple (positional) or a dict (keyword arguments);
            targets: ``[N, *]``.
        params: the parameter group (trainable parameters of ``model``).
        top_k: how many of the largest eigenvalues.
        tol: relative residual tolerance of the Lanczos test (``float32`` models converge
            at best to about ``1e-5 · ‖H‖``: the test accepts the arithmetic's resolution).
        max_steps: the most products for the eigenvalues, default
            ``min(P, DEFAULT_MAX_STEPS)``; the basis holds ``P · max_steps`` numbers.
        slq_probes: SLQ probes (0: no density); slq_steps: Lanczos steps per probe.
        outputs: adapter from the model's return value to the loss input.
        seed: seeds the start block and the probes (default: a fresh random seed); the
            global random state is not used.
        method: how products are computed (:class:`~curvscope.probe.hessian.hvp.GroupHessian`).

    The computation runs outside ``autocast``, in the parameters' dtype (``float16`` and
    ``bfloat16`` weights are measured on ``float32`` copies, as in ``compute_snapshot``).

    Returns:
        :class:`HessianSpectrum`, on the parameters' device. The model's ``p.grad``,
        buffers, modes and the random state are left exactly as they were.

    Raises:
        ConfigError: bad arguments or parameter group; :class:`NonFiniteLossError` if the
            loss is NaN or infinite; ``BatchSizeMismatchError`` for a bad batch.
    """
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}")
    if not tol > 0:
        raise ConfigError(f"tol must be positive, got {tol}")
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"max_steps must be positive, got {max_steps}")
    if slq_probes < 0 or slq_steps < 1:
        raise ConfigError(f"need slq_probes >= 0 and slq_steps >= 1 ({slq_probes}, {slq_steps})")
    batch_size_of(inputs, targets)
    groups = resolve_groups(model, "all" if params is None else [list(params)])
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    group = groups[0][1]
    modules = [model, loss_fn] if isinstance(loss_fn, nn.Module) else [model]
    saved_grads = [p.grad for p in group]
    try:
        with (
            full_precision(*modules) as cast,
            no_autocast(),
            snapshot_pass(),
            untouched_state(model),
        ):
            hessian = GroupHessian(
                model, loss_fn, cast(inputs), cast(targets), group, outputs=outputs, method=method
            )
            if not math.isfinite(hessian.loss):
                raise NonFiniteLossError(f"the loss is {hessian.loss}; no spectrum computed")
            generator = torch.Generator(device=hessian.device)
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(seed)
            limit = max_steps or DEFAULT_MAX_STEPS
            eig = extreme_eigenpairs(
                hessian.matvec,
                hessian.dim,
                top_k,
                tol=tol,
                max_steps=min(limit, hessian.dim),
                generator=generator,
                dtype=hessian.dtype,
                device=hessian.device,
            )
            nodes = weights = None
            if slq_probes:
                nodes, weights = slq_density(
                    hessian.matvec,
                    hessian.dim,
                    probes=slq_probes,
                    steps=slq_steps,
                    generator=generator,
                    dtype=hessian.dtype,
                    device=hessian.device,
                )
            matvecs = hessian.matvecs
            del hessian  # the retained graph goes before the buffers are restored
    finally:
        for p, g in zip(group, saved_grads, strict=True):
            p.grad = g
    return HessianSpectrum(
        eigvals=eig.eigvals,
        min_eigval=float(eig.min_eigval),
        converged=eig.converged,
        matvecs=matvecs,
        density_nodes=nodes,
        density_weights=weights,
    )
