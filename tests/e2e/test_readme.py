"""The README's probe snippet runs as written (against a real server), so it cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import torch
from torch import nn

from tests.helpers.server_process import running_server

README = Path(__file__).resolve().parents[2] / "README.md"


def _snippet(name: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- snippet: {name}\b.*?-->\s*```python\n(.*?)```", text, re.S)
    assert match, f"README has no snippet {name!r}"
    return match.group(1)


def test_probe_loop_snippet_runs_against_a_server(tmp_path: Path) -> None:
    code = _snippet("probe-loop")
    assert 'url="http://127.0.0.1:8000"' in code
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    data = [(torch.randn(32, 6), torch.randint(0, 3, (32,))) for _ in range(25)]
    namespace = {
        "model": model,
        "loss_fn": nn.CrossEntropyLoss(),
        "loader": data,
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
    }
    with running_server(tmp_path / "db.sqlite") as server:
        exec(code.replace("http://127.0.0.1:8000", server.url()), namespace)
        snaps = httpx.get(server.url("/api/runs/my-run/snapshots")).json()
    assert [s["step"] for s in snaps] == [0, 10, 20]
    assert all(s["config"]["subsample"] == list(range(16)) for s in snaps)


def _loop_namespace(batches: int) -> dict[str, object]:
    """What the README's loop snippets assume: model, loss_fn, loader, optimizer, torch."""
    from curvscope.probe import Probe

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    gen = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen))
        for _ in range(batches)
    ]
    return {
        "torch": torch,
        "Probe": Probe,
        "model": model,
        "loss_fn": nn.CrossEntropyLoss(),
        "loader": data,
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
    }


def _run_snippet(name: str, run: str, batches: int, tmp_path: Path) -> tuple[list, list]:
    code = _snippet(name)
    assert 'url="http://127.0.0.1:8000"' in code
    namespace = _loop_namespace(batches)
    with running_server(tmp_path / "db.sqlite") as server:
        exec(code.replace("http://127.0.0.1:8000", server.url()), namespace)
        snaps = httpx.get(server.url(f"/api/runs/{run}/snapshots")).json()
        events = httpx.get(server.url(f"/api/runs/{run}/events")).json()
    return snaps, events


def test_epoch_snippet_stores_every_scheduled_step(tmp_path: Path) -> None:
    snaps, events = _run_snippet("loop-epochs", "epochs", 12, tmp_path)
    assert [s["step"] for s in snaps] == [0, 10, 20, 30]  # 36 steps in 3 epochs of 12
    assert [s["user_step"] for s in snaps] == [None, None, 8, 6]  # None: the same
    assert [e["level"] for e in events] == ["warning"]


def test_accumulation_snippet_measures_each_scheduled_optimizer_step_once(
    tmp_path: Path,
) -> None:
    snaps, events = _run_snippet("loop-accumulation", "accumulation", 48, tmp_path)
    assert [s["step"] for s in snaps] == [0, 5, 10]  # 12 optimizer steps of 4 micro-batches
    assert all(s["batch_size"] == 16 for s in snaps)
    assert [e["level"] for e in events] == ["info"]
    assert "0.25 × the loss" in events[0]["message"]


def test_amp_snippet_streams_float32_snapshots(tmp_path: Path) -> None:
    snaps, events = _run_snippet("loop-amp", "amp", 21, tmp_path)
    assert [s["step"] for s in snaps] == [0, 10, 20]
    assert all(s["groups"][0]["eigvals"] for s in snaps)
    messages = " ".join(e["message"] for e in events)
    assert "measured again in float32" in messages
    assert all(e["level"] == "info" for e in events)


def _run_script(code: str, run: str, tmp_path: Path, monkeypatch) -> tuple[list, list]:
    """Execute a self-contained snippet (in ``tmp_path``) against a real server."""
    monkeypatch.chdir(tmp_path)
    with running_server(tmp_path / "db.sqlite") as server:
        exec(code.replace("http://127.0.0.1:8000", server.url()), {"__name__": "__main__"})
        snaps = httpx.get(server.url(f"/api/runs/{run}/snapshots")).json()
        events = httpx.get(server.url(f"/api/runs/{run}/events")).json()
    return snaps, events


def test_lightning_snippet_streams_from_trainer_fit(tmp_path: Path, monkeypatch) -> None:
    code = _snippet("lightning")
    snaps, events = _run_script(code, "lightning-mlp", tmp_path, monkeypatch)
    assert [s["step"] for s in snaps] == [0, 5, 10, 15]  # trainer.global_step, max_steps=20
    assert all(s["config"]["subsample"] == list(range(16)) for s in snaps)
    assert [e for e in events if e["level"] == "error"] == []


def test_huggingface_snippet_streams_from_trainer_train(tmp_path: Path, monkeypatch) -> None:
    code = _snippet("huggingface-gpt2")
    snaps, events = _run_script(code, "gpt2-tiny", tmp_path, monkeypatch)
    assert [s["step"] for s in snaps] == [0, 5]  # state.global_step, max_steps=10
    assert all(s["config"]["backend"] == "func" and s["batch_size"] == 4 for s in snaps)
    assert [e for e in events if e["level"] == "error"] == []
