"""Refresh ``docs/dashboard.png`` from a real demo run (not synthetic data).

Runs ``curvscope demo --no-serve`` (the digits CNN, 400 steps, a snapshot every 10, with its
own server on a temporary SQLite file), serves that file with a real ``curvscope serve``,
opens the run view in headless Chromium and saves the top of the page at the latest step.

Usage (from the repository root)::

    .venv/bin/python docs/screenshot.py [--out docs/dashboard.png] [--seed 0]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.chromium import CHROMIUM_ARGS, find_chromium  # noqa: E402
from tests.helpers.server_process import free_port, running_server  # noqa: E402

RUN = "digits-demo"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    chromium = find_chromium()
    if chromium is None:
        print("no Chromium found (Debian's 'chromium' package, or CURVSCOPE_CHROMIUM)")
        return 1
    with tempfile.TemporaryDirectory(prefix="curvscope-shot-") as tmp:
        db = Path(tmp) / "demo.sqlite"
        cmd = [sys.executable, "-m", "curvscope.server.cli", "demo", "--no-serve"]
        cmd += ["--no-progress", "--db", str(db), "--run", RUN, "--seed", str(args.seed)]
        cmd += ["--port", str(free_port())]
        subprocess.run(cmd, check=True, cwd=ROOT)
        with running_server(db) as server:
            from playwright.sync_api import sync_playwright

            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1500})
                page.goto(server.url(f"/runs/{RUN}"))
                page.wait_for_selector("#app[data-renders]", timeout=60_000)
                page.wait_for_selector('[data-plot="all:noise"]', timeout=60_000)
                page.screenshot(path=str(args.out))
                browser.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
