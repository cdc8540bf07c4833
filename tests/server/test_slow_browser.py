"""A real server with a browser that never reads: ingest and other browsers are not delayed."""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
from pathlib import Path

import httpx
from websockets.sync.client import connect

from tests.helpers.messages import make_group, make_snapshot
from tests.helpers.server_process import running_server

TOTAL = 80
K = 1000  # ~100 kB per snapshot, 12 MB in all: more than the stalled client's socket absorbs


def random_group(seed: int) -> dict:
    """A group of random numbers (incompressible: permessage-deflate cannot shrink it)."""
    rng = random.Random(seed)
    group = make_group(k=K)
    for field in ("eigvals", "gamma", "snr_gamma", "snr_lambda", "grad_overlap"):
        group[field] = [rng.random() for _ in range(K)]
    return group


def stalled_socket(port: int) -> socket.socket:
    """A connected socket with a tiny receive buffer (no autotuning to tens of MB)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


def test_stalled_browser_neither_blocks_ingest_nor_other_browsers(tmp_path: Path) -> None:
    env = dict(os.environ, CURVSCOPE_CLIENT_QUEUE_SIZE="4", CURVSCOPE_CLIENT_MAX_SKIPPED="8")
    with running_server(tmp_path / "db.sqlite", env=env) as server:
        url = server.ws_url("/ws/runs/big")
        # The stalled browser: after the first message its library stops reading the socket
        # (max_queue=1), and its tiny receive buffer fills at once. No compression, so the
        # bytes on the wire are as large as the messages.
        sock = stalled_socket(server.port)
        with (
            connect(url, sock=sock, max_queue=1, compression=None) as stalled,
            connect(url, compression=None) as fast,
            connect(server.ws_url("/ws/ingest"), compression=None) as probe,
        ):
            assert json.loads(stalled.recv(timeout=10))["type"] == "subscribed"
            assert json.loads(fast.recv(timeout=10))["type"] == "subscribed"
            steps: list[int] = []
            done = threading.Event()

            def read_fast() -> None:
                while len(steps) < TOTAL:
                    steps.append(json.loads(fast.recv(timeout=30))["snapshot"]["step"])
                done.set()

            threading.Thread(target=read_fast, daemon=True).start()
            for step in range(TOTAL):
                probe.send(
                    json.dumps(make_snapshot("big", step) | {"groups": [random_group(step)]})
                )
                assert json.loads(probe.recv(timeout=10))["type"] == "ack"
            assert done.wait(timeout=30), f"the fast browser got only {len(steps)} snapshots"
            assert steps == list(range(TOTAL))

            # The stalled browser was let go of (its queue overflowed); the server is healthy.
            deadline = time.monotonic() + 10
            health = httpx.get(server.url("/api/health")).json()
            while health["dropped_clients"] < 1 and time.monotonic() < deadline:
                health = httpx.get(server.url("/api/health")).json()
            assert health["dropped_clients"] == 1, health
            stalled.close_socket()  # no closing handshake with a peer that does not read
