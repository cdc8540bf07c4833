"""Loops people write: gradient accumulation, loss scalers, AMP, half weights, exact steps.

Each snapshot the probe sends (offline mode: read back from the spool) is compared with
:func:`compute_snapshot` of the loss module's own output on the same batch and parameters
(float64 where the loop allows it, float32 under AMP).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from curvscope.probe import Probe, ViViTConfig, compute_snapshot
from curvscope.probe.snapshot import Snapshot
from curvscope.probe.stream.spool import Spool
from curvscope.server.protocol import EventMessage, SnapshotMessage

BACKENDS = ["backpack", "func"]


def _mlp(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)


def _batch(i: int, n: int = 6, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(500 + i)
    return torch.randn(n, 5, generator=gen, dtype=dtype), torch.randint(0, 3, (n,), generator=gen)


def _spooled(directory: Path) -> tuple[list[SnapshotMessage], list[EventMessage]]:
    spool = Spool(directory)
    messages = [spool.read(p) for p in spool.pending()]
    snaps = sorted((m for m in messages if isinstance(m, SnapshotMessage)), key=lambda m: m.step)
    return snaps, [m for m in messages if isinstance(m, EventMessage)]


def _assert_same(sent: SnapshotMessage, expected: Snapshot, rtol: float) -> None:
    """The wire snapshot equals ``expected`` (γ up to the eigenvectors' signs)."""
    assert sent.loss == pytest.approx(expected.loss, rel=rtol)
    for group, ref in zip(sent.groups, expected.groups, strict=True):
        for field in ("eigvals", "snr_gamma", "snr_lambda", "grad_overlap"):
            ours = torch.tensor(getattr(group, field), dtype=torch.float64)
            theirs = getattr(ref, field).double()
            assert torch.allclose(ours, theirs, rtol=rtol, atol=rtol * 1e-3), field
        gamma = torch.tensor(group.gamma, dtype=torch.float64).abs()
        assert torch.allclose(gamma, ref.gamma.double().abs(), rtol=rtol, atol=rtol * 1e-3)
        assert group.grad_norm_sq == pytest.approx(ref.grad_norm_sq, rel=rtol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_accumulation_measures_the_loss_module_output(
    tmp_path: Path, backend: str
) -> None:
    """``(loss / k).backward()`` on k micro-batches per optimizer step: the snapshot of the
    step's first micro-batch is that of its unscaled loss (γ, ‖g‖², λ consistent)."""
    k = 2
    model = _mlp()
    loss_fn = nn.CrossEntropyLoss()
    config = ViViTConfig(backend=backend)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    probe = Probe(model, loss_fn, "accum", url=None, every=2, config=config, spool_dir=tmp_path)
    expected: dict[int, Snapshot] = {}
    for step in range(4):
        for micro in range(k):
            x, y = _batch(10 * step + micro)
            if micro == 0 and step % 2 == 0:
                expected[step] = compute_snapshot(model, loss_fn, x, y, config)
            loss = loss_fn(model(x), y)
            with probe(step):
                (loss / k).backward()
        opt.step()
        opt.zero_grad()
    probe.close()
    snaps, events = _spooled(tmp_path)
    assert [s.step for s in snaps] == [0, 2]
    for sent in snaps:
        _assert_same(sent, expected[sent.step], rtol=1e-10)
        assert sent.batch_size == 6  # the micro-batch
    assert [e.level for e in events] == ["info"]
    assert "0.5 × the loss" in events[0].message


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_loss_scaler_is_measured_unscaled(tmp_path: Path, backend: str) -> None:
    """``GradScaler``: the probe measures the loss, not ``2^16 · loss``."""
    model = _mlp(torch.float32)
    loss_fn = nn.CrossEntropyLoss()
    config = ViViTConfig(backend=backend)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    probe = Probe(model, loss_fn, "scaler", url=None, every=1, config=config, spool_dir=tmp_path)
    expected = []
    for step in range(2):
        x, y = _batch(step, dtype=torch.float32)
        expected.append(compute_snapshot(model, loss_fn, x, y, config))
        loss = loss_fn(model(x), y)
        with probe(step):
            scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    probe.close()
    snaps, _ = _spooled(tmp_path)
    assert [s.step for s in snaps] == [0, 1]
    for sent, ref in zip(snaps, expected, strict=True):
        _assert_same(sent, ref, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_loop_is_measured_in_float32(
    tmp_path: Path, backend: str, dtype: torch.dtype
) -> None:
    """Under ``torch.autocast`` every scheduled step arrives, computed in float32 on the
    loop's batch and parameters; the loop's gradients are those of a run without probe."""
    model = _mlp(torch.float32)
    plain = copy.deepcopy(model)
    loss_fn = nn.CrossEntropyLoss()
    config = ViViTConfig(backend=backend)
    probe = Probe(model, loss_fn, "amp", url=None, every=2, config=config, spool_dir=tmp_path)
    expected = {}
    for step in range(5):
        x, y = _batch(step, dtype=torch.float32)
        if step % 2 == 0:
            expected[step] = compute_snapshot(model, loss_fn, x, y, config)
        grads = []
        for net, probed in ((model, True), (plain, False)):
            with torch.autocast("cpu", dtype=dtype):
                loss = loss_fn(net(x), y)
            if probed:
                with probe(step):
                    loss.backward()
            else:
                loss.backward()
            grads.append([p.grad.clone() for p in net.parameters()])
            with torch.no_grad():
                for p in net.parameters():
                    p -= 0.1 * p.grad
                    p.grad = None
        assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
    probe.close()
    snaps, events = _spooled(tmp_path)
    assert [s.step for s in snaps] == [0, 2, 4]
    for sent in snaps:
        _assert_same(sent, expected[sent.step], rtol=1e-5)
    assert [e.level for e in events] == ["info"]
    assert "measured again in float32" in events[0].message


@pytest.mark.parametrize("backend", BACKENDS)
def test_bfloat16_weights_are_measured_in_float32(tmp_path: Path, backend: str) -> None:
    """A model trained in bfloat16 gets float32 snapshots of its (bfloat16) weights; the
    weights and gradients stay bfloat16, bit for bit those of a run without the probe."""
    model = _mlp(torch.bfloat16)
    plain = copy.deepcopy(model)
    loss_fn = nn.CrossEntropyLoss()
    config = ViViTConfig(backend=backend)
    probe = Probe(model, loss_fn, "bf16", url=None, every=1, config=config, spool_dir=tmp_path)
    expected = []
    for step in range(2):
        x, y = _batch(step, dtype=torch.bfloat16)
        expected.append(
            compute_snapshot(copy.deepcopy(model).float(), loss_fn, x.float(), y, config)
        )
        for net, probed in ((model, True), (plain, False)):
            loss = loss_fn(net(x), y)
            if probed:
                with probe(step):
                    loss.backward()
            else:
                loss.backward()
        for p, q in zip(model.parameters(), plain.parameters(), strict=True):
            assert p.dtype == torch.bfloat16 and torch.equal(p.grad, q.grad)
            with torch.no_grad():
                p -= 0.1 * p.grad
                q -= 0.1 * q.grad
            p.grad = q.grad = None
    probe.close()
    snaps, _ = _spooled(tmp_path)
    assert [s.step for s in snaps] == [0, 1]
    for sent, ref in zip(snaps, expected, strict=True):
        _assert_same(sent, ref, rtol=1e-6)


class _DictNet(nn.Module):
    """Returns a dict, as many models do (``outputs=`` picks the loss input)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp(torch.float32)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"logits": self.net(x)}


def test_autocast_needs_to_know_the_loss_input(tmp_path: Path) -> None:
    """Measuring again needs the model's output -> loss input map: refused by name without
    it (training goes on), exact with ``outputs=``."""
    loss_fn = nn.CrossEntropyLoss()
    for run, outputs in (("no-adapter", None), ("adapter", lambda out: out["logits"])):
        model = _DictNet()
        probe = Probe(
            model, loss_fn, run, url=None, every=1, spool_dir=tmp_path / run, outputs=outputs
        )
        x, y = _batch(0, dtype=torch.float32)
        expected = compute_snapshot(model, loss_fn, x, y, outputs=lambda out: out["logits"])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(model(x)["logits"], y)
        with probe(0):
            loss.backward()
        probe.close()
        snaps, events = _spooled(tmp_path / run)
        if outputs is None:
            assert snaps == []
            assert any("outputs=lambda out" in e.message for e in events if e.level == "error")
        else:
            (sent,) = snaps
            _assert_same(sent, expected, rtol=1e-5)


def test_expect_arms_irregular_steps_exactly(tmp_path: Path) -> None:
    """Steps the stride cannot predict are measured when the loop says them up front."""
    steps = [0, 3, 4, 10, 11, 20]
    for said in (False, True):
        model = _mlp()
        loss_fn = nn.CrossEntropyLoss()
        spool = tmp_path / str(said)
        probe = Probe(model, loss_fn, "irregular", url=None, every=5, spool_dir=spool)
        for step in steps:
            if said:
                probe.expect(step)
            x, y = _batch(step)
            loss = loss_fn(model(x), y)
            with probe(step):
                loss.backward()
            model.zero_grad()
        probe.close()
        snaps, events = _spooled(spool)
        if said:
            assert [s.step for s in snaps] == [0, 10, 20] and events == []
        else:  # predicted from the last stride: after 11 comes 12 (not scheduled), not 20
            assert [s.step for s in snaps] == [0, 10]
            assert [e.step for e in events] == [20]


def test_a_probed_model_can_be_copied_and_saved(tmp_path: Path) -> None:
    """``copy.deepcopy`` (EMA models) and ``torch.save(model)`` work on a probed model; the
    copy is not probed (its forward passes never reach the probe)."""
    model = _mlp()
    loss_fn = nn.CrossEntropyLoss()
    probe = Probe(model, loss_fn, "copies", url=None, every=1, spool_dir=tmp_path)
    twin = copy.deepcopy(model)
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    for step, net in enumerate((twin, loaded, model)):
        x, y = _batch(step)
        loss = loss_fn(net(x), y)
        with probe(step):
            loss.backward()
    probe.close()
    snaps, events = _spooled(tmp_path)
    assert [s.step for s in snaps] == [2]  # steps 0 and 1 ran the copies: nothing to measure
    assert [(e.step, e.level) for e in events] == [(0, "warning"), (1, "warning")]
    assert "hooks were not in place" in events[0].message


class _SelfCasting(nn.Module):
    """A forward that enters autocast itself (as accelerate's mixed precision wraps it)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp(torch.float32)

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.net(x)


def test_a_forward_that_enters_autocast_itself_is_refused_by_name(tmp_path: Path) -> None:
    """Half-precision outputs the loop's autocast did not make: refused with what to do
    (was: a raw dtype error, or BackPACK's factor of a bfloat16 pass)."""
    model = _SelfCasting()
    loss_fn = nn.CrossEntropyLoss()
    probe = Probe(model, loss_fn, "self-cast", url=None, every=1, spool_dir=tmp_path)
    x, y = _batch(0, dtype=torch.float32)
    loss = loss_fn(model(x), y)
    with probe(0):
        loss.backward()
    probe.close()
    snaps, events = _spooled(tmp_path)
    assert snaps == []
    (event,) = events
    assert event.level == "error" and "enters autocast itself" in event.message
