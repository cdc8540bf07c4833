"""End to end: ``curvscope demo`` trains on the digits and streams into a real server,
whose REST API and dashboard (headless Chromium) then show every scheduled snapshot."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers.server_process import TEST_TOKEN, ServerProcess, running_server

STEPS, EVERY = 40, 10
SCHEDULED = list(range(0, STEPS, EVERY))

POINTS_JS = """() => Object.fromEntries([...document.querySelectorAll('[data-plot]')]
    .filter(el => el.data).map(el => [el.dataset.plot, el.data.map(t => (t.x || []).length)]))"""


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    """A real server with one finished demo run; yields the server and the demo's stdout."""
    db = tmp_path_factory.mktemp("demo") / "db.sqlite"
    with running_server(db, token=TEST_TOKEN) as server:
        # the command the compose "demo" service runs, with a short run and the token
        cmd = [
            sys.executable, "-m", "curvscope.server.cli", "demo",
            "--url", server.url(), "--no-serve", "--run", "digits-e2e",
            "--steps", str(STEPS), "--every", str(EVERY), "--token", TEST_TOKEN,
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield server, proc.stdout


def test_demo_streams_every_scheduled_snapshot(demo_run: tuple[ServerProcess, str]) -> None:
    server, stdout = demo_run
    assert stdout.splitlines()[0] == f"Dashboard: {server.url()}/"
    assert f"delivered={len(SCHEDULED)}" in stdout and "spooled=0" in stdout

    runs = httpx.get(server.url("/api/runs")).json()
    run = next(r for r in runs if r["run"] == "digits-e2e")
    assert run["snapshots"] == len(SCHEDULED)
    snaps = httpx.get(server.url("/api/runs/digits-e2e/snapshots")).json()
    assert [s["step"] for s in snaps] == SCHEDULED
    for snap in snaps:
        group = snap["groups"][0]
        assert snap["config"]["subsample"] == list(range(16))
        assert snap["config"]["mode"] == "in-loop"
        assert len(group["eigvals"]) > 0
        assert all(a >= b for a, b in zip(group["eigvals"], group["eigvals"][1:], strict=False))
        assert 0.0 <= sum(group["grad_overlap"]) <= 1.0 + 1e-6


@pytest.mark.browser
def test_dashboard_shows_the_demo_run(page, demo_run: tuple[ServerProcess, str]) -> None:  # type: ignore[no-untyped-def]
    server, _ = demo_run
    snaps = httpx.get(server.url("/api/runs/digits-e2e/snapshots")).json()
    page.goto(server.url("/"))
    page.locator('tr[data-run="digits-e2e"] a').first.click()
    page.wait_for_selector("#app[data-renders]")
    points = page.evaluate(POINTS_JS)
    assert points["run:loss"] == [len(SCHEDULED)]
    group = snaps[-1]["groups"][0]["name"]
    density = page.evaluate(
        f"""() => document.querySelector('[data-plot="{group}:density"]').data.length"""
    )
    assert density >= 1
    assert points[f"{group}:eigvals"], "no eigenvalue trajectories drawn"
    assert all(n == len(SCHEDULED) for n in points[f"{group}:eigvals"])
