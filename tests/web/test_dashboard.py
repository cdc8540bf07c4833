"""The dashboard in real headless Chromium against a real ``curvscope serve``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.helpers.server_process import running_server
from tests.web.conftest import (
    ALPHA_STEPS,
    ARTIFACTS,
    BETA_STEPS,
    GROUPS,
    K_STATS,
    K,
)
from tests.web.seeding import synthetic_group, synthetic_snapshot

pytestmark = pytest.mark.browser


# seeding.synthetic_group: every third SNR(λ) is the sentinel, every fifth γ is zero
SNR_LAMBDA_SHOWN = K_STATS - len(range(0, K_STATS, 3))
GAMMA_SHOWN = K_STATS - len(range(4, K_STATS, 5))

POINTS_JS = """() => Object.fromEntries([...document.querySelectorAll('[data-plot]')]
    .filter(el => el.data).map(el => [el.dataset.plot, el.data.map(t => (t.x || []).length)]))"""


LOSS_RANGE_JS = (
    "() => Array.from(document.querySelector('[data-plot=\"run:loss\"]').layout.xaxis.range)"
)


def _trace(page, plot: str, index: int = 0) -> dict:  # type: ignore[no-untyped-def]
    return page.evaluate(
        f"""() => {{ const t = document.querySelector('[data-plot="{plot}"]').data[{index}];
        return {{x: Array.from(t.x), y: Array.from(t.y), name: t.name}}; }}"""
    )


def _reference_counts(values: list[float], edges: list[float]) -> list[int]:
    lo, hi = edges[0] * (1 - 1e-9), edges[-1] * (1 + 1e-9)
    edges = [lo, *edges[1:-1], hi]
    counts = []
    for i in range(len(edges) - 1):
        last = i == len(edges) - 2
        counts.append(
            sum(1 for v in values if edges[i] <= v and (v < edges[i + 1] or (last and v <= hi)))
        )
    return counts


def _open_run(page, server, run: str = "alpha") -> None:  # type: ignore[no-untyped-def]
    page.goto(server.url(f"/runs/{run}"))
    page.wait_for_selector("#app[data-renders]")


def test_run_list_then_run_view_with_every_plot(page, seeded_server) -> None:  # type: ignore[no-untyped-def]
    page.goto(seeded_server.url("/"))
    page.wait_for_selector("body[data-state=ready]")
    rows = page.locator("table.runs tbody tr")
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.run)")) == [
        "alpha",
        "beta",
        "crashed",
    ]
    alpha = page.locator('tr[data-run="alpha"]')
    assert alpha.locator("td").nth(2).inner_text() == str(len(ALPHA_STEPS))
    assert alpha.locator("td").nth(3).inner_text() == str(ALPHA_STEPS[-1])
    assert "1 error" in page.locator('tr[data-run="crashed"]').inner_text()

    page.get_by_role("link", name="alpha", exact=True).click()
    page.wait_for_url("**/runs/alpha")
    page.wait_for_selector("#app[data-renders]")
    points = page.evaluate(POINTS_JS)
    expected = {"run:loss": [len(ALPHA_STEPS)], "run:overview": [len(ALPHA_STEPS)]}
    for group in GROUPS:
        expected |= {
            # 40 log-spaced bins: 41 edges; the KDE curve on its default 200 points
            f"{group}:density": [41, 200],
            f"{group}:eigvals": [len(ALPHA_STEPS)] * 8,
            f"{group}:snr": [SNR_LAMBDA_SHOWN, K_STATS, 2],  # SNR(λ), SNR(γ), SNR = 1 line
            f"{group}:gamma": [GAMMA_SHOWN],
            # λ_1..λ_12 of the latest step span 10^0.10..10^1.62: 7 quarter-decade bins
            # (10^0 to 10^1.75); the flat-space remainder
            f"{group}:overlap": [7, 1],
        }
    assert points == expected
    undefined = K_STATS - SNR_LAMBDA_SHOWN
    assert f"{undefined} undefined (zero variance)" in _trace(page, "encoder:snr")["name"]
    assert page.get_by_test_id("step-label").inner_text().startswith(f"step {ALPHA_STEPS[-1]}")
    csv = page.get_by_test_id("export-csv").get_attribute("href")
    assert csv == "/api/runs/alpha/export?format=csv"
    assert page.locator('[data-plot="encoder:density"] .modebar-btn[data-title*="SVG"]').count()

    # count mode: the heights are the numbers of eigenvalues per bin
    page.get_by_test_id("mode").select_option("count")
    page.wait_for_function(
        """() => document.querySelector('[data-plot="encoder:density"]').layout.yaxis.title.text
        === 'number of eigenvalues'"""
    )
    trace = _trace(page, "encoder:density")
    expected_values = synthetic_group("encoder", ALPHA_STEPS[-1], K, K_STATS)["eigvals"]
    assert trace["y"][:-1] == _reference_counts(expected_values, trace["x"])

    ARTIFACTS.mkdir(exist_ok=True)
    page.get_by_test_id("mode").select_option("density")
    page.get_by_test_id("overlay").select_option("first")
    page.wait_for_function(
        "() => document.querySelector('[data-plot=\"encoder:density\"]').data.length === 4"
    )
    page.screenshot(path=str(ARTIFACTS / "run-view.png"), full_page=True)
    page.set_viewport_size({"width": 1400, "height": 1180})
    page.evaluate("() => window.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / "run-view-top.png"))  # docs' picture: docs/screenshot.py


def test_step_slider_changes_the_density(page, seeded_server) -> None:  # type: ignore[no-untyped-def]
    _open_run(page, seeded_server)
    page.get_by_test_id("mode").select_option("count")
    page.wait_for_function(
        """() => document.querySelector('[data-plot="head:density"]').layout.yaxis.title.text
        === 'number of eigenvalues'"""
    )
    latest = _trace(page, "head:density")
    page.get_by_test_id("step-slider").fill("0")
    page.wait_for_selector('#app[data-step="0"]')
    first = _trace(page, "head:density")
    assert first["x"] == latest["x"]  # bins cover first and latest: they stay put
    assert first["y"] != latest["y"]
    values = synthetic_group("head", ALPHA_STEPS[0], K, K_STATS)["eigvals"]
    assert first["y"][:-1] == _reference_counts(values, first["x"])
    assert page.get_by_test_id("step-label").inner_text() == "step 0"


def _group_meta(page, group: str) -> str:  # type: ignore[no-untyped-def]
    return page.locator(f'section[data-group="{group}"] .meta').inner_text()


def test_streamed_snapshot_appears_without_reload(page, seeded_server) -> None:  # type: ignore[no-untyped-def]
    _open_run(page, seeded_server, "beta")
    page.wait_for_selector("#conn[data-status=live]")
    # the seeded snapshots do not name their backend (as from an older probe): BackPACK
    for group in GROUPS:
        assert _group_meta(page, group).endswith(" · backend backpack")
    page.evaluate("() => { window.notReloaded = true; }")
    # the user zooms into the loss plot (a box drag): the live update must keep that zoom
    box = page.locator('[data-plot="run:loss"] .nsewdrag').bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.3, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, y, steps=5)
    page.mouse.up()
    zoomed = page.evaluate(LOSS_RANGE_JS)
    assert zoomed[0] > 0
    step = BETA_STEPS[-1] + 10
    message = synthetic_snapshot("beta", step, k=K, k_stats=K_STATS, groups=GROUPS)
    message["config"]["backend"] = "func"
    with connect(seeded_server.ws_url("/ws/ingest")) as ws:
        ws.send(json.dumps(message))
        ack = json.loads(ws.recv(timeout=10))
    assert ack["type"] == "ack" and ack["step"] == step
    page.wait_for_selector(f'#app[data-step="{step}"]')
    assert page.evaluate("() => window.notReloaded === true")
    loss = _trace(page, "run:loss")
    assert loss["x"] == [*BETA_STEPS, step]
    assert page.evaluate(LOSS_RANGE_JS) == zoomed
    assert page.get_by_test_id("step-label").inner_text().startswith(f"step {step}")
    # each group's header names the backend of the shown step, as the server sent it
    for group in GROUPS:
        assert _group_meta(page, group).endswith(" · backend func")
    page.get_by_test_id("step-slider").fill("0")
    page.wait_for_selector('#app[data-step="0"]')
    for group in GROUPS:
        assert _group_meta(page, group).endswith(" · backend backpack")


def test_run_with_an_error_and_no_snapshots(page, seeded_server) -> None:  # type: ignore[no-untyped-def]
    _open_run(page, seeded_server, "crashed")
    banner = page.get_by_test_id("events")
    assert "CUDA out of memory" in banner.inner_text()
    assert "1 error" in banner.inner_text()
    assert "No snapshots yet." in page.locator("#app").inner_text()
    page.goto(seeded_server.url("/runs/nope"))
    page.wait_for_selector("body[data-state=ready]")
    assert "No such run." in page.locator("#app").inner_text()
    # Chromium itself logs the 404 of the figures request; that one is expected
    errors = page.console_log.errors
    assert errors == [
        "console: Failed to load resource: the server responded with a status of 404 (Not Found)"
    ]
    errors.clear()


def test_comparison_overlays_runs(page, seeded_server) -> None:  # type: ignore[no-untyped-def]
    page.goto(seeded_server.url("/compare?runs=alpha,beta"))
    page.wait_for_selector('[data-plot="compare:loss"] .main-svg')
    page.wait_for_selector("body[data-state=ready]")
    points = page.evaluate(POINTS_JS)
    assert points["compare:density"] == [41, 41, 200, 200]  # histograms, then KDEs
    assert points["compare:loss"][0] == len(ALPHA_STEPS)
    assert len(points["compare:eigvals"]) == 6  # top-3 per run


def test_no_runs_yet(page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with running_server(tmp_path / "empty.sqlite") as server:
        page.goto(server.url("/"))
        page.wait_for_selector("body[data-state=ready]")
        assert "No runs yet." in page.locator("#app").inner_text()


def test_lost_connection_is_shown_and_recovers(browser_context, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # its own page: the browser logs the failed reconnects as console errors, by design
    page = browser_context.new_page()
    db = tmp_path / "lossy.sqlite"
    from tests.web.seeding import seed_run

    seed_run(db, "gamma", [0, 10], k=K, k_stats=K_STATS)
    try:
        with running_server(db) as server:
            page.goto(server.url("/runs/gamma"))
            page.wait_for_selector("#conn[data-status=live]")
            page.wait_for_selector("#app[data-renders]")  # loaded before the server dies
            server.kill()
            page.wait_for_selector("#conn[data-status=lost]")
            assert "connection lost" in page.locator("#conn").inner_text()
            server.start()
            page.wait_for_selector("#conn[data-status=live]", timeout=30_000)
            assert page.locator('[data-plot="run:loss"]').count() == 1
    finally:
        page.close()
