"""Every exception the probe raises on purpose, in one place."""

from __future__ import annotations

__all__ = [
    "BatchNormTrainingError",
    "BatchSizeMismatchError",
    "ConfigError",
    "CostError",
    "CurvscopeError",
    "NonFiniteLossError",
    "UnsupportedLayerError",
    "UnsupportedLossError",
]


class CurvscopeError(Exception):
    """Base class of all errors raised by curvscope on purpose."""


class ConfigError(CurvscopeError, ValueError):
    """A :class:`~curvscope.probe.ViViTConfig` value is invalid for this model or batch."""


class CostError(ConfigError):
    """The snapshot asked for would not fit: the message says its size and what to change."""


class UnsupportedLayerError(CurvscopeError, TypeError):
    """A module with trainable parameters (or a container) that BackPACK cannot handle.

    Attributes:
        path: dotted path of the module inside the model (``""`` for the model itself).
        layer: the module's class name.
    """

    def __init__(self, path: str, layer: str, detail: str = "") -> None:
        self.path = path
        self.layer = layer
        where = f"'{path}'" if path else "the model itself"
        msg = f"unsupported layer {layer} at {where}"
        super().__init__(f"{msg}: {detail}" if detail else msg)


class BatchNormTrainingError(UnsupportedLayerError):
    """BatchNorm in training mode couples the samples: BackPACK has no per-sample factors."""

    def __init__(self, path: str, layer: str) -> None:
        super().__init__(
            path,
            layer,
            "BatchNorm in training mode mixes the samples of a batch, so BackPACK's per-sample "
            "factors do not exist; backend='func' (or 'auto') measures the full-batch GGN, "
            "or call model.eval() for the snapshot",
        )


class UnsupportedLossError(CurvscopeError, TypeError):
    """The loss function is not one BackPACK can take second-order information from."""


class BatchSizeMismatchError(CurvscopeError, ValueError):
    """Inputs, targets (or model outputs) disagree on the batch size."""


class NonFiniteLossError(CurvscopeError, FloatingPointError):
    """The loss is NaN or infinite, so no snapshot can be computed."""
