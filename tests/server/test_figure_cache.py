"""Figure responses are built once per request and run state, and never stale."""

from __future__ import annotations

import asyncio

from fastapi.testclient import TestClient

from curvscope.server.figure_cache import FigureCache
from tests.helpers.messages import make_event, make_group, make_snapshot
from tests.server.routes.test_api import ingest


def test_a_response_is_built_once_until_the_run_changes(client: TestClient) -> None:
    cache = client.app.state.figure_cache
    ingest(client, make_snapshot("a", 0, groups=[make_group("g", k=5)]))
    first = client.get("/api/runs/a/figures").json()
    again = client.get("/api/runs/a/figures").json()
    assert again == first and (cache.builds, cache.hits) == (1, 1)
    ingest(client, make_snapshot("a", 1, groups=[make_group("g", k=3)]))
    latest = client.get("/api/runs/a/figures").json()
    assert cache.builds == 2 and latest["step"] == 1 and latest["steps"] == [0, 1]
    assert latest["groups"][0]["k"] == 3
    ingest(client, make_event("a", "something failed", step=1))  # the events banner
    with_event = client.get("/api/runs/a/figures").json()
    assert cache.builds == 3 and with_event["events"][-1]["message"] == "something failed"
    assert client.get("/api/runs/a/figures", params={"step": 0}).json()["step"] == 0
    client.delete("/api/runs/a")
    assert client.get("/api/runs/a/figures").status_code == 404


def test_concurrent_identical_builds_share_one() -> None:
    async def scenario() -> tuple[list[str], int]:
        cache = FigureCache(max_builds=1)
        started = asyncio.Event()
        release = asyncio.Event()
        calls = 0

        async def build() -> str:
            nonlocal calls
            calls += 1
            started.set()
            await release.wait()
            return "body"

        waiters = [asyncio.create_task(cache.get("k", build)) for _ in range(5)]
        await started.wait()
        release.set()
        return list(await asyncio.gather(*waiters)), calls

    bodies, calls = asyncio.run(scenario())
    assert bodies == ["body"] * 5 and calls == 1


def test_the_cache_forgets_the_least_recently_used() -> None:
    async def scenario() -> list[str]:
        cache = FigureCache(max_bytes=10)

        async def body(text: str) -> str:
            return text

        for key in ("a", "b", "c"):
            await cache.get(key, lambda key=key: body(key * 4))
        return list(cache._bodies)

    assert asyncio.run(scenario()) == ["b", "c"]
