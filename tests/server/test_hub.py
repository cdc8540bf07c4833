"""Hub: bounded per-client queues; a slow client skips ahead or is dropped, never blocks."""

from __future__ import annotations

import asyncio

from curvscope.server.hub import Hub, run_topic


def test_publish_reaches_every_subscriber_of_the_topic() -> None:
    async def scenario() -> None:
        hub = Hub(queue_size=4)
        a, b = hub.subscribe(run_topic("x")), hub.subscribe(run_topic("x"))
        other = hub.subscribe(run_topic("y"))
        hub.publish(run_topic("x"), "m1")
        assert await a.get() == "m1" and await b.get() == "m1"
        assert other.queue.empty()

    asyncio.run(scenario())


def test_a_client_that_never_reads_does_not_delay_the_others() -> None:
    async def scenario() -> None:
        hub = Hub(queue_size=8, max_skipped=10_000)
        stalled = hub.subscribe("t")  # never reads
        reader = hub.subscribe("t")
        received: list[str] = []
        for i in range(1_000):
            hub.publish("t", str(i))  # synchronous: cannot block on anyone
            received.append(await reader.get())
        assert received == [str(i) for i in range(1_000)]
        # The stalled client skipped ahead: it holds the latest messages, oldest first.
        assert stalled.queue.qsize() == 8
        assert [stalled.queue.get_nowait() for _ in range(8)] == [str(i) for i in range(992, 1000)]
        assert stalled.skipped_total == 992
        assert not stalled.dropped.is_set()

    asyncio.run(scenario())


def test_a_client_too_far_behind_is_dropped() -> None:
    async def scenario() -> None:
        hub = Hub(queue_size=2, max_skipped=3)
        slow = hub.subscribe("t")
        for i in range(5):
            hub.publish("t", str(i))
        assert not slow.dropped.is_set()  # 3 skipped so far
        hub.publish("t", "5")
        assert slow.dropped.is_set() and slow.drop_reason == "slow"
        assert not hub.has_subscribers("t") and hub.dropped_total == 1
        hub.publish("t", "6")  # no longer offered
        assert slow.queue.qsize() == 2

    asyncio.run(scenario())


def test_reading_resets_the_skip_count() -> None:
    async def scenario() -> None:
        hub = Hub(queue_size=1, max_skipped=1)
        sub = hub.subscribe("t")
        for i in range(10):
            hub.publish("t", "a")
            hub.publish("t", "b")  # one skip
            assert await sub.get() == "b", i
        assert not sub.dropped.is_set()

    asyncio.run(scenario())


def test_close_drops_everyone_for_shutdown() -> None:
    async def scenario() -> None:
        hub = Hub()
        subs = [hub.subscribe("a"), hub.subscribe("b")]
        hub.close()
        assert all(s.dropped.is_set() and s.drop_reason == "shutdown" for s in subs)
        assert hub.subscriber_count() == 0

    asyncio.run(scenario())
