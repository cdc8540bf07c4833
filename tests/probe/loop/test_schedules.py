"""Schedules: which steps the probe measures."""

from __future__ import annotations

import itertools

import pytest

from curvscope.probe.errors import ConfigError
from curvscope.probe.loop.schedules import as_schedule, linear, logarithmic


def _steps(schedule, n: int = 1000) -> list[int]:
    return [s for s in range(n) if schedule(s)]


def test_linear_every_k_from_offset() -> None:
    assert _steps(linear(7), 30) == [0, 7, 14, 21, 28]
    assert _steps(linear(10, offset=3), 40) == [3, 13, 23, 33]
    assert _steps(linear(1), 5) == [0, 1, 2, 3, 4]


def test_logarithmic_matches_rounded_powers() -> None:
    # Independent reference: 10 ** (2 * i / 19) for i = 0..19, rounded half-to-even.
    expected = sorted({0} | {round(10 ** (2 * i / 19)) for i in range(20)})
    assert _steps(logarithmic(0, 2, steps=20)) == expected
    assert expected[:4] == [0, 1, 2, 3] and expected[-1] == 100


def test_logarithmic_is_denser_early() -> None:
    steps = _steps(logarithmic(0, 3, steps=30, init=False), 2000)
    assert 0 not in steps and steps[0] == 1 and steps[-1] == 1000
    gaps = [b - a for a, b in itertools.pairwise(steps)]
    assert gaps == sorted(gaps)
    assert len(steps) <= 30


def test_logarithmic_other_base_and_single_step() -> None:
    assert _steps(logarithmic(0, 4, steps=5, base=2, init=False)) == [1, 2, 4, 8, 16]
    assert _steps(logarithmic(1, 1, steps=1, init=False)) == [10]
    assert _steps(logarithmic(0, 4, steps=5, base=2.0)) == [0, 1, 2, 4, 8, 16]


def test_as_schedule() -> None:
    assert _steps(as_schedule(4), 10) == [0, 4, 8]
    odd = as_schedule(lambda s: s % 2 == 1)
    assert _steps(odd, 6) == [1, 3, 5]


@pytest.mark.parametrize("bad", [0, -3, True, 2.5, "10", None])
def test_bad_every_is_refused(bad: object) -> None:
    with pytest.raises(ConfigError):
        as_schedule(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "call",
    [
        lambda: linear(0),
        lambda: linear(3, offset=-1),
        lambda: logarithmic(2, 1),
        lambda: logarithmic(0, 1, steps=0),
        lambda: logarithmic(0, 1, base=1.0),
    ],
)
def test_bad_schedule_arguments(call) -> None:
    with pytest.raises(ConfigError):
        call()
