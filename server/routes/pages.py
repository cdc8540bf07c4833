"""The static dashboard: the pages ``/`` (run list), ``/runs/{run}`` (run view) and
``/compare`` (run comparison), all served from ``web/index.html`` (the page's scripts read the
path); ``/static/...`` (the files of :mod:`curvscope.web`) and ``/static/vendor/plotly.min.js``
(plotly's bundled copy, no CDN). The page itself loads :func:`plotly_bundle`: the
*cartesian* partial bundle of the same plotly.js version shipped in ``web/`` (1.5 MB
instead of 4.8 MB: the trace types bar, box, contour, heatmap, histogram*, image, pie,
scatter, scatterternary, violin; parsing the full bundle was most of a first visit), or
plotly's full bundle when the versions differ; under a versioned URL,
``/static/vendor/plotly-<digest>.min.js``, cached by browsers for a year and sent
gzipped. The figure endpoints of :mod:`curvscope.server.routes.figure_api`
are mounted here too, so the page and its data come with one router.

Only files with a known web suffix directly inside the ``web`` package are served.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from curvscope.server.routes import figure_api

__all__ = [
    "CARTESIAN_BUNDLE",
    "CARTESIAN_TRACES",
    "PlotlyBundle",
    "plotly_bundle",
    "plotly_js_path",
    "router",
    "web_dir",
]

CARTESIAN_BUNDLE = "plotly-cartesian.min.js"
"""plotly.js's cartesian dist bundle (npm ``plotly.js-cartesian-dist-min``, MIT licence in
``web/plotly-cartesian.LICENSE``), in the web package."""
CARTESIAN_TRACES = frozenset(
    [
        "bar",
        "box",
        "contour",
        "heatmap",
        "histogram",
        "histogram2d",
        "histogram2dcontour",
        "image",
        "pie",
        "scatter",
        "scatterternary",
        "violin",
    ]
)
"""The trace types the cartesian bundle draws: the figures of the dashboard must keep to
these (``tests/server/routes/test_pages.py`` checks the figure modules)."""

_VERSION = re.compile(rb"plotly\.js (?:\([^)]*\) )?v(\d+\.\d+\.\d+)")


def _plotly_version(script: bytes) -> str | None:
    """The plotly.js version in a bundle's header comment."""
    found = _VERSION.search(script[:400])
    return found.group(1).decode() if found else None


router = APIRouter()
router.include_router(figure_api.router)

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

_PLACEHOLDER = """<!doctype html>
<html><head><meta charset="utf-8"><title>curvscope</title></head>
<body><h1>curvscope</h1><p>The dashboard is not installed; the API is at
<a href="/docs">/docs</a>.</p></body></html>
"""


@cache
def web_dir() -> Path:
    """The folder of the :mod:`curvscope.web` package."""
    spec = importlib.util.find_spec("curvscope.web")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the curvscope.web package is missing")
    return Path(next(iter(spec.submodule_search_locations)))


@cache
def plotly_js_path() -> Path | None:
    """Plotly.js as bundled with the ``plotly`` Python package, or ``None`` without it."""
    spec = importlib.util.find_spec("plotly")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    return path if path.is_file() else None


@dataclass(frozen=True)
class PlotlyBundle:
    """Plotly.js, read once: its text, gzipped, and a digest of it (its versioned URL)."""

    raw: bytes
    gzipped: bytes
    digest: str
    name: str
    """``plotly-cartesian.min.js`` or ``plotly.min.js``: which bundle it is."""

    @property
    def url(self) -> str:
        return f"/static/vendor/plotly-{self.digest}.min.js"


@cache
def plotly_bundle() -> PlotlyBundle | None:
    """The Plotly.js the page loads (``None`` without plotly): the cartesian bundle of
    ``web/`` if it is the version of plotly's own bundle (:func:`plotly_js_path`, which the
    figures' JSON is written for), else plotly's. The first call reads and compresses it
    (~0.1 s; 0.4 s for the full bundle): the app's lifespan makes it in the background."""
    path = plotly_js_path()
    if path is None:
        return None
    raw, name = path.read_bytes(), path.name
    cartesian = web_dir() / CARTESIAN_BUNDLE
    if cartesian.is_file():
        partial = cartesian.read_bytes()
        version = _plotly_version(raw)
        if version is not None and _plotly_version(partial) == version:
            raw, name = partial, CARTESIAN_BUNDLE
    digest = hashlib.sha256(raw).hexdigest()[:16]
    return PlotlyBundle(raw, gzip.compress(raw, 6, mtime=0), digest, name)


_PLOTLY_SRC = 'src="/static/vendor/plotly.min.js"'


@router.get("/", include_in_schema=False)
@router.get("/compare", include_in_schema=False)
@router.get("/runs/{run}", include_in_schema=False)
async def index() -> Response:
    """The dashboard page (a placeholder until ``web/index.html`` exists), asking for
    Plotly.js under its versioned URL."""
    page = web_dir() / "index.html"
    if not page.is_file():
        return HTMLResponse(_PLACEHOLDER)
    html = page.read_text(encoding="utf-8")
    bundle = plotly_bundle()
    if bundle is not None:
        html = html.replace(_PLOTLY_SRC, f'src="{bundle.url}"')
    return HTMLResponse(html, headers={"Cache-Control": "no-cache"})


def _plotly_response(request: Request, bundle: PlotlyBundle) -> Response:
    headers = {"Cache-Control": "public, max-age=31536000, immutable", "Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", "").lower():
        headers["Content-Encoding"] = "gzip"
        return Response(bundle.gzipped, media_type=_MEDIA_TYPES[".js"], headers=headers)
    return Response(bundle.raw, media_type=_MEDIA_TYPES[".js"], headers=headers)


@router.get("/static/vendor/plotly.min.js", include_in_schema=False)
async def plotly_js() -> FileResponse:
    """Plotly.js as bundled with the plotly Python package, all of it (4.8 MB: browsers may
    cache it for a day; it only changes when the plotly package is upgraded)."""
    path = plotly_js_path()
    if path is None:
        raise HTTPException(404, "plotly is not installed")
    return FileResponse(
        path, media_type=_MEDIA_TYPES[".js"], headers={"Cache-Control": "public, max-age=86400"}
    )


@router.get("/static/vendor/plotly-{digest}.min.js", include_in_schema=False)
async def plotly_js_versioned(request: Request, digest: str) -> Response:
    """:func:`plotly_bundle` under the URL the page uses: its digest names the content, so
    browsers keep it for a year without asking again (gzipped when they take it)."""
    bundle = plotly_bundle()
    if bundle is None or digest != bundle.digest:
        raise HTTPException(404, "no such Plotly.js version")
    return _plotly_response(request, bundle)


@router.get("/static/{name}", include_in_schema=False)
async def static_file(name: str) -> FileResponse:
    """A file of the web package (``.html``, ``.js``, ``.css``, ``.svg``; no sub-folders)."""
    path = web_dir() / name
    if (
        "/" in name
        or "\\" in name
        or name.startswith(".")
        or path.suffix not in _MEDIA_TYPES
        or not path.is_file()
    ):
        raise HTTPException(404, "not found")
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix])
