"""What browsers hear about a stored change, in one worker or across several.

A store without a cross-worker feed (SQLite: one worker): the ingest and delete routes
call :meth:`Fanout.snapshot`, :meth:`Fanout.event` and :meth:`Fanout.deleted` right after
their commit. PostgreSQL (one worker or several): every commit sends a small
``NOTIFY`` (run, step or event id) to all workers, this one included; each worker's
:meth:`Fanout.notified` reads the row from the database and publishes it to its own
browsers, so a browser connected to worker A sees a snapshot ingested by worker B, and no
browser hears of anything twice. The messages are the same JSON either way
(``docs/api.md``, "Live updates").
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from curvscope.server.hub import RUNS_TOPIC, Hub, run_topic
from curvscope.server.stores import EventRecord, SnapshotRecord, Store

__all__ = ["Fanout"]

log = logging.getLogger("curvscope.server.fanout")

Reader = Callable[..., Awaitable[Any]]
"""Runs a blocking store read in a thread and awaits it."""


class Fanout:
    """Publish stored changes to the hub.

    Args:
        store: where changes are read back (the cross-worker path).
        hub: this worker's browser subscribers.
        live_window_s: shapes the ``live`` flag of run-list updates.
        read: runs a store read off the event loop.
    """

    def __init__(self, store: Store, hub: Hub, live_window_s: float, read: Reader) -> None:
        self.store, self.hub = store, hub
        self.live_window_s = live_window_s
        self.read = read
        self.cross_worker = False
        """Whether changes arrive through the store's feed (then routes publish nothing)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: Callable[[], None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the feed ---------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Follow the store's cross-worker feed, if it has one."""
        self._loop = loop
        self._stop = self.store.listen(self._from_thread)
        self.cross_worker = self._stop is not None

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None

    def _from_thread(self, change: dict[str, Any]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._spawn, change)

    def _spawn(self, change: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self.notified(change))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def notified(self, change: dict[str, Any]) -> None:
        """A change committed by any worker: read it back and publish it."""
        try:
            kind, run = change.get("kind"), change.get("run")
            if not isinstance(run, str):
                return
            if kind == "snapshot" and self._wanted(run):
                record = await self.read(self.store.read_snapshot, run, int(change["step"]))
                if record is not None:
                    await self.snapshot(record)
            elif kind == "event" and self._wanted(run):
                event = await self.read(self.store.read_event, run, int(change["id"]))
                if event is not None:
                    await self.event(event)
            elif kind == "run_deleted":
                self.deleted(run)
        except Exception:  # one bad notification must not stop the others
            log.exception("could not publish the change %r", change)

    def _wanted(self, run: str) -> bool:
        return self.hub.has_subscribers(run_topic(run)) or self.hub.has_subscribers(RUNS_TOPIC)

    # -- publishing -------------------------------------------------------------------------
    async def snapshot(self, record: SnapshotRecord) -> None:
        """A stored snapshot: to the run's page, and the run list's update."""
        topic = run_topic(record.run)
        if self.hub.has_subscribers(topic):
            body = record.to_json()
            run = json.dumps(record.run)
            self.hub.publish(topic, f'{{"type":"snapshot","run":{run},"snapshot":{body}}}')
        await self._run_update(record.run)

    async def event(self, event: EventRecord | dict[str, Any]) -> None:
        """A stored event (its record, or its fields without the ``id`` when the route
        publishes it itself): to the run's page, and the run list's update."""
        fields = event.to_dict() if isinstance(event, EventRecord) else event
        run = fields["run"]
        topic = run_topic(run)
        if self.hub.has_subscribers(topic):
            self.hub.publish(topic, json.dumps({"type": "event", "run": run, "event": fields}))
        await self._run_update(run)

    def deleted(self, run: str) -> None:
        """A deleted run: off the run list."""
        self.hub.publish(RUNS_TOPIC, json.dumps({"type": "run_deleted", "run": run}))

    async def _run_update(self, run: str) -> None:
        if self.hub.has_subscribers(RUNS_TOPIC):
            summary = await self.read(self.store.get_run, run)
            if summary is not None:
                update = summary.to_dict(live_window_s=self.live_window_s)
                self.hub.publish(RUNS_TOPIC, json.dumps({"type": "run_update", "summary": update}))
