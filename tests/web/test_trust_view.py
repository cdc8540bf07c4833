"""The run view draws the step trust ("which directions could a Newton step use now"), its
share and predicted-vs-observed loss change over steps, and λ_min of the Hessian over steps."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest

from curvscope.server.protocol import SnapshotMessage
from curvscope.server.stores import SQLiteStore
from tests.helpers.server_process import ServerProcess, running_server
from tests.web.seeding import synthetic_snapshot

pytestmark = pytest.mark.browser

STEPS = [0, 10, 20, 30]
K, K_STATS = 30, 12
GROUPS = ("encoder", "head")


def _trusted(step: int, g: int) -> int:
    """How many of the K' directions have a non-negative bound (the first ones)."""
    return (3 * g + step // 10) % (K_STATS + 1)


def _trust(step: int, g: int) -> dict[str, Any]:
    n = _trusted(step, g)
    bound = [0.5 / (j + 1) if j < n else -0.25 * (j + 1) for j in range(K_STATS)]
    return {
        "trust_damping": [0.01 * (j + 1) if j < n else None for j in range(K_STATS)],
        "trust_bound": bound,
        "newton_reduction": 0.0625 * (g + 1) * (step + 1),
        "hessian_min": -1.0 + 0.125 * step / 10 + g,
    }


def _message(run: str, step: int, trust: bool) -> dict[str, Any]:
    message = synthetic_snapshot(run, step, k=K, k_stats=K_STATS, groups=GROUPS)
    if trust:
        message["config"] = {"curvature": "exact", "step_trust": True, "hessian_top_k": 1}
        message["groups"] = [
            group | _trust(step, g) | {"hessian_eigvals": [100.0]}
            for g, group in enumerate(message["groups"])
        ]
    return message


@pytest.fixture(scope="module")
def trust_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    db = tmp_path_factory.mktemp("web-trust") / "trust.sqlite"
    store = SQLiteStore(db)
    try:
        for step in STEPS:
            for run, trust in (("trusty", True), ("plain", False)):
                message = SnapshotMessage(**_message(run, step, trust))
                store.append_snapshot(message, time.time())
    finally:
        store.close()
    with running_server(db) as server:
        yield server


def _traces(page, plot: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return page.evaluate(
        f"""() => document.querySelector('[data-plot="{plot}"]').data.map(t => ({{
            name: t.name, x: Array.from(t.x || []), y: Array.from(t.y || [])}}))"""
    )


def test_trust_views_are_drawn_with_their_data(page, trust_server) -> None:  # type: ignore[no-untyped-def]
    page.goto(trust_server.url("/runs/trusty"))
    page.wait_for_selector("#app[data-renders]")
    latest = STEPS[-1]
    loss = {s: synthetic_snapshot("x", s)["loss"] for s in STEPS}
    for g, group in enumerate(GROUPS):
        n = _trusted(latest, g)
        trusted, untrusted, zero = _traces(page, f"{group}:trust")
        assert trusted["name"] == f"bound ≥ 0: trusted step ({n} of {K_STATS})"
        assert untrusted["name"] == f"bound < 0: no trusted step ({K_STATS - n} of {K_STATS})"
        # statistics direction j is eigenvalue j (no direction selection)
        eigvals = synthetic_snapshot("x", latest, k=K, k_stats=K_STATS)["groups"][0]["eigvals"]
        assert trusted["x"] == pytest.approx(eigvals[:n])
        assert trusted["y"] == pytest.approx([0.5 / (j + 1) for j in range(n)])
        assert untrusted["y"] == pytest.approx([-0.25 * (j + 1) for j in range(n, K_STATS)])
        assert zero["y"] == [0, 0]

        (share,) = _traces(page, f"{group}:trust_share")
        assert share["x"] == STEPS
        assert share["y"] == pytest.approx([_trusted(s, g) / K_STATS for s in STEPS])

        predicted, total, observed = _traces(page, f"{group}:newton")
        assert predicted["y"] == pytest.approx([-0.0625 * (g + 1) * (s + 1) for s in STEPS])
        assert total["name"] == "predicted, all groups"
        assert total["y"] == pytest.approx([-0.0625 * (1 + 2) * (s + 1) for s in STEPS])
        assert observed["x"] == STEPS[:-1]
        changes = [loss[b] - loss[a] for a, b in itertools.pairwise(STEPS)]
        assert observed["y"] == pytest.approx(changes)

        lam_min, _ = _traces(page, f"{group}:hessian_min")
        assert lam_min["y"] == pytest.approx([-1.0 + 0.125 * s / 10 + g for s in STEPS])

        plots = page.evaluate(
            f"""() => [...document.querySelectorAll('section[data-group="{group}"] [data-plot]')]
            .map(el => el.dataset.plot.split(":").pop())"""
        )
        order = ["hessian", "hessian_min", "trust", "trust_share", "newton"]
        assert [p for p in plots if p in order] == order

    # another step: the per-step view follows the slider, the series stay
    page.get_by_test_id("step-slider").fill("1")
    page.wait_for_selector(f'#app[data-step="{STEPS[1]}"]')
    trusted, untrusted, _ = _traces(page, "encoder:trust")
    n = _trusted(STEPS[1], 0)
    assert len(trusted["x"]) == n and len(untrusted["x"]) == K_STATS - n


def test_a_run_without_trust_has_no_trust_plots(page, trust_server) -> None:  # type: ignore[no-untyped-def]
    page.goto(trust_server.url("/runs/plain"))
    page.wait_for_selector("#app[data-renders]")
    assert page.locator('[data-plot$=":overlap"]').count() == len(GROUPS)
    for name in ("trust", "trust_share", "newton", "hessian_min"):
        assert page.locator(f'[data-plot$=":{name}"]').count() == 0
