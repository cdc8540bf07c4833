"""curvscope probe: ViViT curvature snapshots of a PyTorch model (torch side).

>>> import torch
>>> from torch import nn
>>> from curvscope.probe import ViViTConfig, compute_snapshot
>>> _ = torch.manual_seed(0)
>>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
>>> x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
>>> snap = compute_snapshot(model, nn.CrossEntropyLoss(), x, y, ViViTConfig())
>>> group = snap.groups[0]
>>> group.gammas.shape[0], group.lambdas.shape[0], snap.batch_size
(8, 8, 8)

The public names are imported on first use (PEP 562), so that the torch-free subpackage
``stream`` (spool, transport, upload: the ``curvscope upload`` command) loads without torch.

Layout: ``backends`` (the only modules that import BackPACK or do autograd plumbing),
``vivit`` (the maths on the backends' quantities), ``newton`` (damping and Newton steps),
``stream`` (torch-free transport), ``loop`` (:class:`Probe` and its parts).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from curvscope.probe.compute import compute_snapshot
    from curvscope.probe.config import ViViTConfig
    from curvscope.probe.errors import (
        BatchNormTrainingError,
        BatchSizeMismatchError,
        ConfigError,
        CostError,
        CurvscopeError,
        NonFiniteLossError,
        UnsupportedLayerError,
        UnsupportedLossError,
    )
    from curvscope.probe.loop.probe import Probe
    from curvscope.probe.loop.schedules import linear, logarithmic
    from curvscope.probe.loop.wire import WireError
    from curvscope.probe.newton.damping import BootstrapDamping, ConstantDamping, DampingPolicy
    from curvscope.probe.newton.newton import damped_newton_step, newton_step
    from curvscope.probe.newton.optim import NewtonBatch, ViViTNewton
    from curvscope.probe.snapshot import GroupSpectrum, Snapshot
    from curvscope.probe.stream.transport import CloseReport, TransportOptions

_EXPORTS: dict[str, str] = {
    "BatchNormTrainingError": "errors",
    "BatchSizeMismatchError": "errors",
    "BootstrapDamping": "newton.damping",
    "CloseReport": "stream.transport",
    "ConfigError": "errors",
    "CostError": "errors",
    "ConstantDamping": "newton.damping",
    "CurvscopeError": "errors",
    "DampingPolicy": "newton.damping",
    "GroupSpectrum": "snapshot",
    "NewtonBatch": "newton.optim",
    "NonFiniteLossError": "errors",
    "Probe": "loop.probe",
    "Snapshot": "snapshot",
    "TransportOptions": "stream.transport",
    "UnsupportedLayerError": "errors",
    "UnsupportedLossError": "errors",
    "ViViTConfig": "config",
    "ViViTNewton": "newton.optim",
    "WireError": "loop.wire",
    "compute_snapshot": "compute",
    "damped_newton_step": "newton.newton",
    "linear": "loop.schedules",
    "logarithmic": "loop.schedules",
    "newton_step": "newton.newton",
}
"""Public name -> the submodule that defines it."""

__all__ = [
    "BatchNormTrainingError",
    "BatchSizeMismatchError",
    "BootstrapDamping",
    "CloseReport",
    "ConfigError",
    "ConstantDamping",
    "CostError",
    "CurvscopeError",
    "DampingPolicy",
    "GroupSpectrum",
    "NewtonBatch",
    "NonFiniteLossError",
    "Probe",
    "Snapshot",
    "TransportOptions",
    "UnsupportedLayerError",
    "UnsupportedLossError",
    "ViViTConfig",
    "ViViTNewton",
    "WireError",
    "compute_snapshot",
    "damped_newton_step",
    "linear",
    "logarithmic",
    "newton_step",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
