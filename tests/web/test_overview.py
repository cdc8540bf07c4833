"""The run overview in real headless Chromium against a real ``curvscope serve``: a heatmap
cell per group and step, a click on a cell opens that group at that step, the group filter.

Synchronisation is by polling the page's state (``data-state``, ``data-step``) with
Playwright's deadlines, never by sleeping.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.server_process import ServerProcess, running_server
from tests.web.seeding import seed_run

pytestmark = pytest.mark.browser

K, K_STATS = 12, 4
WIDE = (  # 12 groups in model order (more than the 8 drawn in detail at once)
    "stem.conv",
    "blocks.0.conv1",
    "blocks.0.conv2",
    "blocks.1.conv1",
    "blocks.1.conv2",
    "blocks.1.bn",
    "blocks.2.conv1",
    "blocks.2.conv2",
    "blocks.3.conv1",
    "blocks.3.conv2",
    "head.norm",
    "head.fc",
)
WIDE_STEPS = list(range(0, 150, 10))
FEW = ("encoder", "head")
FEW_STEPS = [0, 5, 10, 15, 20, 25]

OVERVIEW_READY = "[data-testid=overview][data-state=ready]"
HEATMAP = '[data-plot="run:overview"]'


@pytest.fixture(scope="module")
def overview_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    db = tmp_path_factory.mktemp("overview") / "overview.sqlite"
    seed_run(db, "wide", WIDE_STEPS, k=K, k_stats=K_STATS, groups=WIDE)
    seed_run(db, "few", FEW_STEPS, k=K, k_stats=K_STATS, groups=FEW)
    with running_server(db) as server:
        yield server


def _open(page, server: ServerProcess, run: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(server.url(f"/runs/{run}"))
    page.wait_for_selector("#app[data-renders]")
    page.wait_for_selector(OVERVIEW_READY)


def _sections(page) -> list[str]:  # type: ignore[no-untyped-def]
    return page.eval_on_selector_all("section[data-group]", "ss => ss.map(s => s.dataset.group)")


def _click_cell(page, group: str, step: int) -> None:  # type: ignore[no-untyped-def]
    """A real mouse click on the middle of the heatmap cell of ``group`` at ``step``."""
    page.locator(HEATMAP).scroll_into_view_if_needed()
    x, y = page.evaluate(
        """([group, step]) => {
            const gd = document.querySelector('[data-plot="run:overview"]');
            const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
            const box = gd.getBoundingClientRect();
            return [box.left + xa._offset + xa.l2p(xa.d2l(step)),
                    box.top + ya._offset + ya.l2p(ya.d2l(group))];
        }""",
        [group, step],
    )
    page.mouse.click(x, y)


def test_a_cell_per_group_and_step_in_model_order(page, overview_server) -> None:  # type: ignore[no-untyped-def]
    _open(page, overview_server, "wide")
    overview = page.locator("[data-testid=overview]")
    assert overview.get_attribute("data-groups") == str(len(WIDE))
    assert overview.get_attribute("data-steps") == str(len(WIDE_STEPS))
    trace = page.evaluate(
        f"""() => {{ const t = document.querySelector('{HEATMAP}').data[0];
        return {{type: t.type, x: Array.from(t.x), y: Array.from(t.y),
                 z: t.z.map(r => Array.from(r))}}; }}"""
    )
    assert trace["type"] == "heatmap"
    assert trace["y"] == list(WIDE) and trace["x"] == WIDE_STEPS
    assert len(trace["z"]) == len(WIDE)
    for row in trace["z"]:  # log10 λ_max of seeding.synthetic_group: 2 - 0.002 step
        assert row == pytest.approx([2.0 - 0.002 * s for s in WIDE_STEPS], abs=1e-4)
    assert page.locator(f"{HEATMAP} .heatmaplayer image").count() == 1  # cells are drawn
    # many groups: only the first group's details, and the page says so
    assert _sections(page) == [WIDE[0]]
    note = page.get_by_test_id("overview-note").inner_text()
    assert f"1 of {len(WIDE)} groups" in note


def test_clicking_a_cell_opens_that_group_at_that_step(page, overview_server) -> None:  # type: ignore[no-untyped-def]
    _open(page, overview_server, "wide")
    group, step = "blocks.2.conv2", WIDE_STEPS[4]
    _click_cell(page, group, step)
    page.wait_for_function(
        """([group, step]) => document.getElementById('app').dataset.step === String(step)
            && document.querySelector(`[data-plot="${group}:density"]`)?.data !== undefined""",
        arg=[group, step],
    )
    assert _sections(page) == [group]
    assert page.get_by_test_id("step-slider").input_value() == str(WIDE_STEPS.index(step))
    assert page.get_by_test_id("step-label").inner_text().startswith(f"step {step}")
    assert page.get_by_test_id("group-filter").input_value() == group
    # the group's section is scrolled into view
    top = page.eval_on_selector(
        f'section[data-group="{group}"]', "s => s.getBoundingClientRect().top"
    )
    assert 0 <= top < page.viewport_size["height"]
    # the per-step figures are the clicked step's: seeding's SNR(γ_0) is 0.1 + 0.01 step
    snr = page.evaluate(
        f"""() => Array.from(document.querySelector('[data-plot="{group}:snr"]').data
            .find(t => t.name.startsWith('SNR(γ')).y)"""
    )
    assert snr[0] == pytest.approx(0.1 + 0.01 * step, rel=1e-9)


def test_group_filter_by_name(page, overview_server) -> None:  # type: ignore[no-untyped-def]
    _open(page, overview_server, "wide")
    box = page.get_by_test_id("group-filter")

    def shown(expected: list[str]) -> None:
        page.wait_for_function(
            """(names) => JSON.stringify([...document.querySelectorAll('section[data-group]')]
                .map(s => s.dataset.group)) === JSON.stringify(names)""",
            arg=expected,
        )

    box.fill("blocks.1.")
    shown(["blocks.1.conv1", "blocks.1.conv2", "blocks.1.bn"])
    box.fill("CONV")  # case-insensitive, at most 8 groups, in model order
    shown([g for g in WIDE if "conv" in g][:8])
    box.fill("head.fc")
    shown(["head.fc"])
    box.fill("no-such-layer")  # nothing matches: the page says so and keeps what it drew
    page.wait_for_function(
        "() => document.querySelector('[data-testid=overview-note]')"
        ".textContent.includes('no group matches')"
    )
    assert _sections(page) == ["head.fc"]
    box.fill("")
    shown([WIDE[0]])


def test_few_groups_are_all_drawn_and_a_click_moves_the_slider(page, overview_server) -> None:  # type: ignore[no-untyped-def]
    _open(page, overview_server, "few")
    assert _sections(page) == list(FEW)
    _click_cell(page, "head", FEW_STEPS[2])
    page.wait_for_function(
        "(step) => document.getElementById('app').dataset.step === String(step)",
        arg=FEW_STEPS[2],
    )
    assert page.get_by_test_id("step-slider").input_value() == "2"
    assert _sections(page) == list(FEW)  # no filter with few groups


def test_quantity_selector(page, overview_server) -> None:  # type: ignore[no-untyped-def]
    _open(page, overview_server, "few")
    page.get_by_test_id("overview-quantity").select_option("k")
    page.wait_for_selector("[data-testid=overview][data-quantity=k][data-state=ready]")
    z = page.evaluate(f"() => document.querySelector('{HEATMAP}').data[0].z.flat()")
    assert set(z) == {K}
    labels = page.eval_on_selector_all(
        "[data-testid=overview-quantity] option", "os => os.map(o => o.value)"
    )
    assert labels == ["lam_max", "trace", "effective_rank", "k", "median_snr_gamma", "overlap_top"]
