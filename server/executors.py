"""Where the server's blocking work runs: ingest never waits behind dashboard reads.

Database writes (and the parsing of large frames) run on the ingest pool, REST and figure
reads on the read pool: two separate thread pools, so six browser tabs building 50-group
figures queue among themselves while every probe's snapshot is parsed, committed and
acknowledged at once. :class:`ByteBudget` bounds the bytes of frames being parsed and
stored at the same time (pydantic objects of a 4 MiB frame take many times its size).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from starlette.requests import HTTPConnection

__all__ = ["ByteBudget", "Pools", "reading", "writing"]

P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class Pools:
    """The two thread pools of one app (created and shut down by its lifespan)."""

    ingest: ThreadPoolExecutor
    read: ThreadPoolExecutor
    feed: ThreadPoolExecutor
    """The live fan-out's reads (a snapshot another worker stored, read back for browsers)."""

    @classmethod
    def create(cls, ingest_threads: int, read_threads: int) -> Pools:
        return cls(
            ThreadPoolExecutor(ingest_threads, thread_name_prefix="curvscope-ingest"),
            ThreadPoolExecutor(read_threads, thread_name_prefix="curvscope-read"),
            ThreadPoolExecutor(2, thread_name_prefix="curvscope-feed"),
        )

    def shutdown(self) -> None:
        for pool in (self.ingest, self.read, self.feed):
            pool.shutdown(wait=True)


async def _run(pool: ThreadPoolExecutor, fn: Callable[P, T], *args: P.args, **kw: P.kwargs) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(pool, functools.partial(fn, *args, **kw))


async def reading(conn: HTTPConnection, fn: Callable[P, T], *args: P.args, **kw: P.kwargs) -> T:
    """Run a blocking read (store query, figure building) on the read pool."""
    pools: Pools = conn.app.state.pools
    return await _run(pools.read, fn, *args, **kw)


async def writing(conn: HTTPConnection, fn: Callable[P, T], *args: P.args, **kw: P.kwargs) -> T:
    """Run blocking ingest work (parsing a large frame, a store write) on the ingest pool."""
    pools: Pools = conn.app.state.pools
    return await _run(pools.ingest, fn, *args, **kw)


class ByteBudget:
    """At most ``limit`` bytes taken at once; :meth:`take` waits for its share.

    A request larger than the whole budget takes all of it (it runs alone).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken = 0
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def take(self, size: int) -> AsyncIterator[None]:
        size = min(size, self.limit)
        async with self._changed:
            await self._changed.wait_for(lambda: self.taken + size <= self.limit)
            self.taken += size
        try:
            yield
        finally:
            async with self._changed:
                self.taken -= size
                self._changed.notify_all()
