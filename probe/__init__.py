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
"""

from curvscope.probe.compute import compute_snapshot
from curvscope.probe.config import ViViTConfig
from curvscope.probe.errors import (
    BatchNormTrainingError,
    BatchSizeMismatchError,
    ConfigError,
    CurvscopeError,
    NonFiniteLossError,
    UnsupportedLayerError,
    UnsupportedLossError,
)
from curvscope.probe.snapshot import GroupSpectrum, Snapshot

__all__ = [
    "BatchNormTrainingError",
    "BatchSizeMismatchError",
    "ConfigError",
    "CurvscopeError",
    "GroupSpectrum",
    "NonFiniteLossError",
    "Snapshot",
    "UnsupportedLayerError",
    "UnsupportedLossError",
    "ViViTConfig",
    "compute_snapshot",
]
