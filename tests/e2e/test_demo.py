"""End to end: ``curvscope demo`` trains on the digits and streams into a real server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from tests.helpers.server_process import TEST_TOKEN, running_server


def test_demo_streams_every_scheduled_snapshot(tmp_path: Path) -> None:
    with running_server(tmp_path / "db.sqlite", token=TEST_TOKEN) as server:
        # the command the compose "demo" service runs, with a short run and the token
        cmd = [
            sys.executable,
            "-m",
            "curvscope.server.cli",
            "demo",
            "--url",
            server.url(),
            "--no-serve",
            "--run",
            "digits-e2e",
            "--steps",
            "40",
            "--every",
            "10",
            "--token",
            TEST_TOKEN,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.splitlines()[0] == f"Dashboard: {server.url()}/"
        assert "delivered=4" in proc.stdout and "spooled=0" in proc.stdout

        runs = httpx.get(server.url("/api/runs")).json()
        run = next(r for r in runs if r["run"] == "digits-e2e")
        assert run["snapshots"] == 4
        snaps = httpx.get(server.url("/api/runs/digits-e2e/snapshots")).json()
        assert [s["step"] for s in snaps] == [0, 10, 20, 30]
        for snap in snaps:
            group = snap["groups"][0]
            assert snap["config"]["subsample"] == list(range(16))
            assert snap["config"]["mode"] == "in-loop"
            assert len(group["eigvals"]) > 0
            assert all(a >= b for a, b in zip(group["eigvals"], group["eigvals"][1:], strict=False))
            assert 0.0 <= sum(group["grad_overlap"]) <= 1.0 + 1e-6
