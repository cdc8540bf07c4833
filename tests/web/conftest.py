"""Browser fixtures: Debian's headless Chromium driven by Playwright (never Playwright's own
browser downloads), a seeded database and a real ``curvscope serve`` process.

Locally the browser tests skip with a message when no Chromium is found; with ``CI=true``
a missing browser fails them instead (``.ci/run`` installs the ``chromium`` package).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from curvscope.server.protocol import EventMessage
from curvscope.server.stores import SQLiteStore
from tests.helpers.chromium import CHROMIUM_ARGS, find_chromium
from tests.helpers.server_process import ServerProcess, running_server
from tests.web.seeding import seed_run

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"

# What the seeded database holds (tests compute their expectations from these).
K, K_STATS = 30, 12
ALPHA_STEPS = list(range(0, 200, 10))  # 20 snapshots
BETA_STEPS = list(range(0, 50, 10))  # 5 snapshots
GROUPS = ("encoder", "head")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = find_chromium()
    if path is None:
        message = (
            "no Chromium found (install Debian's 'chromium' package, or set CURVSCOPE_CHROMIUM)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(f"browser tests skipped: {message}")
    return path


@pytest.fixture(scope="module")
def browser_context(chromium_path: str) -> Iterator[object]:
    """One browser and one context per test module (its pages share the HTTP cache).

    Module scope, not session: Playwright's sync API keeps an event loop running in the
    main thread while it is open, which would break ``asyncio.run`` in later test modules.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(20_000)
        yield context
        context.close()
        browser.close()


class ConsoleLog:
    """Console errors and uncaught exceptions of one page."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def console(self, message: object) -> None:
        if message.type == "error":  # type: ignore[attr-defined]
            self.errors.append(f"console: {message.text}")  # type: ignore[attr-defined]

    def pageerror(self, error: object) -> None:
        self.errors.append(f"page error: {error}")


@pytest.fixture
def page(browser_context: object) -> Iterator[object]:
    """A fresh page; the test fails if the page logged a console error."""
    page = browser_context.new_page()  # type: ignore[attr-defined]
    log = ConsoleLog()
    page.on("console", log.console)
    page.on("pageerror", log.pageerror)
    page.console_log = log
    yield page
    page.close()
    assert not log.errors, "console errors:\n" + "\n".join(log.errors)


@pytest.fixture(scope="module")
def seeded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``curvscope serve`` on a database with runs alpha (20 snapshots, two groups), beta
    (5 snapshots) and crashed (an error event, no snapshot)."""
    db = tmp_path_factory.mktemp("web") / "seeded.sqlite"
    seed_run(db, "alpha", ALPHA_STEPS, k=K, k_stats=K_STATS, groups=GROUPS)
    seed_run(db, "beta", BETA_STEPS, k=K, k_stats=K_STATS, groups=GROUPS)
    store = SQLiteStore(db)
    store.append_event(
        EventMessage(run="crashed", step=3, wall_time=time.time(), message="CUDA out of memory"),
        time.time(),
    )
    store.close()
    with running_server(db) as server:
        yield server
