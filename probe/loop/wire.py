"""Snapshots as wire messages (:mod:`curvscope.server.protocol`).

The protocol module is pydantic only, so the probe shares it with the server without
importing FastAPI. Numbers on the wire are finite: a non-finite value in a snapshot is
refused here with a :class:`WireError` naming the field, before
anything is queued.
"""

from __future__ import annotations

import math
import time
from typing import Literal

import torch
from torch import Tensor

from curvscope.probe.config import ViViTConfig
from curvscope.probe.errors import CurvscopeError
from curvscope.probe.snapshot import GroupSpectrum, Snapshot
from curvscope.server.protocol import (
    ConfigPayload,
    EventMessage,
    GroupPayload,
    HessianDensity,
    OptimizerPayload,
    SnapshotMessage,
)

__all__ = [
    "Mode",
    "WireError",
    "encode_event",
    "encode_optimizer",
    "encode_snapshot",
    "learning_rates",
    "recordable_optimizer",
    "unwrap_optimizer",
]

Mode = Literal["in-loop", "held-out", "function"]
"""How the snapshot's batch was chosen (the wire's ``ConfigPayload.mode``)."""


class WireError(CurvscopeError, ValueError):
    """A snapshot cannot travel: a non-finite number or a value the protocol refuses."""


def _floats(values: Tensor, where: str) -> list[float]:
    out = [float(v) for v in values.detach().double().cpu().reshape(-1).tolist()]
    bad = next((i for i, v in enumerate(out) if not math.isfinite(v)), None)
    if bad is not None:
        raise WireError(f"{where}[{bad}] is {out[bad]}: numbers on the wire must be finite")
    return out


def _rows(matrix: Tensor, where: str) -> list[list[float]]:
    """``[R, K]`` -> R lists of K finite floats."""
    return [_floats(row, f"{where}[{i}]") for i, row in enumerate(matrix)]


def _directions(group: GroupSpectrum) -> list[int] | None:
    """The selected directions' indices, or ``None`` when they are the first K'."""
    if group.directions is None:
        return None
    chosen = [int(i) for i in group.directions.tolist()]
    return None if chosen == list(range(len(chosen))) else chosen


def _group(group: GroupSpectrum, per_sample: bool) -> GroupPayload:
    where = f"group {group.name!r}"
    if not math.isfinite(group.grad_norm_sq):
        raise WireError(f"{where}: grad_norm_sq is {group.grad_norm_sq}")
    return GroupPayload(
        name=group.name,
        num_params=group.num_params,
        eigvals=_floats(group.eigvals, f"{where}: eigvals"),
        gamma=_floats(group.gamma, f"{where}: gamma"),
        snr_gamma=_floats(group.snr_gamma, f"{where}: snr_gamma"),
        snr_lambda=_floats(group.snr_lambda, f"{where}: snr_lambda"),
        grad_overlap=_floats(group.grad_overlap, f"{where}: grad_overlap"),
        grad_norm_sq=group.grad_norm_sq,
        directions=_directions(group),
        gammas=_rows(group.gammas, f"{where}: gammas") if per_sample else None,
        lambdas=_rows(group.lambdas, f"{where}: lambdas") if per_sample else None,
        **_hessian(group, where),
        **_noise(group, where),
        **_trust(group, where),
    )


def _noise(group: GroupSpectrum, where: str) -> dict[str, object]:
    """The group's gradient-noise spectrum on the wire (none where it was not computed)."""
    out: dict[str, object] = {}
    for field in ("gradient_eigvals", "gradient_moment_eigvals"):
        values = getattr(group, field)
        if values is not None:
            out[field] = _floats(values, f"{where}: {field}")
    return out


def _hessian(group: GroupSpectrum, where: str) -> dict[str, object]:
    """The group's Hessian fields on the wire (none where it was not computed)."""
    out: dict[str, object] = {}
    if group.hessian_eigvals is not None:
        out["hessian_eigvals"] = _floats(group.hessian_eigvals, f"{where}: hessian_eigvals")
    if group.hessian_min is not None:
        if not math.isfinite(group.hessian_min):
            raise WireError(f"{where}: hessian_min is {group.hessian_min}")
        out["hessian_min"] = float(group.hessian_min)
    if group.hessian_density is not None:
        nodes, weights = group.hessian_density
        out["hessian_density"] = HessianDensity(
            nodes=_rows(nodes, f"{where}: hessian_density nodes"),
            weights=_rows(weights, f"{where}: hessian_density weights"),
        )
    return out


def _trust(group: GroupSpectrum, where: str) -> dict[str, object]:
    """The group's step-trust fields on the wire (none where it was not computed); an
    infinite damping (no trusted step along ``e_k``) travels as ``null``."""
    out: dict[str, object] = {}
    if group.trust_damping is not None:
        damping = group.trust_damping.detach().double().cpu().reshape(-1)
        finite = _floats(torch.where(damping.isinf(), 0.0, damping), f"{where}: trust_damping")
        out["trust_damping"] = [
            None if inf else value
            for inf, value in zip(damping.isinf().tolist(), finite, strict=True)
        ]
    if group.trust_bound is not None:
        out["trust_bound"] = _floats(group.trust_bound, f"{where}: trust_bound")
    if group.newton_reduction is not None:
        if not math.isfinite(group.newton_reduction):
            raise WireError(f"{where}: newton_reduction is {group.newton_reduction}")
        out["newton_reduction"] = float(group.newton_reduction)
    return out


def unwrap_optimizer(optimizer: object) -> object:
    """The torch optimizer inside a wrapper: accelerate's ``AcceleratedOptimizer``
    (``.optimizer``), Lightning's ``LightningOptimizer`` (``._optimizer``), ... (a plain
    optimizer is returned as it is)."""
    for _ in range(8):  # a few levels of wrapping at most
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            return optimizer
        optimizer = inner
    return optimizer


def learning_rates(optimizer: object) -> list[float]:
    """The learning rate of each of the optimizer's parameter groups (``[G]``)."""
    groups = unwrap_optimizer(optimizer).param_groups  # type: ignore[attr-defined]
    return [float(group["lr"]) for group in groups]


def recordable_optimizer(optimizer: object) -> bool:
    """Whether :func:`learning_rates` can read ``optimizer`` (a torch optimizer, or a wrapper
    of one, with ``param_groups`` holding an ``lr``): the integrations pass the trainer's
    optimizer to the probe only then, so an exotic one is never an error in training."""
    try:
        learning_rates(optimizer)
    except (AttributeError, KeyError, TypeError, ValueError):
        return False
    return True


def encode_optimizer(optimizer: object) -> OptimizerPayload:
    """The wire form of the optimizer's current state (:class:`OptimizerPayload`): its class
    name and its first parameter group's learning rate (a scheduler's current one) and, for
    SGD, momentum β, dampening and Nesterov. Every optimizer but ``torch.optim.SGD`` (and
    its subclasses) counts as ``adaptive``: the GD stability threshold 2/η is known for
    SGD's update only.

    Raises:
        WireError: the learning rate is negative or not finite.
    """
    inner = unwrap_optimizer(optimizer)
    groups = getattr(inner, "param_groups", None)
    if not groups:
        raise WireError(f"the optimizer {type(inner).__name__} has no parameter groups")
    first = groups[0]
    lr = float(first["lr"])
    if not math.isfinite(lr) or lr < 0:
        raise WireError(f"the optimizer's learning rate is {lr}: not a finite number >= 0")
    sgd = isinstance(inner, torch.optim.SGD)
    try:
        return OptimizerPayload(
            name=type(inner).__name__[:128],
            lr=lr,
            momentum=float(first.get("momentum", 0.0)) if sgd else None,
            dampening=float(first.get("dampening", 0.0)) if sgd else 0.0,
            nesterov=bool(first.get("nesterov", False)) if sgd else False,
            adaptive=not sgd,
        )
    except ValueError as err:  # pydantic.ValidationError is a ValueError
        raise WireError(f"the optimizer's state cannot travel: {err}") from err


def encode_snapshot(
    snapshot: Snapshot,
    *,
    run: str,
    step: int,
    config: ViViTConfig,
    mode: Mode,
    loss: float | None = None,
    wall_time: float | None = None,
    user_step: int | None = None,
    instance: str | None = None,
    resume: bool = False,
    optimizer: OptimizerPayload | None = None,
) -> SnapshotMessage:
    """The wire message of one snapshot.

    Args:
        snapshot: what :class:`~curvscope.probe.collector.ViViTCollector` computed.
        run, step: the message's key.
        config: the configuration the snapshot was computed with; its ``per_sample``
            decides whether the ``[N, K']`` / ``[N', K']`` matrices travel.
        mode: ``"in-loop"``, ``"held-out"`` or ``"function"``.
        loss: the training loss to report (default: the snapshot's own batch loss).
        wall_time: seconds since the epoch (default: now).
        user_step: the training loop's own step number, where it differs from ``step``.
        instance, resume: the probe instance sending it, and whether it continues a run
            another instance started (:attr:`SnapshotMessage.resume`).
        optimizer: the optimizer's state at this step (:func:`encode_optimizer`), if known.

    Raises:
        WireError: a non-finite number, or a value the protocol refuses (bad run name,
            negative step, ...).
    """
    loss = snapshot.loss if loss is None else loss
    if not math.isfinite(loss):
        raise WireError(f"the loss is {loss}: numbers on the wire must be finite")
    groups = [_group(g, config.per_sample) for g in snapshot.groups]
    try:
        return SnapshotMessage(
            run=run,
            step=step,
            user_step=user_step,
            instance=instance,
            resume=resume,
            wall_time=time.time() if wall_time is None else wall_time,
            loss=loss,
            batch_size=snapshot.batch_size,
            config=ConfigPayload(
                **config.to_wire(snapshot.batch_size), mode=mode, backend=snapshot.backend
            ),
            groups=groups,
            optimizer=optimizer,
        )
    except ValueError as err:  # pydantic.ValidationError is a ValueError
        raise WireError(f"snapshot of run {run!r} at step {step} is not valid: {err}") from err


def encode_event(
    run: str,
    message: str,
    *,
    step: int | None = None,
    level: Literal["info", "warning", "error"] = "error",
    wall_time: float | None = None,
    instance: str | None = None,
    resume: bool = False,
) -> EventMessage:
    """An event of the run (an error inside the probe, a skipped snapshot, ...).

    The text is cut to the protocol's 10 000 characters.
    """
    return EventMessage(
        run=run,
        step=step,
        instance=instance,
        resume=resume,
        wall_time=time.time() if wall_time is None else wall_time,
        level=level,
        message=message[:10_000],
    )
