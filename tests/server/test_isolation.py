"""Ingest isolation on a real server: reads never hold up acks, large frames are parsed off
the event loop, probe connections are capped."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from curvscope.server.protocol import CLOSE_TRY_AGAIN_LATER
from tests.helpers.messages import make_group, make_snapshot
from tests.helpers.server_process import ServerProcess, running_server


def _send(server: ServerProcess, message: dict) -> dict:
    with connect(server.ws_url("/ws/ingest"), open_timeout=10, max_size=None) as ws:
        ws.send(json.dumps(message))
        return json.loads(ws.recv(timeout=60))


def test_acks_do_not_wait_behind_dashboard_reads(tmp_path: Path) -> None:
    """Eight figure requests (32 groups each) occupy the read threads; a probe's snapshot
    sent meanwhile is acknowledged before most of them finish (was: its write queued behind
    them in the one shared thread pool of 6 threads)."""
    heavy = make_snapshot("big", 0, groups=[make_group(f"g{i}", k=100) for i in range(32)])
    env = {"CURVSCOPE_READ_THREADS": "2"}
    with running_server(tmp_path / "db.sqlite", env=env) as server:
        assert _send(server, heavy)["type"] == "ack"
        done = 0
        lock = threading.Lock()
        started = threading.Barrier(9)

        def read() -> None:
            nonlocal done
            started.wait()
            url = server.url("/api/runs/big/figures/step")
            assert httpx.get(url, timeout=300).status_code == 200
            with lock:
                done += 1

        with ThreadPoolExecutor(8) as pool:
            reads = [pool.submit(read) for _ in range(8)]
            started.wait()
            ack = _send(server, make_snapshot("probe", 1))
            with lock:
                finished_at_ack = done
            for future in reads:
                future.result()
    assert ack["type"] == "ack"
    assert finished_at_ack < 4, finished_at_ack


def test_large_frames_do_not_hold_up_other_probes(tmp_path: Path) -> None:
    """Three valid ~3.5 MiB snapshots are parsed off the event loop: a small snapshot sent
    just after them on another connection is acknowledged before the last of them (was:
    parsed on the loop one after the other, the small one waited for all three)."""
    bigs = [
        json.dumps(
            make_snapshot(f"big{i}", 0, groups=[make_group(f"g{j}", k=2000) for j in range(50)])
        )
        for i in range(3)
    ]
    assert all(3_000_000 < len(text) < 4 * 1024 * 1024 for text in bigs)
    with running_server(tmp_path / "db.sqlite") as server:
        order: list[str] = []
        lock = threading.Lock()
        url = server.ws_url("/ws/ingest")
        with (
            connect(url, max_size=None) as a,
            connect(url, max_size=None) as b,
            connect(url, max_size=None) as c,
            connect(url) as quick,
        ):
            big_sockets = (a, b, c)
            for ws, text in zip(big_sockets, bigs, strict=True):
                ws.send(text)
            quick.send(json.dumps(make_snapshot("small", 0)))

            def wait(ws, name: str) -> None:
                assert json.loads(ws.recv(timeout=120))["type"] == "ack"
                with lock:
                    order.append(name)

            waiters = [threading.Thread(target=wait, args=(ws, "big")) for ws in big_sockets]
            waiters.append(threading.Thread(target=wait, args=(quick, "small")))
            for t in waiters:
                t.start()
            for t in waiters:
                t.join(timeout=180)
    assert sorted(order) == ["big", "big", "big", "small"]
    assert order[-1] == "big", order


def test_probe_connections_are_capped(tmp_path: Path) -> None:
    env = {"CURVSCOPE_MAX_INGEST_CONNECTIONS": "2"}
    with running_server(tmp_path / "db.sqlite", env=env) as server:
        url = server.ws_url("/ws/ingest")
        with connect(url) as first, connect(url) as second:
            for i, ws in enumerate((first, second)):
                ws.send(json.dumps(make_snapshot("r", i)))
                assert json.loads(ws.recv(timeout=10))["type"] == "ack"
            with connect(url) as third:
                error = json.loads(third.recv(timeout=10))
                assert error["code"] == "too_many_connections"
                with pytest.raises(ConnectionClosed) as closed:
                    third.recv(timeout=10)
                assert closed.value.rcvd.code == CLOSE_TRY_AGAIN_LATER
        # once they are gone, a new probe gets in
        assert _send(server, make_snapshot("r", 5))["type"] == "ack"
