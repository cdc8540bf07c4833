"""The run view draws each group's gradient-noise spectrum over its GGN spectrum when the run
computes it (``gradient_spectrum=True``), and follows the slider."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from curvscope.server.protocol import SnapshotMessage
from curvscope.server.stores import SQLiteStore
from tests.helpers.server_process import ServerProcess, running_server
from tests.web.seeding import synthetic_snapshot

pytestmark = pytest.mark.browser

STEPS = [0, 10, 20]
K, K_STATS = 30, 12
GROUPS = ("encoder", "head")


def _noise(step: int) -> dict:
    """A covariance spectrum of 7 eigenvalues whose largest grows with the step."""
    cov = [10.0 * (step + 1) / 2**i for i in range(7)]
    return {"gradient_eigvals": cov, "gradient_moment_eigvals": [2 * cov[0], *cov]}


@pytest.fixture(scope="module")
def noise_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    db = tmp_path_factory.mktemp("web-noise") / "noise.sqlite"
    store = SQLiteStore(db)
    try:
        for step in STEPS:
            message = synthetic_snapshot("noisy", step, k=K, k_stats=K_STATS, groups=GROUPS)
            message["config"] = {"curvature": "exact", "gradient_spectrum": True}
            message["groups"] = [g | _noise(step) for g in message["groups"]]
            store.append_snapshot(SnapshotMessage(**message), time.time())
            plain = synthetic_snapshot("plain", step, k=K, k_stats=K_STATS, groups=GROUPS)
            store.append_snapshot(SnapshotMessage(**plain), time.time())
    finally:
        store.close()
    with running_server(db) as server:
        yield server


def _names(page, plot: str) -> list[str]:  # type: ignore[no-untyped-def]
    return page.evaluate(
        f"""() => document.querySelector('[data-plot="{plot}"]').data.map(t => t.name)"""
    )


def test_noise_plot_overlays_the_ggn_and_follows_the_slider(page, noise_server) -> None:  # type: ignore[no-untyped-def]
    page.goto(noise_server.url("/runs/noisy"))
    page.wait_for_selector("#app[data-renders]")
    for group in GROUPS:
        names = _names(page, f"{group}:noise")
        assert names[0] == f"GGN (K={K})"
        assert names[1].startswith("gradient covariance (K=7, tr C = ")
        assert names[2] == "second moment (K=8)"
    trace_at = lambda: sum(_noise_trace_x(page))  # noqa: E731
    latest = trace_at()
    page.get_by_test_id("step-slider").fill("0")
    page.wait_for_selector(f'#app[data-step="{STEPS[0]}"]')
    expected = sum(_noise(STEPS[0])["gradient_eigvals"])
    assert f"tr C = {expected:.3g}" in _names(page, "encoder:noise")[1]
    assert trace_at() != latest  # the bins moved with the step's spectrum


def _noise_trace_x(page) -> list[float]:  # type: ignore[no-untyped-def]
    return page.evaluate(
        """() => Array.from(document.querySelector('[data-plot="encoder:noise"]').data[1].x)"""
    )


def test_a_run_without_the_noise_spectrum_has_no_noise_plot(page, noise_server) -> None:  # type: ignore[no-untyped-def]
    page.goto(noise_server.url("/runs/plain"))
    page.wait_for_selector("#app[data-renders]")
    assert page.locator('[data-plot$=":overlap"]').count() == len(GROUPS)
    assert page.locator('[data-plot$=":noise"]').count() == 0
