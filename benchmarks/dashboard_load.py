"""Load time of the dashboard's run view for a large run (1,000 snapshots x K = 1,000).

Seeds a real SQLite file (once; reused when it exists), starts a real ``curvscope serve``,
and prints medians over repeats of:

- ``GET /api/runs/{run}/figures`` with the default down-sampling (200 snapshots) vs. with
  every snapshot (``max_points=1000``, the baseline without down-sampling);
- the run view in headless Chromium, from navigation to every plot drawn
  (``body[data-state=ready]``), with a cold and a warm browser cache.

Usage: ``python benchmarks/dashboard_load.py [--snapshots 1000] [--k 1000] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.chromium import CHROMIUM_ARGS, find_chromium
from tests.helpers.server_process import running_server
from tests.web.seeding import seed_run


def _median_s(func, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshots", type=int, default=1000)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--db", type=Path, default=None, help="reuse/keep this database")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="curvscope-bench-"))
    db = args.db or tmp / "large.sqlite"
    run = "large"
    if not db.exists():
        start = time.perf_counter()
        seed_run(db, run, range(args.snapshots), k=args.k, k_stats=args.k)
        print(
            f"seeded {args.snapshots} snapshots x K={args.k} "
            f"in {time.perf_counter() - start:.1f} s ({db.stat().st_size / 2**20:.0f} MiB)"
        )

    rows = []
    with running_server(db) as server, httpx.Client(timeout=60) as client:
        for label, query in (
            ("figures, default (200 pts)", ""),
            ("figures, all 1000 pts", "?max_points=1000"),
        ):
            url = server.url(f"/api/runs/{run}/figures{query}")
            size = len(client.get(url).content)
            rows.append(
                (f"GET {label}", _median_s(lambda u=url: client.get(u), args.repeats), size)
            )
        url = server.url(f"/api/runs/{run}/figures/step?step={args.snapshots // 2}")
        rows.append(
            (
                "GET figures/step (slider)",
                _median_s(lambda: client.get(url), args.repeats),
                len(client.get(url).content),
            )
        )

        from playwright.sync_api import sync_playwright

        chromium = find_chromium()
        if chromium is None:
            raise SystemExit("no Chromium found (Debian's 'chromium', or CURVSCOPE_CHROMIUM)")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            cold, warm = [], []
            for _ in range(args.repeats):
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                page = context.new_page()
                for bucket in (cold, warm):
                    start = time.perf_counter()
                    page.goto(server.url(f"/runs/{run}"))
                    page.wait_for_selector("body[data-state=ready]", timeout=60_000)
                    bucket.append(time.perf_counter() - start)
                context.close()
            browser.close()
        rows.append(("page: run view, cold cache", statistics.median(cold), None))
        rows.append(("page: run view, warm cache", statistics.median(warm), None))

    base = rows[1][1]
    print(f"\nrun of {args.snapshots} snapshots x K={args.k}, medians over {args.repeats} repeats")
    print(f"{'what':34} {'median s':>9} {'vs all-points':>13} {'bytes':>11}")
    for what, seconds, size in rows:
        print(f"{what:34} {seconds:9.3f} {seconds / base:13.2f} {size if size else '':>11}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
