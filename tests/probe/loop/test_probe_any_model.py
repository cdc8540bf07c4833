"""The probe with the ``func`` backend on models BackPACK cannot follow.

A transformer classifier (attention, LayerNorm, dropout) and torchvision's ResNet-18
(BatchNorm in training mode) are trained for a few steps with the probe in the loop and,
in lockstep, as plain copies without a probe (same seeds, same batches, each run with its
own RNG stream): after every step the gradients, parameters, BatchNorm statistics, RNG
state and module modes must be bit for bit those of the plain run. Then held-out mode on a
model with keyword inputs and an ``outputs=`` adapter, and the failure policy.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from curvscope.probe import Probe, ViViTConfig, compute_snapshot
from curvscope.probe.collector import Inputs
from curvscope.probe.stream.spool import Spool
from curvscope.server.protocol import EventMessage, SnapshotMessage

Batch = tuple[Inputs, Tensor]


def _spooled(directory: Path) -> tuple[list[SnapshotMessage], list[EventMessage]]:
    spool = Spool(directory)
    messages = [spool.read(p) for p in spool.pending()]
    snaps = sorted((m for m in messages if isinstance(m, SnapshotMessage)), key=lambda m: m.step)
    return snaps, [m for m in messages if isinstance(m, EventMessage)]


def _call(model: nn.Module, inputs: Inputs) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(inputs)


def _hooks(model: nn.Module) -> list[tuple[int, int, int, int]]:
    return [
        (
            len(m._forward_pre_hooks),
            len(m._forward_hooks),
            len(m._backward_pre_hooks),
            len(m._backward_hooks),
        )
        for m in model.modules()
    ]


@dataclass
class State:
    """What one training step leaves behind (cloned)."""

    grads: list[Tensor]
    params: list[Tensor]
    buffers: dict[str, Tensor]
    rng: Tensor
    modes: list[bool]


class Run:
    """One training run (SGD with momentum) with its own global-RNG stream.

    Two runs alternate in one process: each step restores the run's RNG state first and
    saves it after, so dropout draws the same masks in both runs when they match.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        seed: int,
        adapter: Callable[[Any], Tensor] | None = None,
        skip_nonfinite: bool = False,
    ) -> None:
        self.model, self.loss_fn, self.adapter = model, loss_fn, adapter
        self.skip_nonfinite = skip_nonfinite
        self.opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.rng = torch.get_rng_state()

    def step(self, step: int, batch: Batch, probe: Probe | None = None) -> State:
        inputs, targets = batch
        with torch.random.fork_rng():  # the test's own RNG is left alone
            torch.set_rng_state(self.rng)
            self.opt.zero_grad()
            out = _call(self.model, inputs)
            out = out if self.adapter is None else self.adapter(out)
            loss = self.loss_fn(out, targets)
            if probe is None:
                loss.backward()
            else:
                with probe(step):
                    loss.backward()
            grads = [p.grad.clone() for p in self.model.parameters()]
            if not (self.skip_nonfinite and not all(g.isfinite().all() for g in grads)):
                self.opt.step()
            self.rng = torch.get_rng_state()
        return State(
            grads=grads,
            params=[p.detach().clone() for p in self.model.parameters()],
            buffers={k: b.clone() for k, b in self.model.named_buffers()},
            rng=self.rng.clone(),
            modes=[m.training for m in self.model.modules()],
        )


def _assert_same(got: State, want: State, step: int) -> None:
    assert len(got.grads) == len(want.grads)
    for i, (g, h) in enumerate(zip(got.grads, want.grads, strict=True)):
        assert torch.equal(g, h), f"step {step}: gradient {i} differs"
    for i, (p, q) in enumerate(zip(got.params, want.params, strict=True)):
        assert torch.equal(p, q), f"step {step}: parameter {i} differs after the optimizer step"
    assert got.buffers.keys() == want.buffers.keys()
    for name, buf in got.buffers.items():
        assert torch.equal(buf, want.buffers[name]), f"step {step}: buffer {name} differs"
    assert torch.equal(got.rng, want.rng), f"step {step}: the RNG state differs (dropout)"
    assert got.modes == want.modes, f"step {step}: module modes changed"


def _in_loop_against_plain(
    model: nn.Module,
    batches: list[Batch],
    tmp_path: Path,
    config: ViViTConfig,
    every: int = 2,
) -> tuple[Probe, list[SnapshotMessage], list[EventMessage]]:
    plain_model = copy.deepcopy(model)  # before the probe's hooks are on the model
    modes = [m.training for m in model.modules()]
    hooks = _hooks(model)
    probe = Probe(
        model,
        nn.CrossEntropyLoss(),
        run="any",
        url=None,
        every=every,
        config=config,
        spool_dir=tmp_path,
    )
    probed, plain = Run(model, probe.loss_fn, seed=3), Run(plain_model, nn.CrossEntropyLoss(), 3)
    for step, batch in enumerate(batches):
        got = probed.step(step, batch, probe)
        want = plain.step(step, batch)
        _assert_same(got, want, step)
        assert got.modes == modes
        assert torch._C._len_torch_function_stack() == 0, f"step {step}: a tracer is left on"
    probe.close()
    assert _hooks(model) == hooks
    snaps, events = _spooled(tmp_path)
    return probe, snaps, events


def _assert_func_snapshots(snaps: list[SnapshotMessage], steps: list[int], n: int) -> None:
    assert [s.step for s in snaps] == steps
    for s in snaps:
        assert s.config.backend == "func" and s.config.mode == "in-loop"
        assert s.batch_size == n
        for group in s.groups:
            assert group.eigvals, f"step {s.step}: group {group.name} has no eigenvalues"
            assert all(math.isfinite(v) and v > 0 for v in group.eigvals)


# -- in-loop: a transformer classifier ----------------------------------------------------

VOCAB, T, CLASSES = 11, 5, 3


class TransformerClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        layer = nn.TransformerEncoderLayer(
            d_model=16, nhead=2, dim_feedforward=32, batch_first=True, dropout=0.1
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(16, CLASSES)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(dim=1))


def _token_batches(steps: int, n: int = 6) -> list[Batch]:
    gen = torch.Generator().manual_seed(11)
    return [
        (
            torch.randint(0, VOCAB, (n, T), generator=gen),
            torch.randint(0, CLASSES, (n,), generator=gen),
        )
        for _ in range(steps)
    ]


def test_transformer_in_loop_is_bit_for_bit_a_plain_training_run(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TransformerClassifier().train()
    probe, snaps, events = _in_loop_against_plain(
        model,
        _token_batches(5),
        tmp_path,
        ViViTConfig(),  # backend "auto"
    )
    assert probe.backend == "func"  # BackPACK cannot follow attention
    assert events == []
    _assert_func_snapshots(snaps, [0, 2, 4], n=6)


# -- in-loop: ResNet-18 with BatchNorm in training mode -----------------------------------


def test_resnet18_in_loop_is_bit_for_bit_a_plain_training_run(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).train()
    gen = torch.Generator().manual_seed(5)
    batches = [
        (torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, 10, (4,), generator=gen))
        for _ in range(3)
    ]
    # Every parameter is generic here (BatchNorm in training mode couples the samples):
    # one backward pass per curvature column and per sample; MC with one draw on two
    # curvature samples keeps that at 2 + 4 columns.
    config = ViViTConfig(curvature="mc", mc_samples=1, subsample=2, seed=0, backend="func")
    probe, snaps, events = _in_loop_against_plain(model, batches, tmp_path, config)
    assert probe.backend == "func"
    assert events == []
    _assert_func_snapshots(snaps, [0, 2], n=4)
    assert all(len(s.groups[0].eigvals) == 2 for s in snaps)  # one draw on two samples


# -- held-out mode: keyword inputs and an outputs= adapter --------------------------------


@dataclass
class LMOutput:
    logits: Tensor


class TinyLM(nn.Module):
    """Keyword inputs, an output object: ``model(input_ids=..., attention_mask=...)``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        self.norm = nn.LayerNorm(8)
        self.drop = nn.Dropout(0.2)
        self.rnn = nn.GRU(8, 8, batch_first=True)
        self.lm_head = nn.Linear(8, VOCAB)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> LMOutput:
        h = self.drop(self.norm(self.embed(input_ids)))
        if attention_mask is not None:
            h = h * attention_mask.unsqueeze(-1)
        h, _ = self.rnn(h)
        return LMOutput(logits=self.lm_head(h))  # [N, T, V]


def _lm_batch(seed: int, n: int) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, T), generator=gen)
    mask = torch.ones(n, T)
    mask[0, -2:] = 0.0
    return {"input_ids": ids, "attention_mask": mask}, torch.randint(
        0, VOCAB, (n, T), generator=gen
    )


def _logits(out: LMOutput) -> Tensor:
    return out.logits.transpose(1, 2)  # [N, V, T] for CrossEntropyLoss on [N, T] targets


def test_held_out_with_keyword_inputs_and_an_outputs_adapter(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyLM().train()
    plain_model = copy.deepcopy(model)
    monitor = _lm_batch(99, n=5)
    # The reference: the initial model on the monitor batch, in eval mode (as held-out mode).
    expected = compute_snapshot(
        copy.deepcopy(model).eval(),
        nn.CrossEntropyLoss(),
        *monitor,
        ViViTConfig(backend="func"),
        outputs=_logits,
    )
    assert expected.backend == "func"
    probe = Probe(
        model,
        nn.CrossEntropyLoss(),
        run="lm",
        url=None,
        every=2,
        config=ViViTConfig(),  # "auto": the adapter needs func
        spool_dir=tmp_path,
        monitor_batch=monitor,  # keyword inputs
        outputs=_logits,
    )
    assert probe.backend == "func"
    probed = Run(model, probe.loss_fn, seed=4, adapter=_logits)
    plain = Run(plain_model, nn.CrossEntropyLoss(), seed=4, adapter=_logits)
    for step in range(4):
        batch = _lm_batch(step, n=6)
        _assert_same(probed.step(step, batch, probe), plain.step(step, batch), step)
        assert torch._C._len_torch_function_stack() == 0
    probe.close()
    snaps, events = _spooled(tmp_path)
    assert events == []
    assert [s.step for s in snaps] == [0, 2]
    for s in snaps:
        assert s.config.backend == "func" and s.config.mode == "held-out"
        assert s.batch_size == 5
        assert s.groups[0].eigvals and all(math.isfinite(v) for v in s.groups[0].eigvals)
    got = torch.tensor(snaps[0].groups[0].eigvals, dtype=torch.float64)
    torch.testing.assert_close(got, expected.groups[0].eigvals.double(), rtol=1e-5, atol=1e-7)


# -- failure policy -----------------------------------------------------------------------


class Poisonable(nn.Module):
    """A GRU classifier whose forward returns NaN in mode ``poisoned`` ("train"/"eval")."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(4, 6, batch_first=True)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 3)
        self.poisoned: str | None = None

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.rnn(x)
        out = self.head(self.norm(h[:, -1]))
        mode = "train" if self.training else "eval"
        return out * math.nan if mode == self.poisoned else out


@pytest.mark.parametrize(
    ("mode", "failure", "error"),
    [
        ("in-loop", "nan-forward", "NonFiniteLossError"),
        ("held-out", "nan-forward", "NonFiniteLossError"),
        ("in-loop", "backend-error", "CostError"),
    ],
)
def test_func_failures_never_reach_the_loop_and_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, failure: str, error: str
) -> None:
    # nan-forward: in-loop, the training forward returns NaN at step 2 (the loop's loss is
    # NaN too; it skips that optimizer step, as a GradScaler would); held-out, only the
    # monitor pass (eval mode) returns NaN: the training step is healthy, the snapshot
    # fails. backend-error: the func backend's own computation raises at step 2 (a cost
    # limit), inside `with probe(2)`, before the loop's backward pass.
    from curvscope.probe.backends import func

    torch.manual_seed(0)
    model = Poisonable().train()
    plain_model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(8)
    batches = [
        (torch.randn(5, 3, 4, generator=gen), torch.randint(0, 3, (5,), generator=gen))
        for _ in range(5)
    ]
    hooks = _hooks(model)
    probe = Probe(
        model,
        nn.CrossEntropyLoss(),
        run="fail",
        url=None,
        every=1,
        config=ViViTConfig(backend="func"),
        spool_dir=tmp_path,
        monitor_batch=batches[0] if mode == "held-out" else None,
    )
    assert probe.backend == "func"
    probed = Run(model, probe.loss_fn, seed=1, skip_nonfinite=True)
    plain = Run(plain_model, nn.CrossEntropyLoss(), seed=1, skip_nonfinite=True)
    for step, batch in enumerate(batches):
        poison = "train" if mode == "in-loop" else "eval"
        model.poisoned = plain_model.poisoned = (
            poison if step == 2 and failure == "nan-forward" else None
        )
        if step == 2 and failure == "backend-error":
            monkeypatch.setattr(func, "MAX_GRAM_SIZE", 1)
        got, want = probed.step(step, batch, probe), plain.step(step, batch)  # never raises
        monkeypatch.undo()
        if step == 2 and mode == "in-loop" and failure == "nan-forward":
            # NaN gradients in both runs (torch.equal is False on NaN)
            assert all(
                g.isnan().all() and h.isnan().all()
                for g, h in zip(got.grads, want.grads, strict=True)
            )
            got.grads, want.grads = [], []
        _assert_same(got, want, step)
        assert torch._C._len_torch_function_stack() == 0
    probe.close()
    assert _hooks(model) == hooks
    snaps, events = _spooled(tmp_path)
    assert [s.step for s in snaps] == [0, 1, 3, 4]
    assert all(s.config.backend == "func" and s.groups[0].eigvals for s in snaps)
    assert [(e.step, e.level) for e in events] == [(2, "error")]
    assert error in events[0].message


# -- defects found while writing these tests, fixed --------------------------------------


class _Flaky(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.norm, self.b = nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3)
        self.fail = False

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(self.a(x))
        if self.fail:
            raise RuntimeError("out of memory (simulated)")
        return self.b(h)


def test_a_raising_forward_leaves_no_tracer_on(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _Flaky()
    probe = Probe(model, nn.CrossEntropyLoss(), run="flaky", url=None, spool_dir=tmp_path)
    assert probe.backend == "func"
    model.fail = True
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            model(torch.randn(6, 4))  # step 0 is armed (the first step): the tracer is on
        assert torch._C._len_torch_function_stack() == 0
    finally:
        probe.close()
    assert torch._C._len_torch_function_stack() == 0


def test_backpack_mc_in_loop_leaves_the_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    config = ViViTConfig(curvature="mc", backend="backpack")
    probe = Probe(
        model, nn.CrossEntropyLoss(), run="mc", url=None, every=1, spool_dir=tmp_path, config=config
    )
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    loss = probe.loss_fn(model(x), y)
    before = torch.get_rng_state()
    with probe(0):
        loss.backward()
    probe.close()
    assert [s.step for s in _spooled(tmp_path)[0]] == [0]
    assert torch.equal(torch.get_rng_state(), before)
