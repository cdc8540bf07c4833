"""Live fan-out to browser clients: one bounded queue per client.

Ingest calls :meth:`Hub.publish`, which never waits: it puts the (already serialised) message
into each subscriber's bounded queue with ``put_nowait``. When a queue is full the subscriber
*skips ahead*: its oldest queued message is discarded to make room for the newest, so a
client that catches up always sees the latest state. A subscriber that has skipped more than
``max_skipped`` messages since it last took one is dropped: it is removed from the hub and
its :attr:`Subscriber.dropped` event is set, so its websocket handler closes the connection
(``CLOSE_SLOW_CLIENT``). A slow or stalled browser therefore never delays ingest or the
other browsers.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

__all__ = ["RUNS_TOPIC", "Hub", "Subscriber", "run_topic"]

RUNS_TOPIC = "runs"
"""Topic of run-list updates."""


def run_topic(run: str) -> str:
    """Topic of one run's snapshots and events."""
    return f"run:{run}"


@dataclass(eq=False)
class Subscriber:
    """One browser client: its queue of JSON texts and its counters."""

    topic: str
    queue: asyncio.Queue[str]
    max_skipped: int
    skipped: int = 0
    """Messages discarded since the client last took one."""
    skipped_total: int = 0
    dropped: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the hub let go of this client; :attr:`drop_reason` says why."""
    drop_reason: str | None = None
    """``"slow"`` (fell too far behind) or ``"shutdown"`` (the server is stopping)."""

    def drop(self, reason: str) -> None:
        """Mark the client as let go of (its handler then closes the websocket)."""
        self.drop_reason = reason
        self.dropped.set()

    async def get(self) -> str:
        """Wait for the next message (resets the skip counter)."""
        text = await self.queue.get()
        self.skipped = 0
        return text

    def offer(self, text: str) -> bool:
        """Queue ``text`` without waiting; ``False`` if the client must be dropped."""
        try:
            self.queue.put_nowait(text)
            return True
        except asyncio.QueueFull:
            pass
        self.queue.get_nowait()  # skip ahead: the oldest message goes
        self.queue.put_nowait(text)
        self.skipped += 1
        self.skipped_total += 1
        return self.skipped <= self.max_skipped


class Hub:
    """Topic-based fan-out; all methods run on the event loop thread."""

    def __init__(self, queue_size: int = 256, max_skipped: int = 1024) -> None:
        self.queue_size = queue_size
        self.max_skipped = max_skipped
        self._topics: dict[str, set[Subscriber]] = {}
        self.dropped_total = 0

    def subscribe(self, topic: str) -> Subscriber:
        """Register a new client on ``topic``."""
        sub = Subscriber(topic, asyncio.Queue(maxsize=self.queue_size), self.max_skipped)
        self._topics.setdefault(topic, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """Forget a client (idempotent)."""
        subs = self._topics.get(sub.topic)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._topics[sub.topic]

    def has_subscribers(self, topic: str) -> bool:
        """Whether anyone listens on ``topic`` (lets ingest skip work nobody needs)."""
        return bool(self._topics.get(topic))

    def subscriber_count(self) -> int:
        """Number of connected clients over all topics."""
        return sum(len(subs) for subs in self._topics.values())

    def publish(self, topic: str, text: str) -> None:
        """Offer ``text`` to every subscriber of ``topic``; never waits."""
        for sub in list(self._topics.get(topic, ())):
            if not sub.offer(text):
                self.unsubscribe(sub)
                self.dropped_total += 1
                sub.drop("slow")

    def close(self) -> None:
        """Drop every client (server shutdown)."""
        for subs in list(self._topics.values()):
            for sub in list(subs):
                self.unsubscribe(sub)
                sub.drop("shutdown")
