"""The background sender against the real server: acks, refusals, close while stuck."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

from curvscope.probe.stream.spool import Spool
from curvscope.probe.stream.transport import (
    Outcome,
    ServerRefused,
    Transport,
    TransportOptions,
    deliver,
    ingest_url,
    open_ingest,
)
from curvscope.server.protocol import SnapshotMessage, parse_ingest_message
from tests.helpers.messages import make_event, make_snapshot
from tests.helpers.server_process import running_server

TOKEN = "transport-test-token"
FAST = TransportOptions(queue_size=8, connect_timeout=1.0, ack_timeout=2.0, backoff_max=0.2)


def _snap(run: str, step: int, **overrides: object) -> SnapshotMessage:
    message = parse_ingest_message(make_snapshot(run, step, **overrides))
    assert isinstance(message, SnapshotMessage)
    return message


def _stored(server, run: str) -> list[int]:
    response = httpx.get(server.url(f"/api/runs/{run}/snapshots"), timeout=10)
    return [] if response.status_code == 404 else [s["step"] for s in response.json()]


def test_ingest_url() -> None:
    assert ingest_url("http://h:1") == "ws://h:1/ws/ingest"
    assert ingest_url("ws://h:1/ws/ingest") == "ws://h:1/ws/ingest"
    with pytest.raises(ValueError):
        ingest_url("ftp://h")


def test_delivers_snapshots_and_events_with_a_token(tmp_path: Path) -> None:
    with running_server(tmp_path / "db.sqlite", token=TOKEN) as server:
        spool = Spool(tmp_path / "spool")
        transport = Transport(server.url(), TOKEN, spool, FAST)
        for step in range(20):
            transport.submit(_snap("tok", step))
        transport.submit(parse_ingest_message(make_event("tok", "hello", step=3)))
        report = transport.close(timeout=30)
        assert (report.delivered, report.rejected, report.spooled) == (21, 0, 0)
        assert _stored(server, "tok") == list(range(20))
        events = httpx.get(server.url("/api/runs/tok/events"), timeout=10).json()
        assert [(e["step"], e["message"]) for e in events] == [(3, "hello")]


def test_duplicates_are_acknowledged_and_stored_once(tmp_path: Path) -> None:
    with running_server(tmp_path / "db.sqlite") as server:
        with open_ingest(server.url(), None) as ws:
            first = _snap("dup", 1)
            assert deliver(ws, first, 5.0) is Outcome.ACKED
            assert deliver(ws, first, 5.0) is Outcome.ACKED  # a resend
            assert deliver(ws, _snap("dup", 1, loss=7.0), 5.0) is Outcome.CONFLICT
            assert deliver(ws, _snap("dup", 2), 5.0) is Outcome.ACKED
        assert _stored(server, "dup") == [1, 2]


def test_wrong_token_keeps_everything_spooled(tmp_path: Path) -> None:
    with running_server(tmp_path / "db.sqlite", token=TOKEN) as server:
        with open_ingest(server.url(), "wrong") as ws, pytest.raises(ServerRefused):
            deliver(ws, _snap("r", 0), 5.0)
        spool = Spool(tmp_path / "spool")
        transport = Transport(server.url(), "wrong", spool, FAST)
        for step in range(3):
            transport.submit(_snap("r", step))
        report = transport.close(timeout=10)
        assert (report.delivered, report.spooled) == (0, 3)
        assert _stored(server, "r") == []


def test_a_refused_message_is_set_aside_and_the_rest_delivered(tmp_path: Path) -> None:
    big = TransportOptions(queue_size=8, connect_timeout=1.0, ack_timeout=5.0)
    with running_server(tmp_path / "db.sqlite", extra_args=("--max-message-bytes", "2000")) as s:
        spool = Spool(tmp_path / "spool")
        transport = Transport(s.url(), None, spool, big)
        transport.submit(_snap("ref", 0))
        huge = make_snapshot("ref", 1)
        huge["groups"][0]["name"] = "x" * 250
        transport.submit(parse_ingest_message(huge | {"groups": huge["groups"] * 20}))
        transport.submit(_snap("ref", 2))
        report = transport.close(timeout=30)
        assert (report.delivered, report.rejected, report.spooled) == (2, 1, 0)
        assert _stored(s, "ref") == [0, 2]
        assert [p.name for p in (tmp_path / "spool" / "rejected").iterdir()] == [
            "snapshot-ref-0000000000000000001.json"
        ]


def test_submit_never_blocks_and_close_gives_up_on_a_stuck_server(tmp_path: Path) -> None:
    options = TransportOptions(queue_size=4, connect_timeout=1.0, ack_timeout=60.0)
    with running_server(tmp_path / "db.sqlite") as server:
        assert server.proc is not None
        spool = Spool(tmp_path / "spool")
        transport = Transport(server.url(), None, spool, options)
        transport.submit(_snap("stuck", 0))
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            done = threading.Event()

            def produce() -> None:
                for step in range(1, 30):
                    transport.submit(_snap("stuck", step))
                done.set()

            threading.Thread(target=produce).start()
            assert done.wait(30), "submit blocked while the server was stopped"
            report = transport.close(timeout=0.5)  # far below the 60 s ack timeout
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        # Nothing lost: what was not acknowledged is on disk.
        spooled = {m.step for m in (spool.read(p) for p in spool.pending()) if m is not None}
        stored = set(_stored(server, "stuck"))
        assert spooled | stored == set(range(30))
        assert report.spooled == len(spool.pending()) >= 25


def test_a_malformed_answer_keeps_the_message_for_a_resend(tmp_path: Path) -> None:
    # A peer that answers every message with valid JSON that is not an object: the sender
    # must count the delivery as failed and keep the message, not drop it.
    def answer_with_a_list(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            for _ in ws:
                ws.send("[]")

    with serve(answer_with_a_list, "127.0.0.1", 0) as peer:
        threading.Thread(target=peer.serve_forever, daemon=True).start()
        host, port = peer.socket.getsockname()[:2]
        spool = Spool(tmp_path / "spool")
        transport = Transport(f"http://{host}:{port}", None, spool, FAST)
        transport.submit(_snap("odd", 0))
        report = transport.close(timeout=1.0)
        peer.shutdown()
    assert (report.delivered, report.rejected, report.spooled) == (0, 0, 1)
    assert [m.step for m in map(spool.read, spool.pending()) if m is not None] == [0]
