"""The Host check against DNS rebinding, on a real server process.

A page of ``evil.example`` whose name resolves to 127.0.0.1 makes the browser send
``Host: evil.example:PORT`` (and a matching ``Origin``): the server must answer nothing.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from pathlib import Path

import httpx
from websockets.sync.client import connect

from tests.helpers.messages import make_snapshot
from tests.helpers.server_process import running_server


def _ingest(url: str) -> dict:
    with connect(url, open_timeout=5) as ws:
        ws.send(json.dumps(make_snapshot("r", 1)))
        return json.loads(ws.recv(timeout=5))


def _handshake(port: int, host: str, origin: str) -> str:
    """The status line the server answers a websocket upgrade naming ``host`` with (a raw
    request: client libraries set the Host header themselves)."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws/ingest HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request.encode())
        return sock.recv(4096).decode(errors="replace").split("\r\n", 1)[0]


def test_a_rebound_host_name_is_refused(tmp_path: Path) -> None:
    with running_server(tmp_path / "db.sqlite") as server:
        ws_url = server.url("/ws/ingest").replace("http://", "ws://")
        assert _ingest(ws_url)["type"] == "ack"
        port = server.url("").rsplit(":", 1)[1].strip("/")
        evil = f"evil.example:{port}"
        headers = {"Host": evil, "Origin": f"http://{evil}"}
        for method, path in (
            ("DELETE", "/api/runs/r"),
            ("GET", "/api/runs"),
            ("GET", "/api/runs/r/snapshots"),
            ("GET", "/"),
        ):
            response = httpx.request(method, server.url(path), headers=headers, timeout=10)
            assert response.status_code == 400, (method, path)
            assert "r" not in response.text or "Invalid host" in response.text
        status = _handshake(int(port), evil, f"http://{evil}")
        assert status.split()[1] in ("400", "403"), status
        assert (
            _handshake(int(port), f"127.0.0.1:{port}", f"http://127.0.0.1:{port}").split()[1]
            == "101"
        )
        runs = httpx.get(server.url("/api/runs"), timeout=10).json()
        assert [r["run"] for r in runs] == ["r"]  # still there
        # loopback names work, with or without the port
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
            assert httpx.get(server.url("/api/runs"), headers={"Host": host}).status_code == 200


def test_allowed_host_admits_a_public_name(tmp_path: Path) -> None:
    args = ["--allowed-host", "curvscope.example.org"]
    with running_server(tmp_path / "db.sqlite", extra_args=args) as server:
        port = server.url("").rsplit(":", 1)[1].strip("/")
        name = f"curvscope.example.org:{port}"
        ok = httpx.get(server.url("/api/runs"), headers={"Host": name}, timeout=10)
        assert ok.status_code == 200
        other = httpx.get(server.url("/api/runs"), headers={"Host": f"x.org:{port}"})
        assert other.status_code == 400
        assert _handshake(int(port), name, f"http://{name}").split()[1] == "101"
        assert _handshake(int(port), f"x.org:{port}", f"http://x.org:{port}").split()[1] == "400"
