"""The probe under torch.distributed (DDP on CPU, gloo): what ``torchrun`` runs.

Two processes train the same MLP wrapped in ``DistributedDataParallel``, each on its own
local batches, with a :class:`Probe` built on every rank (as a script run by ``torchrun``
does) and streaming to a real server. Only rank 0 measures: its snapshots are those of
its *local* batch (the loss of that batch and the GGN of that loss, before the gradient
all-reduce), and rank 1 opens no connection and writes no spool. In the same processes
the same run is trained without a probe: the gradients (after the all-reduce) are bit for
bit equal on every rank and step.
"""

from __future__ import annotations

import copy
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from curvscope.probe import Probe, TransportOptions, ViViTConfig, compute_snapshot
from tests.helpers.server_process import free_port, running_server

WORLD = 2
STEPS = 5
EVERY = 2
BACKENDS = ["backpack", "func"]


def _batch(rank: int, step: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 * rank + step)
    x = torch.randn(n, 6, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, 3, (n,), generator=gen)


def _worker(rank: int, init: str, url: str, out: str) -> None:
    """One rank: the plain run and a probed run per backend, side by side, in lockstep.

    Results go to ``out/rank{r}.json``.
    """
    server_port = int(url.rsplit(":", 1)[1])
    connections: list[Any] = []
    connect = socket.socket.connect

    def spy(sock: socket.socket, address: Any) -> Any:  # every Python-level connect
        connections.append(address)
        return connect(sock, address)

    socket.socket.connect = spy  # type: ignore[method-assign]
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
        loss_fn = nn.CrossEntropyLoss()
        runs = ["plain", *BACKENDS]
        models = {run: DistributedDataParallel(copy.deepcopy(net)) for run in runs}
        opts = {
            run: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for run, m in models.items()
        }
        spool = Path(out) / f"spool{rank}"
        probes = {
            backend: Probe(
                models[backend],  # the DDP wrapper, as a script would pass it
                loss_fn,
                f"ddp-{backend}",
                url=url,
                every=EVERY,
                config=ViViTConfig(backend=backend),
                spool_dir=spool / backend,
                transport_options=TransportOptions(connect_timeout=2.0, ack_timeout=5.0),
            )
            for backend in BACKENDS
        }
        mismatched: dict[str, list[int]] = {backend: [] for backend in BACKENDS}
        losses: list[float] = []
        references: dict[int, dict[str, Any]] = {}
        for step in range(STEPS):
            x, y = _batch(rank, step)
            if step % EVERY == 0:  # the same parameters in every run
                local = copy.deepcopy(models["plain"].module)
                ref = compute_snapshot(local, loss_fn, x, y, ViViTConfig())
                references[step] = {"loss": ref.loss, "eigvals": ref.groups[0].eigvals.tolist()}
            grads = {}
            for run in runs:
                opts[run].zero_grad()
                loss = loss_fn(models[run](x), y)
                if run == "plain":
                    losses.append(loss.item())
                    loss.backward()
                else:
                    with probes[run](step):
                        loss.backward()
                grads[run] = [p.grad.clone() for p in models[run].parameters()]
                opts[run].step()
            for backend in BACKENDS:
                pairs = zip(grads[backend], grads["plain"], strict=True)
                if not all(torch.equal(a, b) for a, b in pairs):
                    mismatched[backend].append(step)
        reports = {backend: probe.close() for backend, probe in probes.items()}
        sender = [t.name for t in threading.enumerate() if t.name.startswith("curvscope")]
        result = {
            "active": [probe.active for probe in probes.values()],
            "mismatched": mismatched,
            "losses": losses,
            "references": references,
            "delivered": {backend: report.delivered for backend, report in reports.items()},
            "server_connections": sum(
                1 for a in connections if isinstance(a, tuple) and a[1] == server_port
            ),
            "spool_files": sorted(str(p) for p in spool.rglob("*")) if spool.exists() else [],
            "threads": sender,
            "hooks": any(m._forward_pre_hooks for run in runs for m in models[run].modules()),
        }
        dist.barrier()
    finally:
        dist.destroy_process_group()
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(result))


def _spawn(url: str, out: Path, timeout: float = 120.0) -> list[dict[str, Any]]:
    """Run the workers; a hang (a collective that never completes) fails, not blocks."""
    init = f"tcp://127.0.0.1:{free_port()}"
    context = mp.spawn(_worker, args=(init, url, str(out)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for proc in context.processes:
                proc.kill()
            pytest.fail(f"the DDP workers did not finish in {timeout} s (a deadlock?)")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


def test_ddp_rank0_streams_its_local_batch_and_gradients_are_untouched(tmp_path: Path) -> None:
    with running_server(tmp_path / "db.sqlite") as server:
        rank0, rank1 = _spawn(server.url(), tmp_path)
        runs = httpx.get(server.url("/api/runs"), timeout=10).json()
        stored = {
            backend: (
                httpx.get(server.url(f"/api/runs/ddp-{backend}/snapshots"), timeout=10).json(),
                httpx.get(server.url(f"/api/runs/ddp-{backend}/events"), timeout=10).json(),
            )
            for backend in BACKENDS
        }
    for rank in (rank0, rank1):  # gradients after the all-reduce: those of the plain run
        assert rank["mismatched"] == {backend: [] for backend in BACKENDS}
    assert rank0["active"] == [True, True] and rank1["active"] == [False, False]
    # rank 1: no connection, no spool, no sender thread, no hooks
    assert rank1["server_connections"] == 0 and rank0["server_connections"] >= 1
    assert rank1["spool_files"] == [] and rank1["threads"] == [] and rank1["hooks"] is False
    assert rank1["delivered"] == {backend: 0 for backend in BACKENDS}
    assert sorted(r["run"] for r in runs) == [f"ddp-{backend}" for backend in BACKENDS]
    for backend, (snaps, events) in stored.items():
        assert [e for e in events if e["level"] != "info"] == []
        # rank 0's local batches, once each
        assert [s["step"] for s in snaps] == list(range(0, STEPS, EVERY))
        assert rank0["delivered"][backend] == len(snaps)
        for snap in snaps:
            step = snap["step"]
            ref = rank0["references"][str(step)]
            assert snap["loss"] == rank0["losses"][step] != rank1["losses"][step]
            assert snap["loss"] == pytest.approx(ref["loss"], rel=1e-12)
            assert snap["batch_size"] == 8 and snap["config"]["backend"] == backend
            eigvals = snap["groups"][0]["eigvals"]
            assert eigvals == pytest.approx(ref["eigvals"], rel=1e-8, abs=1e-12)
