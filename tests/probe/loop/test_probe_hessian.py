"""The Probe with ``hessian_top_k``: every ``hessian_every``-th snapshot carries the Hessian."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from curvscope.probe import Probe, ViViTConfig
from curvscope.probe.hessian import hessian_spectrum
from curvscope.probe.loop import probe as probe_module
from curvscope.probe.snapshot import Snapshot


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _batch(step: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, 3, (n,), generator=gen)


def _train(model: nn.Module, steps: int, probe: Probe | None) -> list[list[torch.Tensor]]:
    loss_fn = probe.loss_fn if probe is not None else nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    grads = []
    for step in range(steps):
        x, y = _batch(step)
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        if probe is None:
            loss.backward()
        else:
            with probe(step):
                loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
    return grads


@pytest.mark.parametrize("groups", ["all", "layer"])
def test_every_second_snapshot_carries_the_batch_hessian(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, groups: str
) -> None:
    config = ViViTConfig(
        param_groups=groups,
        hessian_top_k=3,
        hessian_slq_probes=2,
        hessian_slq_steps=4,
        hessian_every=2,
        seed=0,
    )
    plain_model = _model()
    model = copy.deepcopy(plain_model)
    loss_fn = nn.CrossEntropyLoss()
    probe = Probe(
        model,
        loss_fn,
        run="hessian",
        url=None,
        every=1,
        config=config,
        spool_dir=tmp_path,
        strict=True,
    )
    seen: dict[int, Snapshot] = {}
    expected: dict[int, list[Any]] = {}
    encode = probe_module.encode_snapshot

    def record(snapshot: Snapshot, **kwargs: Any) -> Any:
        step = kwargs["step"]
        seen[step] = snapshot
        x, y = _batch(step)  # the parameters are still those of this step's forward
        expected[step] = [
            hessian_spectrum(
                model, loss_fn, x, y, params=g.params, top_k=3, slq_probes=2, slq_steps=4, seed=0
            )
            for g in snapshot.groups
        ]
        return encode(snapshot, **kwargs)

    monkeypatch.setattr(probe_module, "encode_snapshot", record)
    grads = _train(model, 4, probe)
    probe.close()
    plain = _train(plain_model, 4, None)
    for got, want in zip(grads, plain, strict=True):
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)

    assert sorted(seen) == [0, 1, 2, 3]
    for step, snapshot in seen.items():
        for group, want in zip(snapshot.groups, expected[step], strict=True):
            if step % 2:
                assert group.hessian_eigvals is None and group.hessian_min is None
                assert group.hessian_density is None
                continue
            assert group.hessian_eigvals is not None and group.hessian_min is not None
            torch.testing.assert_close(group.hessian_eigvals, want.eigvals, rtol=1e-6, atol=0)
            assert group.hessian_min == pytest.approx(want.min_eigval, rel=1e-6)
            assert group.hessian_density is not None
            nodes, weights = group.hessian_density
            torch.testing.assert_close(nodes, want.density_nodes, rtol=1e-6, atol=1e-12)
            torch.testing.assert_close(weights, want.density_weights, rtol=1e-6, atol=1e-12)


def test_held_out_mode_follows_hessian_every(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ViViTConfig(hessian_top_k=2, hessian_every=2, seed=0)
    model = _model()
    probe = Probe(
        model,
        nn.CrossEntropyLoss(),
        run="held",
        url=None,
        every=1,
        config=config,
        monitor_batch=_batch(99),
        spool_dir=tmp_path,
        strict=True,
    )
    seen: dict[int, Snapshot] = {}
    encode = probe_module.encode_snapshot

    def record(snapshot: Snapshot, **kwargs: Any) -> Any:
        seen[kwargs["step"]] = snapshot
        return encode(snapshot, **kwargs)

    monkeypatch.setattr(probe_module, "encode_snapshot", record)
    _train(model, 3, probe)
    probe.close()
    carried = [seen[s].groups[0].hessian_eigvals is not None for s in sorted(seen)]
    assert carried == [True, False, True]


class _Dict(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3).double()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.lin(x)}


def test_a_missing_outputs_adapter_is_reported_and_the_snapshot_still_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ViViTConfig(hessian_top_k=1, backend="func")
    model, loss_fn = _Dict(), nn.CrossEntropyLoss()
    probe = Probe(
        model, loss_fn, run="adapter", url=None, every=1, config=config, spool_dir=tmp_path
    )
    seen: dict[int, Snapshot] = {}
    encode = probe_module.encode_snapshot

    def record(snapshot: Snapshot, **kwargs: Any) -> Any:
        seen[kwargs["step"]] = snapshot
        return encode(snapshot, **kwargs)

    monkeypatch.setattr(probe_module, "encode_snapshot", record)
    x, y = _batch(0)
    loss = loss_fn(model(x)["logits"], y)
    with probe(0):
        loss.backward()
    probe.close()
    assert seen[0].groups[0].hessian_eigvals is None
    events = [
        m for p in probe._sink.spool.pending() if (m := probe._sink.spool.read(p)).type == "event"
    ]
    assert any("outputs" in e.message and e.level == "error" for e in events)
