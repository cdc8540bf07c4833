"""The run view in Chromium: the edge-of-stability threshold (or, for an adaptive
optimizer, the note saying it does not apply) over the top eigenvalues, the trajectory
smoothing control, and readable density, overlap and SNR plots."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from curvscope.server.protocol import SnapshotMessage
from curvscope.server.stores import SQLiteStore
from tests.helpers.server_process import ServerProcess, running_server
from tests.web.seeding import synthetic_snapshot

pytestmark = pytest.mark.browser

STEPS = list(range(0, 120, 10))
MOMENTUM = 0.9


def _lr(step: int) -> float:
    return 0.2 if step < 60 else 0.05  # a step schedule


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    db = tmp_path_factory.mktemp("web-stability") / "stability.sqlite"
    store = SQLiteStore(db)
    try:
        for step in STEPS:
            sgd = synthetic_snapshot("sgd", step, k=30, k_stats=12)
            sgd["optimizer"] = {"name": "SGD", "lr": _lr(step), "momentum": MOMENTUM}
            sgd["groups"][0]["snr_gamma"][-1] = 1e-9  # one tiny SNR
            adam = synthetic_snapshot("adam", step, k=18, k_stats=12)
            adam["optimizer"] = {"name": "Adam", "lr": 1e-3, "adaptive": True}
            for message in (sgd, adam):
                store.append_snapshot(SnapshotMessage(**message), time.time())
    finally:
        store.close()
    with running_server(db) as process:
        yield process


def _open(page, server: ServerProcess, run: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(server.url(f"/runs/{run}"))
    page.wait_for_selector("#app[data-renders]")
    page.wait_for_selector('[data-plot="all:eigvals"] .main-svg')


def _traces(page, plot: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return page.evaluate(
        f"""() => document.querySelector('[data-plot="{plot}"]').data.map(t => ({{
            name: t.name, x: Array.from(t.x || []), y: Array.from(t.y || []), fill: t.fill}}))"""
    )


def _boxes(page, selector: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return page.evaluate(
        f"""() => [...document.querySelectorAll('{selector}')].map(e => {{
            const r = e.getBoundingClientRect();
            return {{left: r.left, right: r.right, top: r.top, bottom: r.bottom}}; }})"""
    )


def _overlap(a: dict, b: dict) -> bool:
    return not (
        a["right"] <= b["left"]
        or b["right"] <= a["left"]
        or a["bottom"] <= b["top"]
        or b["bottom"] <= a["top"]
    )


def test_the_threshold_line_follows_the_schedule(page, server) -> None:  # type: ignore[no-untyped-def]
    _open(page, server, "sgd")
    traces = _traces(page, "all:eigvals")
    line = traces[-1]
    assert line["name"] == "2(1+β)/η"
    assert line["x"] == STEPS
    assert line["y"] == pytest.approx([2 * (1 + MOMENTUM) / _lr(s) for s in STEPS])
    # drawn: a visible path in the plot and its legend entry
    drawn = page.evaluate(
        """() => { const el = document.querySelector('[data-plot="all:eigvals"]');
        const paths = el.querySelectorAll('.scatterlayer .trace .js-line');
        return Array.from(paths).map(p => (p.getAttribute('d') || '').length); }"""
    )
    assert len(drawn) == len(traces) and all(n > 0 for n in drawn)
    legend = page.locator('[data-plot="all:eigvals"] .legendtext', has_text="2(1+β)/η")
    assert legend.count() == 1
    # the legend lays out in rows, not in one column that squeezes the plot
    rows = {box["top"] for box in _boxes(page, '[data-plot="all:eigvals"] .legend .traces')}
    assert len(rows) <= 3
    assert page.locator('[data-plot="all:eigvals"] .annotation-text').count() == 0


def test_an_adaptive_optimizer_says_the_threshold_does_not_apply(page, server) -> None:  # type: ignore[no-untyped-def]
    _open(page, server, "adam")
    assert not [t for t in _traces(page, "all:eigvals") if "threshold" in t["name"]]
    note = page.locator('[data-plot="all:eigvals"] .annotation-text')
    assert note.count() == 1 and note.is_visible()
    text = note.text_content()
    assert "2/η threshold not applicable: adaptive optimizer Adam" in text
    assert "the GGN is not the preconditioned curvature" in text
    (plot,) = _boxes(page, '[data-plot="all:eigvals"]')
    (box,) = _boxes(page, '[data-plot="all:eigvals"] .annotation')
    assert plot["left"] <= box["left"] and box["right"] <= plot["right"]  # not cut off


def test_the_smoothing_control_redraws_the_trajectories(page, server) -> None:  # type: ignore[no-untyped-def]
    _open(page, server, "sgd")
    page.get_by_test_id("smooth-window").fill("3")
    page.get_by_test_id("smooth-window").dispatch_event("change")
    page.get_by_test_id("smooth").select_option("median")
    page.wait_for_function(
        """() => document.querySelector('[data-plot="all:eigvals"]').data
        .some(t => t.fill === 'toself') && document.querySelector('[data-plot="all:eigvals"]')
        .layout.title.text.includes('moving median of 3')"""
    )
    traces = _traces(page, "all:eigvals")
    bands = [t for t in traces if t["fill"] == "toself"]
    assert len(bands) == 8 and all(len(t["x"]) == 2 * len(STEPS) for t in bands)
    assert traces[-1]["name"] == "2(1+β)/η"
    page.get_by_test_id("smooth").select_option("none")
    page.wait_for_function(
        """() => document.querySelector('[data-plot="all:eigvals"]').data[0].name === 'λ_1'"""
    )


def test_density_overlap_and_snr_are_readable(page, server) -> None:  # type: ignore[no-untyped-def]
    _open(page, server, "adam")  # K = 18: a small spectrum
    density = _traces(page, "all:density")
    assert [t["name"] for t in density] == [
        f"step {STEPS[-1]} (K=18)",
        f"step {STEPS[-1]}, smoothed (KDE)",
    ]
    padded = page.evaluate(
        """() => { const el = document.querySelector('[data-plot="all:density"]');
        const t = el.data[0]; const r = el._fullLayout.xaxis.range;
        return [r[0], r[1], Math.log10(t.x[0]), Math.log10(t.x[t.x.length - 1])]; }"""
    )
    assert padded[0] < padded[2] - 0.05 and padded[1] > padded[3] + 0.05

    # overlap: tick labels apart and inside the plot's box; the legend clear of the titles
    plot = _boxes(page, '[data-plot="all:overlap"]')[0]
    ticks = _boxes(page, '[data-plot="all:overlap"] .xtick text')
    assert len(ticks) >= 3
    for i, a in enumerate(ticks):
        assert plot["left"] <= a["left"] and a["right"] <= plot["right"]
        assert plot["top"] <= a["top"] and a["bottom"] <= plot["bottom"]
        assert not any(_overlap(a, b) for b in ticks[i + 1 :])
    (legend,) = _boxes(page, '[data-plot="all:overlap"] .legend')
    for title in (".g-xtitle text", ".gtitle", ".g-ytitle text"):
        (box,) = _boxes(page, f'[data-plot="all:overlap"] {title}')
        assert not _overlap(legend, box), title
    assert not any(_overlap(legend, t) for t in ticks)

    # SNR: one SNR of 1e-9 does not stretch the y axis; it is drawn at the edge
    _open(page, server, "sgd")
    low, high = page.evaluate(
        """() => document.querySelector('[data-plot="all:snr"]')._fullLayout.yaxis.range"""
    )
    assert -3 < low < 0 < high
    names = [t["name"] for t in _traces(page, "all:snr")]
    assert names[-1] == "1 outside the y range (drawn at its edge)"
