"""The in-loop Probe with ``gradient_spectrum`` and ``subsample_grad``: each snapshot equals
``compute_snapshot`` of the unscaled loss on that step's batch and parameters (both
backends, a ``loss / 2`` accumulation backward), and training is bit for bit unchanged."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from curvscope.probe import Probe, ViViTConfig, compute_snapshot
from curvscope.probe.loop import probe as probe_module
from curvscope.probe.snapshot import Snapshot


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def _batch(step: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2000 + step)
    return torch.randn(n, 4, generator=gen, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=gen
    )


def _train(model: nn.Module, steps: int, probe: Probe | None) -> list[list[torch.Tensor]]:
    loss_fn = nn.CrossEntropyLoss() if probe is None else probe.loss_fn
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    grads = []
    for step in range(steps):
        x, y = _batch(step)
        opt.zero_grad()
        loss = loss_fn(model(x), y) / 2  # a scaled backward (accumulation over 2)
        if probe is None:
            loss.backward()
        else:
            with probe(step):
                loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
    return grads


@pytest.mark.parametrize("backend", ["backpack", "func"])
def test_in_loop_noise_spectrum_is_that_of_the_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    config = ViViTConfig(
        param_groups="layer", gradient_spectrum=True, subsample_grad=[5, 1, 2], backend=backend
    )
    plain_model = _model()
    model = copy.deepcopy(plain_model)
    loss_fn = nn.CrossEntropyLoss()
    probe = Probe(
        model,
        loss_fn,
        run="noise",
        url=None,
        every=1,
        config=config,
        spool_dir=tmp_path,
        strict=True,
    )
    seen: dict[int, Snapshot] = {}
    expected: dict[int, Snapshot] = {}
    encode = probe_module.encode_snapshot

    def record(snapshot: Snapshot, **kwargs: Any) -> Any:
        step = kwargs["step"]
        seen[step] = snapshot
        x, y = _batch(step)  # the parameters are still those of this step's forward
        expected[step] = compute_snapshot(model, loss_fn, x, y, config)
        return encode(snapshot, **kwargs)

    monkeypatch.setattr(probe_module, "encode_snapshot", record)
    grads = _train(model, 3, probe)
    probe.close()
    for got, want in zip(grads, _train(plain_model, 3, None), strict=True):
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert sorted(seen) == [0, 1, 2]
    for step, snapshot in seen.items():
        for group, want in zip(snapshot.groups, expected[step].groups, strict=True):
            assert group.gammas.shape[0] == 3
            for field in ("gradient_eigvals", "gradient_moment_eigvals", "gamma", "gammas"):
                ours, ref = getattr(group, field), getattr(want, field)
                torch.testing.assert_close(
                    ours, ref, rtol=1e-10, atol=1e-12 * float(ref.abs().max())
                )
