"""``curvscope report RUN --db PATH -o report.html``: a self-contained HTML report of one run.

The report holds the same figures as the dashboard's run view (built by
:mod:`curvscope.server.figures` through :func:`curvscope.server.views.run_view_data`)
at the latest step, with Plotly.js inlined from the ``plotly`` package: it opens offline,
with no server running.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
import time
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from curvscope.server.routes.pages import plotly_js_path
from curvscope.server.stores import SQLiteStore, Store
from curvscope.server.views import run_view_data

__all__ = ["add_parser", "render_report", "report"]

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1d1f23; background: #f6f7f9; }
h1 { font-size: 1.4rem; margin-bottom: 0.2rem; } h2 { font-size: 1.1rem; margin-top: 1.6rem; }
.meta { color: #666b75; font-size: 0.9rem; }
.banner { background: #fdecea; border: 1px solid #f5c2bd; color: #7f1d1d; padding: 0.6rem 0.9rem;
  border-radius: 6px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 0.8rem; }
.plot { background: #fff; border: 1px solid #e2e4e8; border-radius: 6px; height: 380px; }
.wide { grid-column: 1 / -1; height: 300px; }
"""


def _plotly_js() -> str:
    path = plotly_js_path()
    if path is None:
        raise RuntimeError("the plotly package is missing")
    return path.read_text(encoding="utf-8")


def _script_json(text: str) -> str:
    """JSON text safe inside a ``<script>`` element."""
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def _plot(div_id: str, fig: go.Figure, wide: bool = False) -> tuple[str, str]:
    div = f'<div class="plot{" wide" if wide else ""}" id="{div_id}"></div>'
    script = f"draw({json.dumps(div_id)}, {_script_json(str(fig.to_json(validate=False)))});"
    return div, script


def render_report(store: Store, run: str, *, max_points: int = 500, overlay: str = "first") -> str:
    """The report's HTML text.

    Raises:
        LookupError: the store has no run called ``run``.
    """
    data: dict[str, Any] = run_view_data(
        store,
        run,
        max_points=max_points,
        overlay=overlay,  # type: ignore[arg-type]
    )
    summary = data["run"]
    downsampled = (
        f"; plots over steps down-sampled to {data['series_points']}" if data["downsampled"] else ""
    )
    body: list[str] = [f"<h1>curvscope report: {html.escape(run)}</h1>"]
    body.append(
        f'<p class="meta">{summary["snapshots"]} snapshots, steps {summary["first_step"]}–'
        f"{summary['last_step']}; figures at step {data['step']}"
        f"{downsampled}"
        f"; written {time.strftime('%Y-%m-%d %H:%M:%S')}</p>"
    )
    errors = [e for e in data["events"] if e["level"] == "error"]
    if data["events"]:
        items = "".join(
            f"<li>{html.escape(e['level'])}"
            f"{' at step ' + str(e['step']) if e['step'] is not None else ''}: "
            f"{html.escape(e['message'])}</li>"
            for e in data["events"]
        )
        body.append(
            f'<div class="banner"><strong>{len(errors)} error(s) reported</strong>'
            f"<ul>{items}</ul></div>"
        )
    scripts: list[str] = []
    if not data["groups"]:
        body.append('<p class="banner">This run has no snapshots.</p>')
    else:
        div, script = _plot("loss", data["loss"], wide=True)
        body.append(f'<div class="grid">{div}</div>')
        scripts.append(script)
    for g, group in enumerate(data["groups"]):
        body.append(
            f"<h2>Parameter group: {html.escape(group['name'])}</h2>"
            f'<p class="meta">{group["num_params"]} parameters, K = {group["k"]}, '
            f"K' = {group['k_stats']}, backend {html.escape(str(group['backend']))}</p>"
        )
        divs = []
        # where the run has them, in the run view's order
        optional = ("hessian", "noise", "trust", "trust_share", "newton", "hessian_min")
        for name in ("density", "eigvals", "snr", "gamma", "overlap", *optional):
            if name not in group["figures"]:
                continue
            div, script = _plot(f"g{g}-{name}", group["figures"][name])
            divs.append(div)
            scripts.append(script)
        body.append(f'<div class="grid">{"".join(divs)}</div>')
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>curvscope report: {html.escape(run)}</title><style>{_CSS}</style>"
        f"<script>{_plotly_js()}</script></head><body>"
        + "".join(body)
        + "<script>function draw(id, fig) { Plotly.newPlot(id, fig.data, fig.layout, "
        "{responsive: true, displaylogo: false}); }\n"
        + "\n".join(scripts)
        + "</script></body></html>\n"
    )


def report(args: argparse.Namespace) -> int:
    """Write the report; exit code 0, or 1 (no such run) / 2 (no database)."""
    db = Path(args.db)
    if not db.is_file():
        print(f"curvscope report: no database at {db}", file=sys.stderr)
        return 2
    store = SQLiteStore(db)
    try:
        text = render_report(store, args.run, max_points=args.max_points, overlay=args.overlay)
    except LookupError as exc:
        print(f"curvscope report: {exc.args[0]} in {db}", file=sys.stderr)
        return 1
    finally:
        store.close()
    out = Path(args.output if args.output else f"{args.run}-report.html")
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``curvscope report``."""
    parser = subparsers.add_parser(
        "report",
        help="write a standalone HTML report",
        description="Write a self-contained HTML report of one run (the dashboard's figures "
        "at the latest step, Plotly.js inlined); needs no running server.",
    )
    parser.add_argument("run", help="run name")
    parser.add_argument("--db", default="curvscope.sqlite", help="SQLite database file")
    parser.add_argument("-o", "--output", help="output file (default RUN-report.html)")
    parser.add_argument(
        "--max-points", type=int, default=500, help="snapshots in the plots over steps"
    )
    parser.add_argument(
        "--overlay",
        choices=("none", "first", "latest", "both"),
        default="first",
        help="overlay the first snapshot's spectral density (default)",
    )
    parser.set_defaults(func=report)
