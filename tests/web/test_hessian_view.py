"""The run view draws each group's Hessian spectrum when the run computes the Hessian."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from curvscope.server.protocol import SnapshotMessage
from curvscope.server.stores import SQLiteStore
from tests.helpers.server_process import ServerProcess, running_server
from tests.web.seeding import synthetic_snapshot

pytestmark = pytest.mark.browser

STEPS = [0, 10, 20]  # the probe's hessian_every=2: steps 0 and 20 carry the Hessian
K, K_STATS = 30, 12
GROUPS = ("encoder", "head")
N_POINTS = 200  # figures.hessian_figure's grid
HESSIAN = {
    "hessian_eigvals": [120.0, 80.0, 15.0],
    "hessian_min": -2.5,
    "hessian_density": {
        "nodes": [[-2.5, 0.1, 40.0, 120.0], [-1.0, 0.5, 15.0, 80.0]],
        "weights": [[0.1, 0.6, 0.2, 0.1], [0.2, 0.5, 0.2, 0.1]],
    },
}


@pytest.fixture(scope="module")
def hessian_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    db = tmp_path_factory.mktemp("web-hessian") / "hessian.sqlite"
    store = SQLiteStore(db)
    try:
        for step in STEPS:
            message = synthetic_snapshot("hess", step, k=K, k_stats=K_STATS, groups=GROUPS)
            message["config"] = {"curvature": "exact", "hessian_top_k": 3}
            if step % 20 == 0:
                message["groups"] = [g | HESSIAN for g in message["groups"]]
            store.append_snapshot(SnapshotMessage(**message), time.time())
            plain = synthetic_snapshot("plain", step, k=K, k_stats=K_STATS, groups=GROUPS)
            store.append_snapshot(SnapshotMessage(**plain), time.time())
    finally:
        store.close()
    with running_server(db) as server:
        yield server


def _traces(page, plot: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return page.evaluate(
        f"""() => document.querySelector('[data-plot="{plot}"]').data.map(
            t => ({{name: t.name, x: Array.from(t.x || [])}}))"""
    )


def test_hessian_plot_is_drawn_with_its_traces(page, hessian_server) -> None:  # type: ignore[no-untyped-def]
    page.goto(hessian_server.url("/runs/hess"))
    page.wait_for_selector("#app[data-renders]")
    assert page.get_by_test_id("step-label").inner_text().startswith(f"step {STEPS[-1]}")
    for group in GROUPS:
        traces = _traces(page, f"{group}:hessian")
        assert [t["name"] for t in traces] == [
            "SLQ density (2 probes)",
            "top-3 of H",
            "λ_min(H) = -2.5",
            f"GGN eigenvalues (K={K})",
            "GGN density (same broadening)",
        ]
        assert len(traces[0]["x"]) == N_POINTS
        assert [x for x in traces[1]["x"] if x is not None] == [120, 120, 80, 80, 15, 15]
        assert [x for x in traces[2]["x"] if x is not None] == [-2.5, -2.5]
        assert len(traces[3]["x"]) == K
        # after the GGN's own per-step plots, in the group's grid
        plots = page.evaluate(
            f"""() => [...document.querySelectorAll('section[data-group="{group}"] [data-plot]')]
            .map(el => el.dataset.plot)"""
        )
        assert plots[-2:] == [f"{group}:hessian", f"{group}:hessian_min"]
        # λ_min over steps: the snapshots that carry the Hessian (steps 0 and 20)
        lam_min, zero = page.evaluate(
            f"""() => document.querySelector('[data-plot="{group}:hessian_min"]').data.map(
                t => [Array.from(t.x), Array.from(t.y)])"""
        )
        assert lam_min == [[0, 20], [-2.5, -2.5]] and zero == [[0, 20], [0, 0]]

    # a step the probe skipped: the plot stays, and says why it is empty
    page.get_by_test_id("step-slider").fill("1")
    page.wait_for_selector(f'#app[data-step="{STEPS[1]}"]')
    assert _traces(page, "encoder:hessian") == []
    note = page.evaluate(
        """() => document.querySelector('[data-plot="encoder:hessian"]').layout.annotations
        .map(a => a.text)"""
    )
    assert note == ["no Hessian at this step"]


def test_a_run_without_the_hessian_has_no_hessian_plot(page, hessian_server) -> None:  # type: ignore[no-untyped-def]
    page.goto(hessian_server.url("/runs/plain"))
    page.wait_for_selector("#app[data-renders]")
    assert page.locator('[data-plot$=":overlap"]').count() == len(GROUPS)
    assert page.locator('[data-plot$=":hessian"]').count() == 0
