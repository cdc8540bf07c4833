"""``backend="auto"``: BackPACK where it can measure the pass, ``func`` where it cannot.

Whether BackPACK can measure a pass depends on the data too (BackPACK's losses take
``[N, C]`` outputs and class-index targets only: no positions, no probability targets, no
ignored targets), which is known only once the loss has been called. So both backends
observe the forward pass, and :meth:`AutoBackend.backward` picks one per pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from torch import Tensor, nn

from curvscope.probe.backends.backpack import BackpackBackend
from curvscope.probe.backends.base import Backend, BackendName, Sink
from curvscope.probe.backends.func import FuncBackend

__all__ = ["AutoBackend", "backpack_takes"]


def backpack_takes(loss_fn: nn.Module, outputs: Tensor, targets: Any) -> bool:
    """Whether BackPACK's factor of ``loss_fn(outputs, targets)`` is the exact one."""
    if not isinstance(targets, Tensor) or outputs.dim() != 2:
        return False
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        if targets.is_floating_point() or targets.dim() != 1:
            return False
        return not bool((targets == loss_fn.ignore_index).any())
    return isinstance(loss_fn, nn.MSELoss) and targets.shape == outputs.shape


class AutoBackend(Backend):
    """:class:`BackpackBackend` for the passes it can measure, else :class:`FuncBackend`."""

    name: BackendName = "backpack"  # type: ignore[misc] - the backend of the last pass

    def __init__(self, backpack: BackpackBackend, func: FuncBackend) -> None:
        self.backpack = backpack
        self.func = func
        self.early_hooks = backpack.early_hooks  # type: ignore[misc]
        self.module = backpack.module
        self._chosen: Backend = backpack

    @property
    def needs_loss_backward(self) -> bool:  # type: ignore[override]
        return self._chosen.needs_loss_backward

    @contextmanager
    def hooks(self) -> Iterator[None]:
        with ExitStack() as stack:
            stack.enter_context(self.backpack.hooks())
            stack.enter_context(self.func.hooks())
            yield

    def curvature_scale(self, batch_size: int, curvature_samples: int) -> float:
        return self._chosen.curvature_scale(batch_size, curvature_samples)

    @contextmanager
    def backward(self, subset: list[int] | None, batch_size: int, sink: Sink) -> Iterator[None]:
        captured = self.func.captured
        takes = captured is not None and backpack_takes(self.backpack.loss_fn, *captured[:2])
        self._chosen = self.backpack if takes else self.func
        self.name = self._chosen.name
        with self._chosen.backward(subset, batch_size, sink):
            yield
