"""When the probe measures: schedules are ``step -> bool`` callables.

>>> from curvscope.probe.loop.schedules import linear, logarithmic
>>> [s for s in range(12) if linear(5)(s)]
[0, 5, 10]
>>> [s for s in range(200) if logarithmic(0, 2, steps=5)(s)]
[0, 1, 3, 10, 32, 100]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from curvscope.probe.errors import ConfigError

__all__ = ["Schedule", "as_schedule", "linear", "logarithmic"]

Schedule = Callable[[int], bool]
"""A schedule says whether the probe measures at a step (steps are ints >= 0)."""


@dataclass(frozen=True)
class _Linear:
    interval: int
    offset: int

    def __call__(self, step: int) -> bool:
        return step >= self.offset and (step - self.offset) % self.interval == 0


@dataclass(frozen=True)
class _Logarithmic:
    steps: frozenset[int] = field(repr=False)
    description: str

    def __call__(self, step: int) -> bool:
        return step in self.steps

    def __repr__(self) -> str:
        return self.description


def _int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def linear(interval: int, offset: int = 0) -> Schedule:
    """Every ``interval`` steps, starting at ``offset``: ``offset, offset + interval, ...``."""
    return _Linear(_int("interval", interval, 1), _int("offset", offset, 0))


def logarithmic(
    start: float, end: float, steps: int = 300, base: float = 10.0, init: bool = True
) -> Schedule:
    """``steps`` log-spaced points ``round(base**t)`` for t from ``start`` to ``end``.

    Dense early in training, sparse later (Cockpit's schedule of the same name). Duplicate
    steps after rounding count once; ``init`` adds step 0.

    Args:
        start, end: exponents of the first and last step (``start <= end``).
        steps: number of exponents, evenly spaced (``>= 1``; one gives ``base**start``).
        base: base of the logarithm (``> 1``).
        init: also measure at step 0.
    """
    _int("steps", steps, 1)
    if not start <= end:
        raise ConfigError(f"logarithmic needs start <= end, got {start} and {end}")
    if not base > 1:
        raise ConfigError(f"logarithmic needs base > 1, got {base}")
    ts = [start] if steps == 1 else [start + (end - start) * i / (steps - 1) for i in range(steps)]
    chosen = {round(base**t) for t in ts}
    if init:
        chosen.add(0)
    text = f"logarithmic({start}, {end}, steps={steps}, base={base}, init={init})"
    return _Logarithmic(frozenset(chosen), text)


def as_schedule(every: int | Schedule) -> Schedule:
    """An ``int`` k means :func:`linear` (k); a callable is used as it is."""
    if isinstance(every, int) and not isinstance(every, bool):
        return linear(every)
    if callable(every):
        return every
    raise ConfigError(f"every must be an int >= 1 or a callable step -> bool, got {every!r}")
