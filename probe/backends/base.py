"""The interface every curvature backend implements: :class:`Backend`.

A backend turns one forward and backward pass into, per measured parameter, a
:class:`~curvscope.probe.vivit.factors.Factor` (its rows of the GGN factor ``V`` and of the
per-sample gradients), handed to ``sink(param, factor)``; the collector folds them into
each group's Gram matrix and does the ViViT maths on top, the same for every backend.

Lifecycle (what :class:`~curvscope.probe.collector.ViViTCollector` does)::

    with backend.hooks():                       # during the forward pass and the loss
        loss = loss_fn(outputs(model(x)), y)
        with backend.backward(subset, sink):    # the factors reach the sink in here
            loss.backward()                     # skipped when not needs_loss_backward
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import ClassVar, Literal

from torch import nn

from curvscope.probe.vivit.factors import Factor

__all__ = ["Backend", "BackendName", "Sink"]

BackendName = Literal["backpack", "func"]
Sink = Callable[[nn.Parameter, Factor], None]


class Backend(ABC):
    """Computes the per-parameter factors of one pass."""

    name: ClassVar[BackendName]
    early_hooks: ClassVar[bool] = False
    """Whether :meth:`hooks` must be entered before the model's forward pre-hooks run."""
    needs_loss_backward: ClassVar[bool] = True
    """Whether the factors come from the ``loss.backward()`` inside :meth:`backward`."""

    @abstractmethod
    def hooks(self) -> AbstractContextManager[None]:
        """Observe the forward pass and the loss call made inside; detach on exit."""

    @abstractmethod
    def backward(
        self, subset: list[int] | None, batch_size: int, sink: Sink
    ) -> AbstractContextManager[None]:
        """Hand every measured parameter's factor to ``sink`` by the end of the context.

        Errors are raised on exit (never from inside the user's backward pass).
        """

    def curvature_scale(self, batch_size: int, curvature_samples: int) -> float:
        """Factor the Gram matrix needs for the curvature subset's own reduction (1: none)."""
        return 1.0
