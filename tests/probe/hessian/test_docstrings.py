"""The hessian package's docstring examples run as tests."""

from __future__ import annotations

import doctest
import importlib


def test_docstring_examples() -> None:
    module = importlib.import_module("curvscope.probe.hessian")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
