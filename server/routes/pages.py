"""The static dashboard: the pages ``/`` (run list), ``/runs/{run}`` (run view) and
``/compare`` (run comparison), all served from ``web/index.html`` (the page's scripts read the
path); ``/static/...`` (the files of :mod:`curvscope.web`) and ``/static/vendor/plotly.min.js``
(plotly's bundled copy, no CDN). The figure endpoints of :mod:`curvscope.server.routes.figure_api`
are mounted here too, so the page and its data come with one router.

Only files with a known web suffix directly inside the ``web`` package are served.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, Response

from curvscope.server.routes import figure_api

__all__ = ["plotly_js_path", "router", "web_dir"]

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


@router.get("/", include_in_schema=False)
@router.get("/compare", include_in_schema=False)
@router.get("/runs/{run}", include_in_schema=False)
async def index() -> Response:
    """The dashboard page (a placeholder until ``web/index.html`` exists)."""
    page = web_dir() / "index.html"
    if page.is_file():
        return FileResponse(page, media_type=_MEDIA_TYPES[".html"])
    return HTMLResponse(_PLACEHOLDER)


@router.get("/static/vendor/plotly.min.js", include_in_schema=False)
async def plotly_js() -> FileResponse:
    """Plotly.js as bundled with the plotly Python package (4.8 MB: browsers may cache it for
    a day; it only changes when the plotly package is upgraded)."""
    path = plotly_js_path()
    if path is None:
        raise HTTPException(404, "plotly is not installed")
    return FileResponse(
        path, media_type=_MEDIA_TYPES[".js"], headers={"Cache-Control": "public, max-age=86400"}
    )


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
