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

The public names are imported on first use (PEP 562), so that torch-free submodules
(``spool``, ``transport``, ``upload``: the ``curvscope upload`` command) load without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from curvscope.probe.compute import compute_snapshot
    from curvscope.probe.config import ViViTConfig
    from curvscope.probe.damping import BootstrapDamping, ConstantDamping, DampingPolicy
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
    from curvscope.probe.newton import damped_newton_step, newton_step
    from curvscope.probe.optim import NewtonBatch, ViViTNewton
    from curvscope.probe.probe import Probe
    from curvscope.probe.schedules import linear, logarithmic
    from curvscope.probe.snapshot import GroupSpectrum, Snapshot
    from curvscope.probe.transport import CloseReport, TransportOptions
    from curvscope.probe.wire import WireError

_EXPORTS: dict[str, str] = {
    "BatchNormTrainingError": "errors",
    "BatchSizeMismatchError": "errors",
    "BootstrapDamping": "damping",
    "CloseReport": "transport",
    "ConfigError": "errors",
    "CostError": "errors",
    "ConstantDamping": "damping",
    "CurvscopeError": "errors",
    "DampingPolicy": "damping",
    "GroupSpectrum": "snapshot",
    "NewtonBatch": "optim",
    "NonFiniteLossError": "errors",
    "Probe": "probe",
    "Snapshot": "snapshot",
    "TransportOptions": "transport",
    "UnsupportedLayerError": "errors",
    "UnsupportedLossError": "errors",
    "ViViTConfig": "config",
    "ViViTNewton": "optim",
    "WireError": "wire",
    "compute_snapshot": "compute",
    "damped_newton_step": "newton",
    "linear": "schedules",
    "logarithmic": "schedules",
    "newton_step": "newton",
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
