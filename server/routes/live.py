"""Browser websockets: live snapshots of one run (``/ws/runs/{run}``) and the run list
(``/ws/runs``).

Each connection owns one :class:`~curvscope.server.hub.Subscriber` (a bounded queue); a
sender task drains it while the handler watches for the browser leaving or the hub letting
go of a slow client. Message shapes are documented in ``docs/api.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from curvscope.server.auth import origin_allowed, presented_token, token_matches
from curvscope.server.executors import reading
from curvscope.server.hub import RUNS_TOPIC, Hub, Subscriber, run_topic
from curvscope.server.params import app_hub, app_settings, app_store, is_run_name
from curvscope.server.protocol import (
    CLOSE_FORBIDDEN_ORIGIN,
    CLOSE_GOING_AWAY,
    CLOSE_SLOW_CLIENT,
    CLOSE_UNAUTHORIZED,
)

__all__ = ["router"]

CLOSE_INVALID_RUN = 4404
"""The run name in the URL is not a valid run name."""

router = APIRouter()


async def _admit(ws: WebSocket) -> bool:
    """Accept the websocket, then close it again if the Origin or token is wrong."""
    settings = app_settings(ws)
    await ws.accept()
    if not origin_allowed(ws):
        await ws.close(code=CLOSE_FORBIDDEN_ORIGIN, reason="forbidden origin")
        return False
    if settings.protect_reads and not token_matches(
        settings.token_value(), presented_token(ws, allow_query=True)
    ):
        await ws.close(code=CLOSE_UNAUTHORIZED, reason="token required")
        return False
    return True


async def _pump(ws: WebSocket, sub: Subscriber) -> None:
    while True:
        await ws.send_text(await sub.get())


async def _drain_incoming(ws: WebSocket) -> None:
    """Read (and ignore) what the browser sends, to notice when it leaves."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            frame = await ws.receive()
            if frame["type"] == "websocket.disconnect":
                return


async def _serve(ws: WebSocket, hub: Hub, sub: Subscriber, first: str) -> None:
    """Send ``first``, then the subscriber's queue, until the browser leaves or is dropped."""
    tasks: list[asyncio.Task[None]] = []
    try:
        await ws.send_text(first)
        tasks = [
            asyncio.create_task(_pump(ws, sub)),
            asyncio.create_task(_drain_incoming(ws)),
            asyncio.create_task(_wait(sub.dropped)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    finally:
        hub.unsubscribe(sub)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
    if sub.dropped.is_set():
        code = CLOSE_SLOW_CLIENT if sub.drop_reason == "slow" else CLOSE_GOING_AWAY
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(code=code, reason=sub.drop_reason or ""), 5.0)


async def _wait(event: asyncio.Event) -> None:
    await event.wait()


@router.websocket("/ws/runs")
async def watch_runs(ws: WebSocket) -> None:
    """Run-list updates: first ``{"type": "runs", "runs": [...]}``, then ``run_update`` and
    ``run_deleted`` messages."""
    if not await _admit(ws):
        return
    hub = app_hub(ws)
    sub = hub.subscribe(RUNS_TOPIC)
    runs = await reading(ws, app_store(ws).list_runs)
    settings = app_settings(ws)
    first = json.dumps(
        {"type": "runs", "runs": [r.to_dict(live_window_s=settings.live_window_s) for r in runs]}
    )
    await _serve(ws, hub, sub, first)


@router.websocket("/ws/runs/{run}")
async def watch_run(ws: WebSocket, run: str) -> None:
    """One run: first ``{"type": "subscribed", "run": ..., "worker": pid}`` (the server
    process serving this socket), then ``snapshot`` and ``event`` messages as they are
    stored, by any worker."""
    if not await _admit(ws):
        return
    if not is_run_name(run):
        await ws.close(code=CLOSE_INVALID_RUN, reason="invalid run name")
        return
    hub = app_hub(ws)
    sub = hub.subscribe(run_topic(run))
    first = {"type": "subscribed", "run": run, "worker": os.getpid()}
    await _serve(ws, hub, sub, json.dumps(first))
