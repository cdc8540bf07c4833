"""End-to-end fixtures: the browser fixtures of the dashboard tests, shared."""

from tests.web.conftest import browser_context, chromium_path, page  # noqa: F401
