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
