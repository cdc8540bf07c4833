"""The probe's docstring examples run as tests."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["curvscope.probe", "curvscope.probe.collector"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    if name == "curvscope.probe":
        assert result.attempted > 0
