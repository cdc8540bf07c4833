"""Small dashboard defects at the scale of real models: the comparison subtitle, and the
header of a run without snapshots (real Chromium against a real ``curvscope serve``)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser


def test_comparison_subtitle_links_each_run(page, seeded_server) -> None:  # type: ignore[no-untyped-def]
    page.goto(seeded_server.url("/compare?runs=alpha,beta"))
    page.wait_for_selector('[data-plot="compare:loss"] .main-svg')
    page.wait_for_selector("body[data-state=ready]")
    subtitle = page.get_by_test_id("compare-runs")
    assert subtitle.inner_text() == "alpha · beta"
    links = subtitle.locator("a")
    assert links.evaluate_all("as => as.map(a => [a.textContent, a.getAttribute('href')])") == [
        ["alpha", "/runs/alpha"],
        ["beta", "/runs/beta"],
    ]


def test_run_without_snapshots_says_so_in_its_header(page, seeded_server) -> None:  # type: ignore[no-untyped-def]
    page.goto(seeded_server.url("/runs/crashed"))
    page.wait_for_selector("#app[data-renders]")
    meta = page.locator("#app > div > p.meta").first.inner_text()
    assert meta.startswith("no snapshots yet · last update "), meta
    assert "–" not in meta, meta


def test_run_header_counts_snapshots_and_steps(page, seeded_server) -> None:  # type: ignore[no-untyped-def]
    from tests.web.conftest import ALPHA_STEPS

    page.goto(seeded_server.url("/runs/alpha"))
    page.wait_for_selector("#app[data-renders]")
    meta = page.locator("#app > div > p.meta").first.inner_text()
    assert meta.startswith(
        f"{len(ALPHA_STEPS)} snapshots · steps {ALPHA_STEPS[0]}–{ALPHA_STEPS[-1]} · last update "
    ), meta
