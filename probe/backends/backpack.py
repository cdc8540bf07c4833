"""The ``backpack`` backend: BackPACK's ``SqrtGGN{Exact,MC}`` in the user's backward pass.

The fast path for the layers BackPACK supports (:func:`supported`); the per-layer
plumbing lives in :mod:`curvscope.probe.backends.backpack_extension`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from backpack import backpack
from torch import nn

from curvscope.probe.backends.backpack_checks import check_loss, prepare_model
from curvscope.probe.backends.backpack_extension import (
    FactorExtension,
    attach_hooks,
    release_results,
)
from curvscope.probe.backends.base import Backend, Sink
from curvscope.probe.config import ViViTConfig

__all__ = ["BackpackBackend", "cuda_devices"]


class BackpackBackend(Backend):
    """Factors from BackPACK's backpropagation of the loss Hessian's square root.

    Args:
        model: the network (BackPACK-supported layers; BatchNorm in eval mode).
        loss_fn: ``CrossEntropyLoss``, ``MSELoss`` or ``BCEWithLogitsLoss`` (one output).
        config: curvature kind, Monte-Carlo draws and seed.
        params: the measured parameters.

    Raises:
        CurvscopeError: a layer, loss or forward pass BackPACK cannot handle.
    """

    name = "backpack"

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        config: ViViTConfig,
        params: list[nn.Parameter],
    ) -> None:
        check_loss(loss_fn)
        self.model = model
        self.loss_fn = loss_fn
        self.config = config
        self.module = prepare_model(model)
        self._accepts = {id(p) for p in params}
        self._failures: list[Exception] = []  # errors of the BackPACK hooks in a pass
        # A model that is itself one layer gets its backward hook only if the hook is
        # attached before its forward starts.
        self.early_hooks = next(model.children(), None) is None  # type: ignore[misc]

    @property
    def needs_conversion(self) -> bool:
        """Whether the forward pass must run through BackPACK's converted module."""
        return self.module is not self.model

    def hooks(self) -> AbstractContextManager[None]:
        return attach_hooks(self.module, self.loss_fn, failures=self._failures)

    def curvature_scale(self, batch_size: int, curvature_samples: int) -> float:
        # BackPACK keeps the full batch's 1/N; the subset's own mean needs 1/M.
        mean = self.loss_fn.reduction == "mean"
        return batch_size / curvature_samples if mean else 1.0

    @contextmanager
    def backward(self, subset: list[int] | None, batch_size: int, sink: Sink) -> Iterator[None]:
        extension = FactorExtension(
            self.config.curvature,
            self.config.mc_samples,
            subset,
            sink=sink,
            accepts=lambda p: id(p) in self._accepts,
        )
        # Monte-Carlo draws come from a forked RNG: the user's stream never advances.
        mc = self.config.curvature == "mc"
        seeded = mc and self.config.seed is not None
        rng = torch.random.fork_rng(devices=cuda_devices(self.model)) if mc else nullcontext()
        with rng, warnings.catch_warnings():
            # BackPACK's full backward hooks fire on the first layer, whose input needs no
            # gradient; PyTorch warns about it, but that is exactly what BackPACK expects.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            # A scaled loss (s·loss) is measured as the loss itself: the collector divides
            # the gradients by the s the Probe saw reach the loss (Probe._on_loss_grad).
            warnings.filterwarnings("ignore", message="The output of .* seems to have been")
            if seeded:
                torch.manual_seed(self.config.seed)
            self._failures.clear()
            try:
                with backpack(extension.backpack_extension):
                    yield
                if self._failures:
                    raise self._failures[0]
            finally:
                self._failures.clear()
                release_results(self.module)


def cuda_devices(model: nn.Module) -> list[int]:
    """CUDA device indices of the model's parameters (for ``torch.random.fork_rng``)."""
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
