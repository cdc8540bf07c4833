"""CurvscopeCallback in real Lightning training runs (CPU), streaming to a real server.

Each stored snapshot is checked against :func:`compute_snapshot` on the batch and the
parameters of its step (recorded by the LightningModule itself), and the training against
the same run without the callback.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import httpx
import lightning.pytorch as L
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from curvscope.probe import Snapshot, TransportOptions, ViViTConfig, compute_snapshot
from curvscope.probe.lightning import CurvscopeCallback
from curvscope.probe.stream.spool import Spool
from curvscope.server.protocol import SnapshotMessage
from tests.helpers.server_process import ServerProcess, running_server

FAST = {"transport_options": TransportOptions(connect_timeout=2.0, ack_timeout=5.0)}


class Classifier(L.LightningModule):
    """An MLP classifier; ``via_self=False`` calls ``self.net(x)`` instead of ``self(x)``.

    ``record`` maps ``(global_step, batch_idx)`` of the batches it should keep to ``None``;
    ``training_step`` fills in a copy of the network and the batch.
    """

    def __init__(self, via_self: bool = True, record: dict[Any, Any] | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
        self.loss_fn = nn.CrossEntropyLoss()
        self.via_self = via_self
        self.record = record if record is not None else {}

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        key = (self.trainer.global_step, batch_idx)
        if key in self.record:
            self.record[key] = (copy.deepcopy(self.net), x.clone(), y.clone())
        out = self(x) if self.via_self else self.net(x)
        return self.loss_fn(out, y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.2, momentum=0.9)


def _loader(batches: int, n: int = 8) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batches * n, 5, generator=gen)
    y = torch.randint(0, 3, (batches * n,), generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=n)


def _fit(module: L.LightningModule, steps: int, callbacks: list[Any], **kwargs: Any) -> None:
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        **kwargs,
    )
    trainer.fit(module, _loader(2 * steps))


def _stored(server: ServerProcess, run: str) -> list[dict[str, Any]]:
    response = httpx.get(server.url(f"/api/runs/{run}/snapshots"), timeout=10)
    response.raise_for_status()
    return response.json()


def _events(server: ServerProcess, run: str) -> list[dict[str, Any]]:
    response = httpx.get(server.url(f"/api/runs/{run}/events"), timeout=10)
    response.raise_for_status()
    return response.json()


def _assert_matches(stored: dict[str, Any], expected: Snapshot, rtol: float) -> None:
    assert stored["loss"] == pytest.approx(expected.loss, rel=rtol)
    (group,) = stored["groups"]
    (ref,) = expected.groups
    eigvals = torch.tensor(group["eigvals"], dtype=torch.float64)
    assert eigvals.shape == ref.eigvals.shape
    assert torch.allclose(eigvals, ref.eigvals.double(), rtol=rtol, atol=rtol * 1e-3)
    assert group["grad_norm_sq"] == pytest.approx(ref.grad_norm_sq, rel=rtol)
    gamma = torch.tensor(group["gamma"], dtype=torch.float64).abs()
    assert torch.allclose(gamma, ref.gamma.double().abs(), rtol=rtol, atol=rtol * 1e-3)


def test_callback_streams_the_snapshots_of_the_training_steps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """every=2 over 6 optimizer steps: steps 0, 2, 4, each that of its own batch and
    parameters; the training is bit for bit that of a run without the callback; the run's
    link is logged once."""
    record: dict[Any, Any] = {(step, step): None for step in (0, 2, 4)}
    probed = Classifier(record=record)
    plain = Classifier()
    config = ViViTConfig(top_k=5)
    with running_server(tmp_path / "db.sqlite") as server:
        callback = CurvscopeCallback(
            "loss_fn", "lit", url=server.url(), every=2, config=config, probe_kwargs=FAST
        )
        with caplog.at_level(logging.INFO):
            _fit(probed, 6, [callback])
        snaps = _stored(server, "lit")
        events = _events(server, "lit")
    _fit(plain, 6, [])
    assert callback.loss_fn is probed.loss_fn
    assert callback.run_url == f"{server.url()}/runs/lit"
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("curvscope:")]
    assert len(said) == 1 and said[0].endswith(f"'lit' to {callback.run_url}")
    assert [s["step"] for s in snaps] == [0, 2, 4]
    assert [e for e in events if e["level"] != "info"] == []
    for snap in snaps:
        net, x, y = record[(snap["step"], snap["step"])]
        assert snap["batch_size"] == 8 and snap["config"]["mode"] == "in-loop"
        # the trainer's optimizer (configure_optimizers), recorded without being asked
        assert snap["optimizer"] == {
            "name": "SGD",
            "lr": 0.2,
            "momentum": 0.9,
            "dampening": 0.0,
            "nesterov": False,
            "adaptive": False,
        }
        _assert_matches(snap, compute_snapshot(net, nn.CrossEntropyLoss(), x, y, config), 1e-4)
    for p, q in zip(probed.parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q)
    # closed with fit: no hooks left on the module
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in probed.net.modules())


def test_gradient_accumulation_and_bf16_mixed(tmp_path: Path) -> None:
    """accumulate_grad_batches=2 under precision="bf16-mixed": each scheduled optimizer
    step is measured once, on its first micro-batch, in float32."""
    record: dict[Any, Any] = {(step, 2 * step): None for step in (0, 2)}
    module = Classifier(via_self=False, record=record)
    config = ViViTConfig(backend="func")
    with running_server(tmp_path / "db.sqlite") as server:
        callback = CurvscopeCallback(
            module.loss_fn,
            "lit-amp",
            url=server.url(),
            every=2,
            config=config,
            model="net",
            probe_kwargs=FAST,
        )
        _fit(module, 4, [callback], accumulate_grad_batches=2, precision="bf16-mixed")
        snaps = _stored(server, "lit-amp")
        events = _events(server, "lit-amp")
    assert [s["step"] for s in snaps] == [0, 2]
    assert [e["level"] for e in events] == ["info"]  # measured again in float32: said once
    for snap in snaps:
        net, x, y = record[(snap["step"], 2 * snap["step"])]
        assert snap["config"]["backend"] == "func"
        _assert_matches(snap, compute_snapshot(net, nn.CrossEntropyLoss(), x, y, config), 1e-4)


def test_a_training_step_calling_a_submodule_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``self.net(x)`` in training_step with the LightningModule hooked: the callback
    names the module's children (``model="net"``) instead of failing silently."""
    callback = CurvscopeCallback(
        "loss_fn", "lit-sub", url=None, every=1, probe_kwargs={"spool_dir": tmp_path}
    )
    with caplog.at_level(logging.WARNING, logger="curvscope.probe"):
        _fit(Classifier(via_self=False), 2, [callback])
    said = [r.getMessage() for r in caplog.records if "CurvscopeCallback" in r.getMessage()]
    assert len(said) == 1 and "model='<attribute>'" in said[0] and "net" in said[0]
    spool = Spool(tmp_path)
    sent = [spool.read(p) for p in spool.pending()]
    assert not any(isinstance(m, SnapshotMessage) for m in sent)
