"""``Probe(optimizer=...)``: each snapshot carries the optimizer's learning rate (the
scheduler's current one) and momentum on the wire, and the dashboard's stability threshold
computed from them is where PyTorch's own optimizer starts to diverge on a quadratic."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from curvscope.probe import ConfigError, Probe
from curvscope.probe.loop.wire import encode_optimizer
from curvscope.probe.stream.spool import Spool
from curvscope.server.figures import stability_threshold
from curvscope.server.protocol import EventMessage, SnapshotMessage


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))


def _batch(step: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2000 + step)
    return torch.randn(n, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def _run(
    tmp_path: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    steps: int,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    every: int = 2,
    tell: bool = True,
) -> tuple[list[SnapshotMessage], list[EventMessage], list[float]]:
    """The README's loop with ``Probe(optimizer=opt)`` (``tell=False``: without), offline;
    returns the spooled snapshots and events, and the learning rate each step's update used
    (read from the optimizer in the loop, for comparison)."""
    loss_fn = nn.CrossEntropyLoss()
    probe = Probe(
        model,
        loss_fn,
        run="opt",
        url=None,
        every=every,
        spool_dir=tmp_path,
        optimizer=opt if tell else None,
    )
    used = []
    for step in range(steps):
        x, y = _batch(step)
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        with probe(step):
            loss.backward()
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        if scheduler is not None:
            scheduler.step()
    probe.close()
    spool = Spool(tmp_path)
    messages = [spool.read(p) for p in spool.pending()]
    snaps = sorted((m for m in messages if isinstance(m, SnapshotMessage)), key=lambda m: m.step)
    return snaps, [m for m in messages if isinstance(m, EventMessage)], used


def test_sgd_under_a_scheduler_carries_each_steps_learning_rate(tmp_path: Path) -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.4, momentum=0.9, nesterov=True)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    snaps, events, used = _run(tmp_path, model, opt, 8, scheduler)
    assert [s.step for s in snaps] == [0, 2, 4, 6]
    # StepLR(3, 0.5) from 0.4: steps 0-2 at 0.4, 3-5 at 0.2, 6-8 at 0.1
    assert [s.optimizer.lr for s in snaps] == [0.4, 0.4, 0.2, 0.1]
    assert [s.optimizer.lr for s in snaps] == [used[s.step] for s in snaps]
    for snap in snaps:
        assert snap.optimizer.name == "SGD"
        assert snap.optimizer.momentum == 0.9 and snap.optimizer.nesterov
        assert not snap.optimizer.adaptive and snap.optimizer.dampening == 0.0
    assert events == []
    wire = snaps[0].model_dump(mode="json")["optimizer"]
    assert wire == {
        "name": "SGD",
        "lr": 0.4,
        "momentum": 0.9,
        "dampening": 0.0,
        "nesterov": True,
        "adaptive": False,
    }


def test_adam_is_marked_adaptive_without_momentum(tmp_path: Path) -> None:
    model = _mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    snaps, events, _ = _run(tmp_path, model, opt, 3)
    assert [s.step for s in snaps] == [0, 2]
    for snap in snaps:
        assert snap.optimizer.name == "AdamW"
        assert snap.optimizer.adaptive
        assert snap.optimizer.momentum is None and not snap.optimizer.nesterov
        assert snap.optimizer.lr == 1e-3
    assert events == []


def test_without_an_optimizer_the_field_is_left_out(tmp_path: Path) -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    snaps, _, _ = _run(tmp_path, model, opt, 1, tell=False)
    assert [s.optimizer for s in snaps] == [None]
    (path,) = Spool(tmp_path).pending()
    assert '"optimizer"' not in path.read_text()


def test_groups_with_different_rates_record_the_first_and_warn_once(tmp_path: Path) -> None:
    model = _mlp()
    first, second = model[0], model[2]
    opt = torch.optim.SGD(
        [
            {"params": first.parameters(), "lr": 0.05},
            {"params": second.parameters(), "lr": 0.5, "momentum": 0.5},
        ],
        lr=0.1,
    )
    snaps, events, _ = _run(tmp_path, model, opt, 5)
    assert [s.optimizer.lr for s in snaps] == [0.05, 0.05, 0.05]
    assert [s.optimizer.momentum for s in snaps] == [0.0, 0.0, 0.0]  # the first group's
    (warning,) = events
    assert warning.level == "warning" and warning.step == 0
    assert "different learning rates (0.05, 0.5)" in warning.message


def test_a_zero_rate_travels_and_has_no_threshold(tmp_path: Path) -> None:
    """Warm-up schedules start at lr = 0: the snapshot keeps its optimizer state."""
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: step / 2 if step < 2 else 1.0)
    snaps, events, _ = _run(tmp_path, model, opt, 3, warmup)
    assert [s.optimizer.lr for s in snaps] == [0.0, 0.2]
    assert stability_threshold(snaps[0].optimizer.model_dump()) is None
    assert stability_threshold(snaps[1].optimizer.model_dump()) == pytest.approx(2 / 0.2)
    assert events == []


def test_an_object_without_param_groups_is_refused_up_front(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="optimizer="):
        Probe(
            _mlp(),
            nn.CrossEntropyLoss(),
            run="bad",
            url=None,
            spool_dir=tmp_path,
            optimizer=object(),  # type: ignore[arg-type]
        )


def test_a_wrapped_optimizer_is_read_through_its_wrapper() -> None:
    """accelerate's AcceleratedOptimizer keeps the optimizer as ``.optimizer``."""

    class Wrapper(torch.optim.Optimizer):
        def __init__(self, inner: torch.optim.Optimizer) -> None:
            self.optimizer = inner

        @property
        def param_groups(self):  # type: ignore[no-untyped-def, override]
            return self.optimizer.param_groups

    inner = torch.optim.SGD(_mlp().parameters(), lr=0.3, momentum=0.8, dampening=0.1)
    state = encode_optimizer(Wrapper(inner))
    assert (state.name, state.lr, state.momentum, state.dampening) == ("SGD", 0.3, 0.8, 0.1)


def _diverges(opt_factory, curvature: float, steps: int = 400) -> bool:  # type: ignore[no-untyped-def]
    """Whether ``opt_factory([x])`` on ``f(x) = curvature · x² / 2`` from x = 1 blows up."""
    x = torch.ones(1, dtype=torch.float64, requires_grad=True)
    opt = opt_factory([x])
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * curvature * x.square()).sum().backward()
        opt.step()
    value = float(x.detach())
    return not math.isfinite(value) or abs(value) > 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": 0.1},
        {"lr": 0.1, "momentum": 0.9},
        {"lr": 0.05, "momentum": 0.5, "dampening": 0.3},
        {"lr": 0.1, "dampening": 0.5},  # PyTorch ignores dampening without momentum
        {"lr": 0.1, "momentum": 0.9, "nesterov": True},
        {"lr": 0.02, "momentum": 0.6, "nesterov": True},
    ],
    ids=["plain", "heavy-ball", "dampened", "dampening-only", "nesterov", "nesterov-0.6"],
)
def test_the_threshold_is_where_torch_sgd_diverges(kwargs: dict) -> None:
    """The threshold drawn from the wire's lr/β is the curvature at which PyTorch's own SGD
    (its momentum and Nesterov update, as shipped) stops converging on a quadratic."""
    state = encode_optimizer(torch.optim.SGD([torch.zeros(1, requires_grad=True)], **kwargs))
    threshold = stability_threshold(state.model_dump())
    assert threshold is not None

    def make(params):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(params, **kwargs)

    assert not _diverges(make, 0.97 * threshold)
    assert _diverges(make, 1.03 * threshold)


def test_only_a_readable_optimizer_is_recordable() -> None:
    """The integrations pass the trainer's optimizer only when the probe can read it: an
    exotic object (no ``param_groups``, or groups without ``lr``) means no edge-of-stability
    line, never a ``ConfigError`` in the middle of training."""
    from curvscope.probe.loop.wire import recordable_optimizer

    class NoGroups:
        pass

    class NoRate:
        def __init__(self) -> None:
            self.param_groups = [{"momentum": 0.9}]

    assert recordable_optimizer(torch.optim.SGD(_mlp().parameters(), lr=0.1))
    assert not recordable_optimizer(None)
    assert not recordable_optimizer(NoGroups())
    assert not recordable_optimizer(NoRate())
