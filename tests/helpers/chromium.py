"""Finding Debian's Chromium and the flags it runs with headless, shared by the browser tests
(``tests/web/conftest.py``) and the dashboard load benchmark."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["CHROMIUM_ARGS", "find_chromium"]

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
"""Headless Chromium flags: no sandbox (containers), and no background network traffic."""


def find_chromium() -> str | None:
    """Debian's Chromium (or ``CURVSCOPE_CHROMIUM``), else ``None``."""
    for candidate in (
        os.environ.get("CURVSCOPE_CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None
