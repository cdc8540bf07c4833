"""The real ``curvscope serve`` process: SIGKILL loses nothing it acknowledged."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from websockets.sync.client import connect

from tests.helpers.messages import make_snapshot
from tests.helpers.server_process import running_server

TOKEN = "kill-restart-token"


def _stored_steps(server, run: str) -> set[int]:
    response = httpx.get(server.url(f"/api/runs/{run}/snapshots"), timeout=10)
    if response.status_code == 404:
        return set()
    response.raise_for_status()
    return {s["step"] for s in response.json()}


def test_sigkill_loses_no_acknowledged_snapshot(tmp_path: Path) -> None:
    total = 60
    db = tmp_path / "db.sqlite"
    with running_server(db, token=TOKEN, extra_args=("--log-level", "info")) as server:
        acked: set[int] = set()
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with connect(server.ws_url("/ws/ingest"), additional_headers=headers) as ws:
            for step in range(total):  # pipelined: the acks trail the sends
                ws.send(json.dumps(make_snapshot("killed", step)))
            while len(acked) < total // 2:
                reply = json.loads(ws.recv(timeout=10))
                assert reply["type"] == "ack", reply
                acked.add(reply["step"])
            server.kill()  # SIGKILL with messages in flight
        assert server.proc is not None and server.proc.returncode == -9

        server.restart()
        stored = _stored_steps(server, "killed")
        assert acked <= stored, f"acknowledged but lost: {sorted(acked - stored)}"

        # Resending everything stores each step once; the acked ones are duplicates.
        with connect(server.ws_url(f"/ws/ingest?token={TOKEN}")) as ws:
            for step in range(total):
                ws.send(json.dumps(make_snapshot("killed", step)))
            replies = [json.loads(ws.recv(timeout=10)) for _ in range(total)]
        assert all(r["type"] == "ack" for r in replies)
        assert {r["step"] for r in replies if r["duplicate"]} >= acked
        assert _stored_steps(server, "killed") == set(range(total))
        runs = httpx.get(server.url("/api/runs"), timeout=10).json()
        assert [(r["run"], r["snapshots"]) for r in runs] == [("killed", total)]
    assert TOKEN not in server.log(), "the token leaked into the server log"
