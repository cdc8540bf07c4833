"""The snippets of docs/integrations.md run as written against a real server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.helpers.server_process import running_server

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrations.md"


def _snippet(name: str) -> str:
    match = re.search(rf"<!-- snippet: {name} -->\s*```python\n(.*?)```", DOC.read_text(), re.S)
    assert match, f"docs/integrations.md has no snippet {name!r}"
    return match.group(1)


def _stored(server, run: str) -> tuple[list, list]:
    snaps = httpx.get(server.url(f"/api/runs/{run}/snapshots"), timeout=10).json()
    events = httpx.get(server.url(f"/api/runs/{run}/events"), timeout=10).json()
    return snaps, events


def test_lightning_accumulation_and_bf16_snippet(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code = _snippet("lightning-accumulate-bf16")
    with running_server(tmp_path / "db.sqlite") as server:
        exec(code.replace("http://127.0.0.1:8000", server.url()), {"__name__": "__main__"})
        snaps, events = _stored(server, "lightning-bf16")
    assert [s["step"] for s in snaps] == [0, 2, 4]
    assert [e for e in events if e["level"] == "error"] == []
    messages = " ".join(e["message"] for e in events)
    assert "measured again in float32" in messages


def test_torchrun_snippet_streams_from_rank_0_only(tmp_path: Path) -> None:
    script = tmp_path / "train_ddp.py"
    with running_server(tmp_path / "db.sqlite") as server:
        script.write_text(_snippet("torchrun").replace("http://127.0.0.1:8000", server.url()))
        done = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(script)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        snaps, events = _stored(server, "ddp-mlp")
        runs = [r["run"] for r in httpx.get(server.url("/api/runs"), timeout=10).json()]
    assert [s["step"] for s in snaps] == [0, 5, 10, 15]
    assert runs == ["ddp-mlp"]  # rank 1 sent nothing (not even under another name)
    assert [e for e in events if e["level"] == "error"] == []
