"""The page's Plotly.js: the cartesian bundle when it is plotly's version, versioned URL,
gzip, long-lived caching; and the figure modules keep to the trace types it draws."""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from curvscope.server.app import create_app
from curvscope.server.routes import pages
from curvscope.server.settings import Settings

SERVER = Path(__file__).resolve().parents[3] / "server"

# go.<Class>( in the server's figure code -> the plotly.js trace type it draws
_GO_TRACE = re.compile(r"\bgo\.([A-Z][A-Za-z0-9]*)\(")
_NOT_TRACES = {"Figure", "Layout", "Frame"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(db=tmp_path / "pages.sqlite", allowed_hosts=["testserver"])
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_the_page_loads_the_cartesian_bundle_versioned_gzipped_and_cached(
    client: TestClient,
) -> None:
    bundle = pages.plotly_bundle()
    assert bundle is not None and bundle.name == pages.CARTESIAN_BUNDLE
    full = pages.plotly_js_path().read_bytes()
    partial = (pages.web_dir() / pages.CARTESIAN_BUNDLE).read_bytes()
    assert bundle.raw == partial and len(partial) < len(full) / 3
    html = client.get("/runs/anything").text
    (src,) = re.findall(r'<script src="([^"]+)" id="plotly-js"', html)
    assert src == f"/static/vendor/plotly-{bundle.digest}.min.js"
    response = client.get(src, headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert "immutable" in response.headers["cache-control"]
    assert "max-age=31536000" in response.headers["cache-control"]
    assert response.content == partial  # the client undid the gzip
    assert int(response.headers["content-length"]) == len(gzip.compress(partial, 6, mtime=0))
    plain = client.get(src, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content == partial
    assert client.get("/static/vendor/plotly-0123456789abcdef.min.js").status_code == 404
    # plotly's own full bundle stays where it was
    assert client.get("/static/vendor/plotly.min.js").content == full


def test_another_plotly_version_falls_back_to_the_full_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    web = tmp_path / "web"
    web.mkdir()
    (web / pages.CARTESIAN_BUNDLE).write_bytes(
        b"/**\n* plotly.js (cartesian - minified) v0.0.1\n*/\nvar Plotly = {};\n"
    )
    monkeypatch.setattr(pages, "web_dir", lambda: web)
    pages.plotly_bundle.cache_clear()
    try:
        bundle = pages.plotly_bundle()
        assert bundle is not None and bundle.name == "plotly.min.js"
        assert bundle.raw == pages.plotly_js_path().read_bytes()
    finally:
        pages.plotly_bundle.cache_clear()


def test_json_responses_are_gzipped(client: TestClient) -> None:
    response = client.get("/openapi.json", headers={"Accept-Encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    assert int(response.headers["content-length"]) < len(response.content)


def test_figure_code_uses_only_traces_of_the_cartesian_bundle() -> None:
    """The page loads the cartesian bundle: a figure with another trace type (scattergl,
    say) would not be drawn. Use one of CARTESIAN_TRACES or change the bundle."""
    used: dict[str, set[str]] = {}
    for path in sorted(SERVER.rglob("*.py")):
        for name in _GO_TRACE.findall(path.read_text(encoding="utf-8")):
            if name not in _NOT_TRACES:
                used.setdefault(name.lower(), set()).add(path.name)
    assert {"scatter", "heatmap"} <= set(used)  # the scan finds the figure code
    assert set(used) <= pages.CARTESIAN_TRACES, used
