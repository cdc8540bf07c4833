"""Figure responses built once: an LRU of encoded bodies with single-flight builds.

Building a 50-group step figure is ~0.4 s of pure-Python CPU, and CPU in a thread is CPU
taken from the event loop that acknowledges probes (one interpreter lock). But a stored
snapshot never changes: a figure response depends only on its request and on the run's
state (``snapshots``, ``last_step``, ``last_update`` of its summary, which change with
every write, deletion or pruning). So each distinct response is built once per run state;
browsers asking for it meanwhile wait for that one build (single flight), and later asks
are a dictionary lookup. At most ``max_builds`` builds run at once, so figure work never
holds more than that many threads' worth of the interpreter.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable

__all__ = ["FigureCache"]


class FigureCache:
    """Encoded figure responses by key, at most ``max_bytes`` of them (least recently
    used go first)."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024, max_builds: int = 1) -> None:
        self.max_bytes = max_bytes
        self._bodies: OrderedDict[Hashable, str] = OrderedDict()
        self._size = 0
        self._building: dict[Hashable, asyncio.Future[str]] = {}
        self._builds = asyncio.Semaphore(max_builds)
        self.hits = 0
        self.builds = 0

    async def get(self, key: Hashable, build: Callable[[], Awaitable[str]]) -> str:
        """The body for ``key``: cached, being built (awaited), or built now."""
        body = self._bodies.get(key)
        if body is not None:
            self._bodies.move_to_end(key)
            self.hits += 1
            return body
        pending = self._building.get(key)
        if pending is not None:
            self.hits += 1
            return await asyncio.shield(pending)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._building[key] = future
        try:
            async with self._builds:
                body = await build()
            self.builds += 1
            self._store(key, body)
            future.set_result(body)
            return body
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters get it, nobody is warned
            raise
        finally:
            del self._building[key]

    def _store(self, key: Hashable, body: str) -> None:
        if len(body) > self.max_bytes:
            return
        self._bodies[key] = body
        self._size += len(body)
        while self._size > self.max_bytes:
            _, old = self._bodies.popitem(last=False)
            self._size -= len(old)
