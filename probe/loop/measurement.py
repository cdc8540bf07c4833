"""How a scheduled step is measured: in the loop's own pass, or on a held-out batch."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from curvscope.probe.collector import (
    Inputs,
    OutputsAdapter,
    ViViTCollector,
    batch_size_of,
    cuda_devices,
)
from curvscope.probe.compute import compute_snapshot
from curvscope.probe.config import ViViTConfig
from curvscope.probe.errors import NonFiniteLossError
from curvscope.probe.snapshot import Snapshot

__all__ = ["HeldOut", "InLoop", "eval_mode", "without_hessian"]


class InLoop:
    """Measure the user's own forward pass and loss (``mode = "in-loop"``).

    The collector is built (and its checks run) at construction, and again when the
    model's modules or BatchNorm modes change.
    """

    mode = "in-loop"

    def __init__(self, model: nn.Module, loss_fn: nn.Module, config: ViViTConfig) -> None:
        self.model, self.loss_fn, self.config = model, loss_fn, config
        self.collector = ViViTCollector(model, loss_fn, config, in_loop=True)
        self._structure = _structure(model)

    @property
    def backend_name(self) -> str:
        """The backend of the last pass (``"auto"`` decides per pass)."""
        return self.collector.backend.name

    @property
    def early_hooks(self) -> bool:
        """Whether the backend's hooks must be attached before the forward pass starts."""
        return self.collector.backend.early_hooks

    def hooks(self) -> AbstractContextManager[None]:
        """The backend's observers for the next forward pass (rechecking a changed model)."""
        if _structure(self.model) != self._structure:  # layers or modes changed since
            self.collector = ViViTCollector(self.model, self.loss_fn, self.config, in_loop=True)
            self._structure = _structure(self.model)
        return self.collector.hooks()

    def backward(self, loss: float, batch_size: int) -> AbstractContextManager[None]:
        """The factors of the user's ``loss.backward()`` (the loss must be finite)."""
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"the loss is {loss}; no snapshot")
        return self.collector.backward(batch_size)

    def snapshot(self, loss: float, grad_scale: float = 1.0) -> Snapshot:
        """The snapshot of the pass; ``grad_scale``: the backward pass was of ``s·loss``."""
        return self.collector.snapshot(loss, grad_scale)

    def drop(self) -> None:
        """Let go of the pass's factors without a snapshot."""
        self.collector.discard()

    def again(self, inputs: Inputs, targets: Tensor, outputs: OutputsAdapter | None) -> Snapshot:
        """The batch measured again in float32 outside autocast (AMP, half weights).

        The model's modes stay as the loop has them (dropout draws new masks from a forked
        RNG); buffers, ``p.grad`` and the RNG are left as they were. No Hessian: the probe
        adds it on the steps due.
        """
        with torch.random.fork_rng(devices=cuda_devices(self.model)):
            return compute_snapshot(
                self.model,
                self.loss_fn,
                inputs,
                targets,
                without_hessian(self.config),
                outputs=outputs,
            )


class HeldOut:
    """Measure a fixed batch after the user's step (``mode = "held-out"``).

    With the model in eval mode (restored after), the RNG forked and the user's gradients
    restored, so nothing of the training run changes.
    """

    mode = "held-out"

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        config: ViViTConfig,
        batch: tuple[Inputs, Tensor],
        outputs: OutputsAdapter | None,
    ) -> None:
        inputs, targets = batch
        config.subsample_indices(batch_size_of(inputs, targets))
        with eval_mode(model):  # the up-front checks only
            checked = ViViTCollector(model, loss_fn, config, outputs=outputs)
        self.backend_name: str = checked.backend.name
        self.model, self.loss_fn, self.config = model, loss_fn, config
        self.batch = batch
        self.outputs = outputs

    def snapshot(self, hessian: bool = True) -> Snapshot:
        """The snapshot of the held-out batch (``hessian``: with the config's Hessian)."""
        config = self.config if hessian else without_hessian(self.config)
        with torch.random.fork_rng(devices=cuda_devices(self.model)), eval_mode(self.model):
            snapshot = compute_snapshot(
                self.model, self.loss_fn, *self.batch, config, outputs=self.outputs
            )
        self.backend_name = snapshot.backend
        return snapshot


def without_hessian(config: ViViTConfig) -> ViViTConfig:
    """``config`` with the Hessian off (itself when it is off already)."""
    if not config.hessian_top_k:
        return config
    return dataclasses.replace(config, hessian_top_k=0, hessian_slq_probes=0)


def _structure(model: nn.Module) -> tuple[tuple[int, type, bool], ...]:
    """What the construction checks depend on: the modules and BatchNorm modes."""
    return tuple(
        (id(m), type(m), isinstance(m, _BatchNorm) and m.training) for m in model.modules()
    )


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode inside; each module's own mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
