"""Import hygiene: the server package is light and never imports torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = (
    "import sys, {module}\n"
    "bad = [m for m in {forbidden!r} if m in sys.modules]\n"
    "assert not bad, bad\n"
)


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("curvscope.server", ["fastapi", "starlette", "torch", "uvicorn"]),
        ("curvscope.server.protocol", ["fastapi", "starlette", "torch", "uvicorn"]),
        ("curvscope.server.cli", ["fastapi", "torch", "uvicorn"]),
        (
            "curvscope.server.app, curvscope.server.stores, curvscope.server.routes.ingest",
            ["torch", "backpack"],
        ),
    ],
)
def test_import_is_light(module: str, forbidden: list[str]) -> None:
    code = CHECK.format(module=module, forbidden=forbidden)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
