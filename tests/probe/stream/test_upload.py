"""Offline mode then ``curvscope upload DIR``: the real CLI against the real server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import torch
from torch import nn

from curvscope.probe import Probe
from curvscope.probe.stream.spool import Spool
from tests.helpers.server_process import running_server

TOKEN = "upload-token"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env_token = {"CURVSCOPE_TOKEN": TOKEN}
    return subprocess.run(
        [sys.executable, "-m", "curvscope.server.cli", "upload", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env_token},
    )


def _offline_run(spool_dir: Path, steps: int = 7) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    probe = Probe(
        model, nn.CrossEntropyLoss(), run="offline", url=None, every=3, spool_dir=spool_dir
    )
    for step in range(steps):
        x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
        loss = probe.loss_fn(model(x), y)
        with probe(step):
            loss.backward()
    assert probe.close().spooled == 3


def test_upload_sends_each_snapshot_once(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    _offline_run(spool_dir)
    with running_server(tmp_path / "db.sqlite", token=TOKEN) as server:
        first = _cli(str(spool_dir), "--url", server.url(), "--keep")
        assert first.returncode == 0, first.stderr
        assert "3 delivered" in first.stdout and len(Spool(spool_dir)) == 3
        again = _cli(str(spool_dir), "--url", server.url())  # duplicates: acked, stored once
        assert again.returncode == 0, again.stderr
        assert len(Spool(spool_dir)) == 0
        snaps = httpx.get(server.url("/api/runs/offline/snapshots"), timeout=10).json()
        assert [s["step"] for s in snaps] == [0, 3, 6]
        nothing = _cli(str(spool_dir), "--url", server.url())
        assert nothing.returncode == 0 and "0 delivered" in nothing.stdout


def test_upload_reports_an_unreachable_server(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    _offline_run(spool_dir)
    result = _cli(str(spool_dir), "--url", "http://127.0.0.1:9", "--timeout", "2")
    assert result.returncode == 1 and "3 left" in result.stdout
    assert len(Spool(spool_dir)) == 3


def test_upload_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from curvscope.server.cli import main\n"
        "try:\n"
        "    main(['upload', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "--url" in result.stdout
