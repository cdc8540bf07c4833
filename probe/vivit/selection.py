"""Which eigen-directions get directional statistics: :func:`select_directions`.

The spectrum always keeps all K non-trivial eigenvalues; γ, λ, their SNRs, the gradient
overlap and the Newton steps are computed for a selection of K' directions, given as
indices into the descending eigenvalues:

- ``None``: all of them (or the ``top_k`` largest, the older spelling);
- ``("top", k)`` / ``("bottom", k)``: the k largest / smallest;
- ``("band", low, high)``: every λ with ``low <= λ <= high`` (``None``: unbounded);
- a callable ``eigvals [K] -> indices``: anything else (an absolute threshold, every
  other direction, ...).

Indices come back ascending, i.e. in descending order of λ, without repeats. Directions
that split a degenerate eigenvalue (select some of its copies, not all) are as arbitrary
as the eigenvectors of that eigenspace: select all copies (a band does) for numbers that
do not depend on the eigensolver's choice of basis.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal, TypeAlias

import torch
from torch import Tensor

from curvscope.probe.errors import ConfigError

__all__ = ["DirectionSpec", "check_spec", "describe", "select_directions"]

DirectionSpec: TypeAlias = (
    tuple[Literal["top", "bottom"], int]
    | tuple[Literal["band"], float | None, float | None]
    | Callable[[Tensor], Sequence[int] | Tensor]
    | None
)
"""A selection of eigen-directions (see the module docstring)."""


def check_spec(spec: DirectionSpec) -> None:
    """Raise :class:`ConfigError` unless ``spec`` is a valid :data:`DirectionSpec`."""
    if spec is None or callable(spec):
        return
    if not isinstance(spec, tuple) or not spec:
        raise ConfigError(
            "directions must be None, ('top', k), ('bottom', k), ('band', low, high) or a "
            f"callable eigvals -> indices, got {spec!r}"
        )
    kind = spec[0]
    if kind in ("top", "bottom"):
        k = spec[1] if len(spec) == 2 else None
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"directions ({kind!r}, k) needs an int k >= 1, got {spec!r}")
    elif kind == "band":
        if len(spec) != 3:
            raise ConfigError(f"directions ('band', low, high) needs two bounds, got {spec!r}")
        low, high = spec[1], spec[2]
        for bound in (low, high):
            if bound is not None and (
                isinstance(bound, bool) or not isinstance(bound, (int, float)) or math.isnan(bound)
            ):
                raise ConfigError(f"band bounds must be numbers or None, got {spec!r}")
        if low is not None and high is not None and low > high:
            raise ConfigError(f"band bounds must satisfy low <= high, got {spec!r}")
    else:
        raise ConfigError(f"unknown directions kind {kind!r}: 'top', 'bottom' or 'band'")


def describe(spec: DirectionSpec, top_k: int | None = None) -> str | None:
    """The selection as text for the wire: ``None`` (all), ``"top:5"``, ``"bottom:3"``,
    ``"band:0.001:10"`` (an open bound is empty), ``"callable:<name>"``."""
    if spec is None:
        return None if top_k is None else f"top:{top_k}"
    if callable(spec):
        return f"callable:{getattr(spec, '__name__', type(spec).__name__)}"[:200]
    if spec[0] == "band":
        low, high = spec[1], spec[2]  # type: ignore[misc]
        return f"band:{'' if low is None else repr(low)}:{'' if high is None else repr(high)}"
    return f"{spec[0]}:{spec[1]}"


def select_directions(eigvals: Tensor, spec: DirectionSpec, top_k: int | None = None) -> Tensor:
    """Indices ``[K']`` (ascending, distinct) of the selected directions.

    Args:
        eigvals: ``[K]`` eigenvalues, descending.
        spec: the selection; ``None`` with ``top_k`` means ``("top", top_k)``.
        top_k: the older spelling of ``("top", k)``.

    Raises:
        ConfigError: a callable returned something that is not distinct integer indices
            into ``eigvals``.
    """
    k_all = eigvals.shape[0]
    arange = torch.arange(k_all, device=eigvals.device)
    if spec is None:
        return arange if top_k is None else arange[: min(top_k, k_all)]
    if callable(spec):
        return _checked(spec(eigvals.detach().clone()), k_all, eigvals.device)
    kind = spec[0]
    if kind == "top":
        return arange[: min(int(spec[1]), k_all)]  # type: ignore[misc]
    if kind == "bottom":
        return arange[k_all - min(int(spec[1]), k_all) :]  # type: ignore[misc]
    low, high = spec[1], spec[2]  # type: ignore[misc]
    keep = torch.ones(k_all, dtype=torch.bool, device=eigvals.device)
    if low is not None:
        keep &= eigvals >= low
    if high is not None:
        keep &= eigvals <= high
    return arange[keep]


def _checked(chosen: Sequence[int] | Tensor, k_all: int, device: torch.device) -> Tensor:
    values = chosen.tolist() if isinstance(chosen, Tensor) else list(chosen)
    if isinstance(chosen, Tensor) and chosen.is_floating_point():
        raise ConfigError("the directions callable must return integer indices, got floats")
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int)]
    if bad:
        raise ConfigError(f"the directions callable must return integer indices, got {bad[0]!r}")
    out = [v for v in values if not 0 <= v < k_all]
    if out:
        raise ConfigError(f"direction index {out[0]} is out of range for K = {k_all}")
    if len(set(values)) != len(values):
        raise ConfigError(f"the directions callable returned repeated indices: {values}")
    return torch.tensor(sorted(values), dtype=torch.long, device=device)
