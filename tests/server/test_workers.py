"""Several server workers on one PostgreSQL database (``serve --workers 2``): live fan-out
across processes, and nothing acknowledged lost when a worker is SIGKILLed under load."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from websockets.sync.client import ClientConnection, connect

from curvscope.probe.stream.spool import Spool
from curvscope.probe.stream.transport import Transport, TransportOptions
from curvscope.server.protocol import SnapshotMessage
from tests.helpers.messages import make_snapshot
from tests.helpers.server_process import ServerProcess, free_port

FAST = TransportOptions(queue_size=256, connect_timeout=2.0, ack_timeout=5.0, backoff_max=0.2)


@contextlib.contextmanager
def _workers(postgres_url: str, tmp_path: Path, count: int = 2) -> Iterator[ServerProcess]:
    server = ServerProcess(
        db=postgres_url,  # type: ignore[arg-type] - a URL where a path usually goes
        port=free_port(),
        extra_args=["--workers", str(count)],
        log_path=tmp_path / "server.log",
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _browsers_on_every_worker(
    stack: contextlib.ExitStack,
    server: ServerProcess,
    run: str,
    workers: int,
    deadline_s: float = 30.0,
) -> dict[int, list[ClientConnection]]:
    """Browser sockets on ``run`` (closed with ``stack``), opened until each of the
    ``workers`` serves at least two."""
    by_worker: dict[int, list[ClientConnection]] = {}
    deadline = time.monotonic() + deadline_s
    while len(by_worker) < workers or min(len(v) for v in by_worker.values()) < 2:
        assert time.monotonic() < deadline, f"browsers only reached workers {sorted(by_worker)}"
        ws = stack.enter_context(connect(server.ws_url(f"/ws/runs/{run}"), open_timeout=10))
        hello = json.loads(ws.recv(timeout=10))
        assert hello["type"] == "subscribed"
        by_worker.setdefault(hello["worker"], []).append(ws)
    return by_worker


def test_a_browser_on_one_worker_sees_what_another_ingested(
    postgres_url: str, tmp_path: Path
) -> None:
    with _workers(postgres_url, tmp_path) as server, contextlib.ExitStack() as stack:
        browsers = _browsers_on_every_worker(stack, server, "shared", workers=2)
        for step in range(12):  # a fresh connection each: they land on both workers
            with connect(server.ws_url("/ws/ingest"), open_timeout=10) as probe:
                probe.send(json.dumps(make_snapshot("shared", step)))
                assert json.loads(probe.recv(timeout=10))["type"] == "ack"
        for worker, sockets in browsers.items():
            for ws in sockets:
                seen = []
                while len(seen) < 12:
                    message = json.loads(ws.recv(timeout=10))
                    assert message["type"] == "snapshot", message
                    seen.append(message["snapshot"]["step"])
                assert sorted(seen) == list(range(12)), (worker, seen)  # each once
        stored = httpx.get(server.url("/api/runs/shared/snapshots"), timeout=10).json()
    assert [s["step"] for s in stored] == list(range(12))


def test_sigkill_of_a_worker_under_load_loses_nothing_acknowledged(
    postgres_url: str, tmp_path: Path
) -> None:
    """Four probes stream through both workers; one worker is SIGKILLed mid-load. The
    probes reconnect and resend what was not acknowledged: everything ends up stored once."""
    with _workers(postgres_url, tmp_path) as server:
        with contextlib.ExitStack() as stack:
            victim = next(iter(_browsers_on_every_worker(stack, server, "watch", workers=2)))
        transports = [
            Transport(server.url(), None, Spool(tmp_path / f"spool{i}"), FAST) for i in range(4)
        ]
        for step in range(60):
            for i, transport in enumerate(transports):
                transport.submit(SnapshotMessage(**make_snapshot(f"load{i}", step)))
        deadline = time.monotonic() + 60
        while sum(t.delivered for t in transports) < 80:  # a third of them acknowledged
            assert time.monotonic() < deadline, "the probes are not delivering"
            threading.Event().wait(0.005)  # poll interval
        os.kill(victim, signal.SIGKILL)
        reports = [t.close(timeout=60) for t in transports]
        assert [r.spooled for r in reports] == [0, 0, 0, 0]
        assert [r.rejected for r in reports] == [0, 0, 0, 0]
        for i in range(4):
            stored = httpx.get(server.url(f"/api/runs/load{i}/snapshots"), timeout=30).json()
            assert [s["step"] for s in stored] == list(range(60)), i
        assert sum(t.delivered for t in transports) >= 240  # acks, resends acked again
