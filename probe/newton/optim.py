"""A damped-Newton optimizer on ViViT snapshots: :class:`ViViTNewton`.

Example (linear regression, one Newton step per batch)::

    opt = ViViTNewton(model.parameters(), lr=1.0, damping=BootstrapDamping(seed=0))
    for x, y in loader:
        loss = opt.step(model=model, loss_fn=nn.MSELoss(), inputs=x, targets=y)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from curvscope.probe.compute import compute_snapshot
from curvscope.probe.config import ViViTConfig
from curvscope.probe.newton.damping import ConstantDamping, DampingPolicy
from curvscope.probe.newton.newton import newton_step
from curvscope.probe.snapshot import Snapshot

__all__ = ["NewtonBatch", "ViViTNewton"]


class NewtonBatch(NamedTuple):
    """What one step needs: ``loss_fn(model(inputs), targets)`` is the batch loss."""

    model: nn.Module
    loss_fn: nn.Module
    inputs: Tensor
    targets: Tensor


class ViViTNewton(torch.optim.Optimizer):
    """Damped Newton steps along the GGN eigenvectors, ``θ ← θ + lr · Δθ``.

    Each :meth:`step` computes one ViViT snapshot (one forward and one BackPACK backward
    pass, factors kept), chooses the dampings ``δ_k`` of every snapshot group with the
    policy and applies ``Δθ = −Σ_k γ_k/(λ_k + δ_k) e_k`` per group (flat directions are
    left alone). The block structure comes from ``config.param_groups``; the learning
    rate from the optimizer's own param groups (``lr`` may differ between them). With
    ``config.param_groups="all"`` the one block is the optimizer's parameters; with
    ``"layer"`` or explicit lists, parameters of a block that the optimizer does not hold
    are left unchanged. ``p.grad`` is neither read nor written.

    Args:
        params: the parameters to optimise (or param-group dicts with ``lr``).
        lr: learning-rate factor on the step (default 1: the damped Newton step).
        damping: a damping policy or a number (constant damping); default ``1.0``.
        config: the snapshot's configuration (curvature, sub-sampling, groups, top_k).

    Attributes:
        last_snapshot: the snapshot of the latest step (``None`` before the first).
        last_dampings: ``{group name: [K'] δ}`` of the latest step.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter] | Iterable[dict[str, Any]],
        lr: float = 1.0,
        damping: DampingPolicy | float = 1.0,
        config: ViViTConfig | None = None,
    ) -> None:
        if not lr > 0.0:
            raise ValueError(f"lr must be > 0, got {lr}")
        super().__init__(params, {"lr": lr})
        self.damping = ConstantDamping(damping) if isinstance(damping, (int, float)) else damping
        self.config = config or ViViTConfig()
        self.last_snapshot: Snapshot | None = None
        self.last_dampings: dict[str, Tensor] = {}

    @torch.no_grad()
    def step(  # type: ignore[override]
        self,
        closure: Callable[[], NewtonBatch] | None = None,
        *,
        model: nn.Module | None = None,
        loss_fn: nn.Module | None = None,
        inputs: Tensor | None = None,
        targets: Tensor | None = None,
    ) -> float:
        """One damped Newton step on a batch; returns the batch loss before the step.

        The batch comes from ``closure()`` (returning a :class:`NewtonBatch`) or from the
        keyword arguments.
        """
        if closure is not None:
            batch = NewtonBatch(*closure())
        elif model is None or loss_fn is None or inputs is None or targets is None:
            raise ValueError("step needs a closure or model, loss_fn, inputs and targets")
        else:
            batch = NewtonBatch(model, loss_fn, inputs, targets)
        lr_of = {id(p): group["lr"] for group in self.param_groups for p in group["params"]}
        config = self.config
        if config.param_groups == "all":
            owned = [p for group in self.param_groups for p in group["params"] if p.requires_grad]
            config = dataclasses.replace(config, param_groups=[owned])
        with torch.enable_grad():
            snap = compute_snapshot(*batch, config, keep_factors=True)
        dampings: dict[str, Tensor] = {}
        for group in snap.groups:
            delta = self.damping(group.gammas, group.lambdas)
            dampings[group.name] = delta
            for p, update in zip(group.params, newton_step(group, delta), strict=True):
                if id(p) in lr_of:
                    p.add_(update, alpha=lr_of[id(p)])
        self.last_snapshot = snap
        self.last_dampings = dampings
        return snap.loss
