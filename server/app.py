"""The FastAPI application, built by :func:`create_app` (nothing happens at import time).

The lifespan opens the store (running schema migrations), creates the live hub and
installs the log filter that keeps tokens out of the logs; on shutdown it lets go of the
browser clients and closes the store.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.middleware.gzip import GZipMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from curvscope.server.executors import ByteBudget, Pools
from curvscope.server.fanout import Fanout
from curvscope.server.figure_cache import FigureCache
from curvscope.server.hub import Hub
from curvscope.server.routes import api, ingest, live, pages
from curvscope.server.settings import Settings
from curvscope.server.stores import Store, open_store

__all__ = ["RedactTokens", "create_app"]

_TOKEN_IN_URL = re.compile(r"((?:^|[?&])token=)[^&\s\"']*")
_REDACTED_LOGGERS = ("uvicorn.access", "uvicorn.error", "uvicorn")


class RedactTokens(logging.Filter):
    """Replaces ``token=...`` in log records (uvicorn logs websocket URLs with their query)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message:
            record.msg = _TOKEN_IN_URL.sub(r"\1***", message)
            record.args = ()
        return True


def _install_redaction() -> None:
    for name in _REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())


RETENTION_CHECK_S = 3600.0
"""How often ``--retention`` looks for runs to remove (at most; sooner for short ones)."""


async def _retain(app: FastAPI, retention_s: float) -> None:
    """Remove runs not updated for ``retention_s`` seconds, now and then periodically."""
    log = logging.getLogger("curvscope.server.retention")
    loop = asyncio.get_running_loop()
    store = app.state.store

    def prune() -> set[str]:
        before = {r.run for r in store.list_runs()}
        store.prune(older_than=time.time() - retention_s, keep_every=None)
        return before - {r.run for r in store.list_runs()}

    while True:
        try:
            removed = await loop.run_in_executor(app.state.pools.ingest, prune)
            if removed:
                log.info(
                    "retention: removed %d runs not updated for %.0f s", len(removed), retention_s
                )
            if not app.state.fanout.cross_worker:
                for run in sorted(removed):
                    app.state.fanout.deleted(run)
        except Exception:
            log.exception("retention: pruning failed; trying again later")
        await asyncio.sleep(min(RETENTION_CHECK_S, retention_s / 4))


def create_app(settings: Settings | None = None, store: Store | None = None) -> FastAPI:
    """Build the app. ``store`` overrides the store ``settings.db`` names (tests)."""
    settings = settings if settings is not None else Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _install_redaction()
        app.state.store = store if store is not None else open_store(settings.db)
        app.state.hub = Hub(settings.client_queue_size, settings.client_max_skipped)
        app.state.pools = Pools.create(settings.ingest_threads, settings.read_threads)

        async def feed(fn: Callable[..., Any], *args: Any) -> Any:
            # the fan-out's reads have threads of their own: browser updates never queue
            # behind figure builds
            return await asyncio.get_running_loop().run_in_executor(
                app.state.pools.feed, functools.partial(fn, *args)
            )

        app.state.fanout = Fanout(app.state.store, app.state.hub, settings.live_window_s, feed)
        app.state.figure_cache = FigureCache(settings.figure_cache_bytes, settings.figure_builds)
        app.state.fanout.start(asyncio.get_running_loop())
        retention = (
            asyncio.create_task(_retain(app, settings.retention_s))
            if settings.retention_s is not None
            else None
        )
        # Plotly.js gzipped once, in the background, before the first browser asks for it
        bundle = asyncio.get_running_loop().run_in_executor(None, pages.plotly_bundle)
        app.state.ingest_budget = ByteBudget(settings.max_inflight_bytes)
        app.state.ingest_connections = 0
        try:
            yield
        finally:
            bundle.cancel()
            if retention is not None:
                retention.cancel()
            app.state.fanout.stop()
            app.state.hub.close()
            app.state.pools.shutdown()
            app.state.store.close()

    app = FastAPI(
        title="curvscope",
        summary="Live curvature monitor: ingest from probes, REST and live updates for browsers.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    # DNS rebinding: a page of evil.example resolving to 127.0.0.1 sends Host: evil.example.
    app.add_middleware(
        TrustedHostMiddleware, allowed_hosts=settings.trusted_hosts(), www_redirect=False
    )
    # JSON and scripts compressed (level 1: fast, in the event loop; figure JSON shrinks
    # ~4x); Plotly.js comes pre-compressed (routes.pages) and is left alone.
    app.add_middleware(GZipMiddleware, minimum_size=1024, compresslevel=1)
    app.include_router(api.router)
    app.include_router(ingest.router)
    app.include_router(live.router)
    app.include_router(pages.router)
    return app
