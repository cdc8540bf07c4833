"""Path and query parameters shared by the HTTP and websocket routes, and the app state
(store, hub, settings) they read.

Step parameters are bounded by :data:`~curvscope.server.protocol.MAX_STEP`, so a huge number
is a 422, not an integer overflow inside the store.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import HTTPException, Path, Query
from starlette.requests import HTTPConnection

from curvscope.server.fanout import Fanout
from curvscope.server.figure_cache import FigureCache
from curvscope.server.hub import Hub
from curvscope.server.protocol import MAX_RUN_NAME_LENGTH, MAX_STEP, RUN_NAME_PATTERN
from curvscope.server.settings import Settings
from curvscope.server.stores import Store

__all__ = [
    "RunPath",
    "StepQuery",
    "app_fanout",
    "app_figure_cache",
    "app_hub",
    "app_settings",
    "app_store",
    "check_max_points",
    "is_run_name",
]

_RUN_NAME = re.compile(RUN_NAME_PATTERN)

RunPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=MAX_RUN_NAME_LENGTH,
        pattern=RUN_NAME_PATTERN,
        description="Run name (letters, digits, '.', '_', '-').",
    ),
]
StepQuery = Annotated[
    int | None, Query(ge=0, le=MAX_STEP, description="Step shown (default: latest)")
]


def is_run_name(name: str) -> bool:
    """Whether ``name`` is a valid run name (for names that do not come through
    :data:`RunPath`: query lists, websocket paths)."""
    return len(name) <= MAX_RUN_NAME_LENGTH and _RUN_NAME.fullmatch(name) is not None


def app_store(conn: HTTPConnection) -> Store:
    """The app's store (opened by the lifespan)."""
    store: Store = conn.app.state.store
    return store


def app_hub(conn: HTTPConnection) -> Hub:
    """The app's live hub (created by the lifespan)."""
    hub: Hub = conn.app.state.hub
    return hub


def app_figure_cache(conn: HTTPConnection) -> FigureCache:
    """The app's cache of figure responses (created by the lifespan)."""
    cache: FigureCache = conn.app.state.figure_cache
    return cache


def app_fanout(conn: HTTPConnection) -> Fanout:
    """The app's fan-out of stored changes to browsers (created by the lifespan)."""
    fanout: Fanout = conn.app.state.fanout
    return fanout


def app_settings(conn: HTTPConnection) -> Settings:
    """The app's settings."""
    settings: Settings = conn.app.state.settings
    return settings


def check_max_points(conn: HTTPConnection, max_points: int | None) -> None:
    """422 when ``max_points`` exceeds the configured ``max_points_limit``."""
    limit = app_settings(conn).max_points_limit
    if max_points is not None and max_points > limit:
        raise HTTPException(422, f"max_points must be at most {limit}")
