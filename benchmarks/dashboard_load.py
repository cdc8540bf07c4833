"""Load time of the dashboard's run view for a large run, with the issue's targets.

Seeds a real SQLite file (once; reused when it exists), starts a real ``curvscope serve``,
and prints medians over repeats of:

- ``GET /api/runs/{run}/figures`` with the default down-sampling (200 snapshots) vs. with
  every snapshot (``max_points=N``, the baseline without down-sampling), the slider's
  ``figures/step`` and the run overview's ``GET /api/runs/{run}/overview``: the first
  request (built by the server) and the median of the next ones (the server's figure
  cache); with several groups, the figures of the first group (``group=``), as the page
  asks for them;
- in headless Chromium (Debian's, as the browser tests):
  - *cold first visit*: a new browser context (empty HTTP cache), from navigation to every
    plot drawn (``body[data-state=ready]``); target < 1.5 s for 1,000 snapshots;
  - *warm visit*: the same, navigating again in that context (cached Plotly.js);
  - *overview, warm cache*: from navigation to the overview heatmap drawn
    (``[data-testid=overview][data-state=ready]``; a run of one group has none: its page
    is ready then); target < 1.5 s for 60 groups x 1,000 snapshots;
  - *script only*: a page that loads Plotly.js and draws one small plot, with plotly's
    full bundle and with the page's (cartesian) bundle, fresh context each time;
  - *group detail*: what a click on an overview cell does (``openGroupAt``: the group's
    figures at that step requested, drawn, scrolled to), each repeat another group and step
    (nothing cached on the server); target < 0.5 s.

Usage::

    python benchmarks/dashboard_load.py [--snapshots 1000] [--k 1000] [--repeats 5]
    python benchmarks/dashboard_load.py --groups 60 --snapshots 1000 --k 64 --k-stats 16
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.chromium import CHROMIUM_ARGS, find_chromium
from tests.helpers.server_process import running_server
from tests.web.seeding import layer_names, seed_run

TARGETS_S = {"cold": 1.5, "overview": 1.5, "detail": 0.5}
"""The issue's targets (seconds)."""

Row = tuple[str, float, int | None, float | None]
"""``(what, median seconds, bytes or None, target seconds or None)``."""


def _median_s(func: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _api_rows(client: httpx.Client, url: Callable[[str], str], run: str, args) -> list[Row]:  # type: ignore[no-untyped-def]
    first = "" if args.groups == 1 else f"&group={layer_names(args.groups)[0]}"
    rows: list[Row] = []
    for label, path in (
        ("GET figures, default (200 pts)", f"/api/runs/{run}/figures?top=8{first}"),
        (
            f"GET figures, all {args.snapshots} pts",
            f"/api/runs/{run}/figures?max_points={args.snapshots}{first}",
        ),
        (
            "GET figures/step (slider)",
            f"/api/runs/{run}/figures/step?step={args.snapshots // 2}{first}",
        ),
        ("GET overview (200 steps)", f"/api/runs/{run}/overview"),
    ):
        start = time.perf_counter()
        response = client.get(url(path), headers={"Accept-Encoding": "gzip"})
        first = time.perf_counter() - start
        response.raise_for_status()
        size = int(response.headers.get("content-length", len(response.content)))
        rows.append((f"{label}, first", first, size, None))
        rows.append(
            (
                f"{label}, cached",
                _median_s(lambda p=path: client.get(url(p)), args.repeats),
                size,
                None,
            )
        )
    return rows


_SCRIPT_ONLY = """<!doctype html><body><div id="a" style="width:600px;height:300px"></div>
<script src="{src}"></script><script>
Plotly.newPlot("a", [{{type: "heatmap", z: [[1, 2], [3, 4]]}}, {{y: [1, 3, 2]}}])
  .then(() => {{ document.body.dataset.state = "ready"; }});
</script></body>"""


def _bundle_rows(server_url: Callable[[str], str], client: httpx.Client, args) -> list[Row]:  # type: ignore[no-untyped-def]
    """Plotly.js alone, full vs. the page's bundle: a page that loads it and draws one
    small plot, in a fresh browser context (empty cache) each time, the two alternating."""
    from playwright.sync_api import sync_playwright

    html = client.get(server_url("/runs/x")).text
    page_src = html.split('<script src="', 1)[1].split('"', 1)[0]
    sources = {"full plotly.min.js": "/static/vendor/plotly.min.js", "page's bundle": page_src}
    times: dict[str, list[float]] = {label: [] for label in sources}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=find_chromium(), args=CHROMIUM_ARGS)
        for _ in range(args.repeats):
            for label, src in sources.items():
                context = browser.new_context()
                page = context.new_page()
                page.goto(server_url("/api/health"))  # same origin, nothing cached yet
                start = time.perf_counter()
                page.set_content(_SCRIPT_ONLY.format(src=src))
                page.wait_for_selector("body[data-state=ready]", state="attached")
                times[label].append(time.perf_counter() - start)
                context.close()
        browser.close()
    return [
        (f"script only: {label}", statistics.median(ts), None, None) for label, ts in times.items()
    ]


def _browser_rows(server_url: Callable[[str], str], run: str, args) -> list[Row]:  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("no Chromium found (Debian's 'chromium', or CURVSCOPE_CHROMIUM)")
    names = layer_names(args.groups) if args.groups > 1 else ["all"]
    cold, warm, overview, detail = [], [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        for repeat in range(args.repeats):
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            for bucket in (cold, warm):
                start = time.perf_counter()
                page.goto(server_url(f"/runs/{run}"))
                page.wait_for_selector(
                    "[data-testid=overview][data-state=ready]", state="attached", timeout=60_000
                )
                if bucket is warm:
                    overview.append(time.perf_counter() - start)
                page.wait_for_selector("body[data-state=ready]", timeout=60_000)
                bucket.append(time.perf_counter() - start)
            # a click on a cell: another group and step each repeat (a server cache miss)
            group = names[(7 * repeat + 3) % len(names)]
            step = (args.snapshots * (repeat + 1)) // (args.repeats + 2)
            steps = page.evaluate("() => window.curvscope.view.steps")
            step = min(steps, key=lambda s: abs(s - step))
            seconds = page.evaluate(
                """async ([group, step]) => {
                    const t0 = performance.now();
                    await window.curvscope.view.openGroupAt(group, step);
                    return (performance.now() - t0) / 1000;
                }""",
                [group, step],
            )
            drawn = page.evaluate(
                """([group, step]) => document.getElementById('app').dataset.step === String(step)
                    && !!document.querySelector(`[data-plot="${group}:density"]`)?.data""",
                [group, step],
            )
            if not drawn:
                raise SystemExit(f"the detail of {group} at step {step} was not drawn")
            detail.append(seconds)
            context.close()
        browser.close()
    return [
        ("page: cold first visit (empty cache)", statistics.median(cold), None, TARGETS_S["cold"]),
        ("page: warm visit", statistics.median(warm), None, None),
        (
            "page: overview drawn, warm cache",
            statistics.median(overview),
            None,
            TARGETS_S["overview"],
        ),
        ("page: group detail (cell click)", statistics.median(detail), None, TARGETS_S["detail"]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshots", type=int, default=1000)
    parser.add_argument(
        "--groups", type=int, default=1, help="parameter groups (ResNet-like names)"
    )
    parser.add_argument("--k", type=int, default=1000, help="eigenvalues per group")
    parser.add_argument("--k-stats", type=int, default=None, help="K' (default: K)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--db", type=Path, default=None, help="reuse/keep this database")
    args = parser.parse_args()
    k_stats = args.k if args.k_stats is None else args.k_stats

    tmp = Path(tempfile.mkdtemp(prefix="curvscope-bench-"))
    db = args.db or tmp / "large.sqlite"
    run = "large"
    groups = layer_names(args.groups) if args.groups > 1 else ["all"]
    if not db.exists():
        start = time.perf_counter()
        seed_run(db, run, range(args.snapshots), k=args.k, k_stats=k_stats, groups=groups)
        print(
            f"seeded {args.snapshots} snapshots x {len(groups)} groups x K={args.k} "
            f"(K'={k_stats}) in {time.perf_counter() - start:.1f} s "
            f"({db.stat().st_size / 2**20:.0f} MiB)"
        )

    with running_server(db) as server, httpx.Client(timeout=120) as client:
        rows = _api_rows(client, server.url, run, args)
        rows += _browser_rows(server.url, run, args)
        rows += _bundle_rows(server.url, client, args)

    print(
        f"\nrun of {args.snapshots} snapshots x {len(groups)} groups x K={args.k} (K'={k_stats}), "
        f"medians over {args.repeats} repeats"
    )
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"host load average (1, 5, 15 min) at the end: {load}, {os.cpu_count()} CPUs")
    print(f"| {'what':38} | {'median s':>8} | {'target':>7} | {'bytes (gzip)':>12} |")
    print(f"|{'-' * 40}|{'-' * 10}:|{'-' * 8}:|{'-' * 13}:|")
    for what, seconds, size, target in rows:
        verdict = "" if target is None else f"< {target:g} {'ok' if seconds < target else 'MISSED'}"
        print(f"| {what:38} | {seconds:8.3f} | {verdict:>7} | {size if size else '':>12} |")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
