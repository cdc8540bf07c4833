"""Snapshots in full precision whatever the training loop runs in (AMP, half weights).

The ViViT quantities come from eigendecompositions of Gram matrices and from per-sample
products that half precision cannot carry (bfloat16 keeps 8 bits of mantissa; torch's
``eigh`` does not even take it). So a snapshot is always computed outside ``autocast``
and, for a model whose weights are ``float16``/``bfloat16``, on ``float32`` versions of
them: :func:`full_precision` casts the low-precision parameters and buffers (of the model
and of the loss module) and the batch to ``float32`` for the pass and puts the original
tensors back afterwards, bit for bit. Its cost: one ``float32`` copy of the low-precision
weights while the snapshot runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

__all__ = ["LOW_PRECISION", "autocast_active", "full_precision", "is_low_precision", "no_autocast"]

LOW_PRECISION = frozenset({torch.float16, torch.bfloat16})
"""Floating dtypes a snapshot is never computed in."""

T = TypeVar("T")


def _device_types() -> list[str]:
    types = ["cpu"]
    if torch.cuda.is_available():
        types.append("cuda")
    return types


def autocast_active() -> bool:
    """Whether an ``autocast`` region is active (CPU or CUDA) in this thread."""
    return any(torch.is_autocast_enabled(device) for device in _device_types())


@contextmanager
def no_autocast() -> Iterator[None]:
    """Autocast off inside (for every device type it may be on for)."""
    with ExitStack() as stack:
        for device in _device_types():
            stack.enter_context(torch.autocast(device_type=device, enabled=False))
        yield


def is_low_precision(*modules: nn.Module) -> bool:
    """Whether any parameter or buffer of ``modules`` is ``float16``/``bfloat16``."""
    return any(
        t.dtype in LOW_PRECISION
        for module in modules
        for t in (*module.parameters(), *module.buffers())
    )


def _cast(data: T) -> T:
    """Low-precision floating tensors in a tensor, tuple/list or dict, as ``float32``."""
    if isinstance(data, Tensor):
        return data.float() if data.dtype in LOW_PRECISION else data  # type: ignore[return-value]
    if isinstance(data, Mapping):
        return {k: _cast(v) for k, v in data.items()}  # type: ignore[return-value]
    if isinstance(data, Sequence) and not isinstance(data, str):
        return type(data)(_cast(v) for v in data)  # type: ignore[return-value, call-arg]
    return data


@contextmanager
def full_precision(*modules: nn.Module) -> Iterator[Any]:
    """Low-precision parameters and buffers of ``modules`` as ``float32`` inside.

    Yields a function that casts a batch (tensor, tuple or dict) the same way. On exit,
    every parameter gets its original storage back (the very tensor, not a cast of the
    ``float32`` one) and every buffer its original tensor: nothing of the user's model
    changes, whatever happened inside. Parameters keep their identity throughout
    (optimizers hold them).
    """
    params: list[tuple[nn.Parameter, Tensor]] = []
    buffers: list[tuple[nn.Module, str, Tensor]] = []
    seen: set[int] = set()
    try:
        for module in modules:
            for p in module.parameters():
                if p.dtype in LOW_PRECISION and id(p) not in seen:
                    seen.add(id(p))
                    params.append((p, p.data))
                    p.data = p.data.float()
            for sub in module.modules():
                for name, buf in sub._buffers.items():
                    if buf is not None and buf.dtype in LOW_PRECISION and id(buf) not in seen:
                        seen.add(id(buf))
                        buffers.append((sub, name, buf))
                        sub._buffers[name] = buf.float()
        yield _cast
    finally:
        for p, data in params:
            p.data = data
        for sub, name, buf in buffers:
            sub._buffers[name] = buf
