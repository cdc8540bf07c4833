"""The on-disk spool: one file per message, atomic, keyed by (run, step)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest

from curvscope.probe.stream.spool import Spool
from curvscope.server.protocol import EventMessage, SnapshotMessage, parse_ingest_message
from tests.helpers.messages import make_event, make_snapshot


def _snap(run: str, step: int) -> SnapshotMessage:
    message = parse_ingest_message(make_snapshot(run, step))
    assert isinstance(message, SnapshotMessage)
    return message


def test_roundtrip_and_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for step in (10, 2, 33):
        spool.write(_snap("run-a", step))
    event = parse_ingest_message(make_event("run-a"))
    spool.write(event)
    files = spool.pending()
    assert len(spool) == 4
    messages = [spool.read(p) for p in files]
    assert isinstance(messages[0], EventMessage) and messages[0] == event
    assert [m.step for m in messages[1:]] == [2, 10, 33]
    assert messages[1] == _snap("run-a", 2).model_copy(update={"wall_time": messages[1].wall_time})
    for path in files:
        spool.remove(path)
    assert spool.pending() == []


def test_same_key_is_one_file_events_are_not(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first, second = _snap("r", 5), _snap("r", 5).model_copy(update={"loss": 9.0})
    spool.write(first)
    spool.write(second)
    event = parse_ingest_message(make_event("r"))
    spool.write(event)
    spool.write(event)
    assert len(spool) == 3
    snapshots = [spool.read(p) for p in spool.pending() if p.name.startswith("snapshot")]
    assert [s.loss for s in snapshots] == [9.0]


def test_no_temporary_files_remain_and_content_is_json(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    path = spool.write(_snap("r", 1))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert json.loads(path.read_text())["step"] == 1


def test_unreadable_file_is_set_aside(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    (tmp_path / "snapshot-r-1.json").write_text('{"type": "snapshot", "run": "r"')
    (tmp_path / ".tmp-partial.json").write_text("{")  # an interrupted write: ignored
    [path] = spool.pending()
    assert spool.read(path) is None
    assert spool.pending() == []
    assert (tmp_path / "rejected" / "snapshot-r-1.json").exists()


def test_temporary_directory_is_created_lazily_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spool = Spool()
    assert spool.directory is None and spool.pending() == []
    with caplog.at_level(logging.WARNING, logger="curvscope.probe.stream.spool"):
        path = spool.write(_snap("r", 0))
    assert spool.directory is not None and path.parent == spool.directory
    assert str(spool.directory) in caplog.text
    spool.remove(path)
    spool.directory.rmdir()


def test_concurrent_writers(tmp_path: Path) -> None:
    spool = Spool(tmp_path)

    def write(offset: int) -> None:
        for step in range(offset, 200, 4):
            spool.write(_snap("r", step))
            spool.write(parse_ingest_message(make_event("r")))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    names = [p.name for p in spool.pending()]
    assert sum(n.startswith("snapshot") for n in names) == 200
    assert sum(n.startswith("event") for n in names) == 200
