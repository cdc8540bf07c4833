"""The training-loop Probe: in-loop and held-out modes, failure policy, server failures.

Server cases use the real ``curvscope serve`` process (tests/helpers/server_process.py)
and check what it stored through its REST API.
"""

from __future__ import annotations

import copy
import gc
import os
import signal
import time
import types
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import torch
from torch import nn

from curvscope.probe import (
    ConfigError,
    Probe,
    TransportOptions,
    UnsupportedLayerError,
    ViViTConfig,
    compute_snapshot,
)
from curvscope.probe.backends.backpack_extension import factor_form
from curvscope.probe.stream.spool import Spool
from curvscope.server.protocol import EventMessage, SnapshotMessage
from tests.helpers.server_process import ServerProcess, free_port, running_server

FAST = TransportOptions(queue_size=64, connect_timeout=2.0, ack_timeout=5.0, backoff_max=0.2)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))


def _batch(step: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    return torch.randn(n, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def _train(
    model: nn.Module,
    steps: int,
    probe: Probe | None = None,
    after_step: Callable[[int], None] | None = None,
    loss_fn: nn.Module | None = None,
) -> list[list[torch.Tensor]]:
    """The loop of the README; returns each step's gradients (cloned)."""
    loss_fn = (
        loss_fn if loss_fn is not None else (probe.loss_fn if probe else nn.CrossEntropyLoss())
    )
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
        if after_step is not None:
            after_step(step)
    return grads


def _spooled(directory: Path) -> tuple[list[SnapshotMessage], list[EventMessage]]:
    spool = Spool(directory)
    messages = [spool.read(p) for p in spool.pending()]
    snaps = sorted((m for m in messages if isinstance(m, SnapshotMessage)), key=lambda m: m.step)
    return snaps, [m for m in messages if isinstance(m, EventMessage)]


def _stored(server: ServerProcess, run: str) -> list[int]:
    response = httpx.get(server.url(f"/api/runs/{run}/snapshots"), timeout=10)
    if response.status_code == 404:
        return []
    response.raise_for_status()
    return [s["step"] for s in response.json()]


# -- in-loop mode ------------------------------------------------------------------------


def test_in_loop_gradients_are_bit_for_bit_those_of_a_plain_backward(tmp_path: Path) -> None:
    plain_model = _mlp()
    probed_model = copy.deepcopy(plain_model)
    probe = Probe(
        probed_model, nn.CrossEntropyLoss(), run="grads", url=None, every=2, spool_dir=tmp_path
    )
    probed = _train(probed_model, 7, probe)
    plain = _train(plain_model, 7)
    report = probe.close()
    for step, (a, b) in enumerate(zip(probed, plain, strict=True)):
        assert all(torch.equal(g, h) for g, h in zip(a, b, strict=True)), f"step {step}"
    assert all(
        torch.equal(p, q)
        for p, q in zip(probed_model.parameters(), plain_model.parameters(), strict=True)
    )
    snaps, events = _spooled(tmp_path)
    assert [s.step for s in snaps] == [0, 2, 4, 6] and events == []
    assert report.spooled == 4 and report.spool_dir == tmp_path
    assert not any(m._forward_hooks or m._backward_hooks for m in probed_model.modules())


def test_in_loop_snapshot_is_that_of_the_users_batch(tmp_path: Path) -> None:
    model = _mlp().double()
    reference = copy.deepcopy(model)
    config = ViViTConfig(top_k=3)
    probe = Probe(
        model,
        nn.CrossEntropyLoss(),
        run="same",
        url=None,
        every=3,
        config=config,
        spool_dir=tmp_path,
    )
    losses: dict[int, float] = {}
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(4):
        x, y = _batch(step)
        x = x.double()
        if step == 3:  # the reference: the same model and batch, measured on its own
            reference.load_state_dict(model.state_dict())
            expected = compute_snapshot(reference, nn.CrossEntropyLoss(), x, y, config)
        opt.zero_grad()
        loss = probe.loss_fn(model(x), y)
        losses[step] = loss.item()
        with probe(step):
            loss.backward()
        opt.step()
    probe.close()
    snaps, _ = _spooled(tmp_path)
    assert [s.step for s in snaps] == [0, 3]
    snap = snaps[1]
    assert snap.loss == losses[3] and snap.config.mode == "in-loop" and snap.batch_size == 8
    got, want = snap.groups[0], expected.groups[0]
    torch.testing.assert_close(torch.tensor(got.eigvals, dtype=torch.float64), want.eigvals)
    torch.testing.assert_close(torch.tensor(got.gamma, dtype=torch.float64).abs(), want.gamma.abs())
    torch.testing.assert_close(torch.tensor(got.snr_lambda, dtype=torch.float64), want.snr_lambda)
    assert time.time() - 60 < snap.wall_time <= time.time()


def test_unscheduled_steps_attach_no_backpack_hooks(tmp_path: Path) -> None:
    model = _mlp()
    probe = Probe(model, nn.CrossEntropyLoss(), run="hooks", url=None, every=5, spool_dir=tmp_path)
    seen: list[tuple[int, bool]] = []

    def spy(module: nn.Module, args: object, output: object) -> None:
        # Besides this spy, is another (BackPACK's IO) hook on the layer in this forward?
        seen.append((len(seen), len(module._forward_hooks) > 1))

    handle = model[0].register_forward_hook(spy)
    _train(model, 11, probe)
    handle.remove()
    probe.close()
    hooked_steps = [step for step, stored in seen if stored]
    # first step (unknown schedule), then only the steps before 5 and 10 predict "scheduled"
    assert hooked_steps == [0, 5, 10]


def _tensors_reachable_from(root: object) -> list[torch.Tensor]:
    """Tensors reachable from ``root`` through instances, containers and closures."""
    seen: set[int] = set()
    found: list[torch.Tensor] = []
    todo = [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType)):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            found.append(obj)
        elif isinstance(obj, types.FunctionType):  # its closure, not its module's globals
            todo.extend(cell.cell_contents for cell in obj.__closure__ or ())
        else:
            todo.extend(gc.get_referents(obj))
    return found


@pytest.mark.parametrize("eigenvectors", [0, 1])
def test_nothing_of_a_measured_step_stays_alive_after_it(tmp_path: Path, eigenvectors: int) -> None:
    model = _mlp()
    probe = Probe(
        model,
        nn.CrossEntropyLoss(),
        run="mem",
        url=None,
        every=2,
        config=ViViTConfig(eigenvectors=eigenvectors),
        spool_dir=tmp_path,
    )
    hidden: list[torch.Tensor] = []  # the second layer's inputs, held here only
    handle = model[2].register_forward_hook(lambda m, args, out: hidden.append(args[0]))
    with factor_form("structured"):  # the linear layers' factors hold their inputs
        _train(model, 2, probe)  # step 0 measured (with BackPACK's stored inputs), step 1 not
    handle.remove()
    held = {t.untyped_storage().data_ptr() for t in hidden}
    leaked = [t for t in _tensors_reachable_from(probe) if t.untyped_storage().data_ptr() in held]
    probe.close()
    assert [s.step for s in _spooled(tmp_path)[0]] == [0]
    assert leaked == []


def test_step_that_was_not_predicted_is_skipped_and_reported(tmp_path: Path) -> None:
    model = _mlp()
    probe = Probe(model, nn.CrossEntropyLoss(), run="jump", url=None, every=5, spool_dir=tmp_path)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in (0, 1, 2, 3, 5, 6):  # 4 is skipped: step 5 was not expected
        x, y = _batch(step)
        opt.zero_grad()
        loss = probe.loss_fn(model(x), y)
        with probe(step):
            loss.backward()
        opt.step()
    probe.close()
    snaps, events = _spooled(tmp_path)
    assert [s.step for s in snaps] == [0]
    assert [(e.step, e.level) for e in events] == [(5, "warning")]


def test_a_single_layer_model_works_in_loop(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    probe = Probe(model, nn.CrossEntropyLoss(), run="leaf", url=None, every=2, spool_dir=tmp_path)
    _train(model, 5, probe)
    probe.close()
    snaps, events = _spooled(tmp_path)
    assert [s.step for s in snaps] == [0, 2, 4] and events == []
    assert snaps[0].groups[0].num_params == 15 and len(snaps[0].groups[0].eigvals) > 0


def test_a_single_layer_model_is_never_armed_too_late(tmp_path: Path) -> None:
    # Arming for step 2 fails at the end of step 1 (BatchNorm in training mode); the loop
    # switches back before step 2's forward. Hooks attached in the forward pre-hook would
    # miss the layer's backward hook and give an empty snapshot: step 2 is skipped instead.
    torch.manual_seed(0)
    model = nn.BatchNorm1d(3).eval()
    probe = Probe(
        model,
        nn.CrossEntropyLoss(),
        run="late",
        url=None,
        every=1,
        spool_dir=tmp_path,
        config=ViViTConfig(backend="backpack"),
    )
    for step in range(4):
        x, y = _batch(step)
        loss = probe.loss_fn(model(x[:, :3]), y)
        with probe(step):
            loss.backward()
            if step == 1:
                model.train()
        model.eval()
    probe.close()
    snaps, events = _spooled(tmp_path)
    assert [(s.step, len(s.groups[0].eigvals) > 0) for s in snaps] == [
        (0, True),
        (1, True),
        (3, True),
    ]
    assert [(e.step, e.level) for e in events] == [(1, "error")]


def test_model_needing_the_converter_is_measured_in_loop_by_func(tmp_path: Path) -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(x + self.a(x))

    torch.manual_seed(0)
    model = Residual()
    with pytest.raises(ConfigError, match="backend='func'"):
        config = ViViTConfig(backend="backpack")
        Probe(model, nn.CrossEntropyLoss(), run="res", url=None, spool_dir=tmp_path, config=config)
    in_loop = Probe(model, nn.CrossEntropyLoss(), run="res", url=None, spool_dir=tmp_path / "in")
    assert in_loop.backend == "func"
    _train(model, 3, in_loop)
    in_loop.close()
    assert [s.step for s in _spooled(tmp_path / "in")[0]] == [0]
    probe = Probe(
        model,
        nn.CrossEntropyLoss(),
        run="res",
        url=None,
        every=2,
        spool_dir=tmp_path,
        monitor_batch=_batch(99),
    )
    _train(model, 3, probe)
    probe.close()
    assert [s.step for s in _spooled(tmp_path)[0]] == [0, 2]


def test_construction_checks() -> None:
    with pytest.raises(UnsupportedLayerError):
        Probe(
            nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)),
            nn.MSELoss(),
            run="r",
            url=None,
            spool_dir=".",
            config=ViViTConfig(backend="backpack"),
        )
    with pytest.raises(ConfigError, match="run name"):
        Probe(_mlp(), nn.CrossEntropyLoss(), run="bad name", url=None, spool_dir=".")
    with pytest.raises(ConfigError, match="spool_dir"):
        Probe(_mlp(), nn.CrossEntropyLoss(), run="r", url=None)
    with pytest.raises(ConfigError):
        Probe(_mlp(), nn.CrossEntropyLoss(), run="r", url=None, spool_dir=".", every=0)


# -- held-out mode -----------------------------------------------------------------------


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.3), nn.Linear(6, 3)
    )


def test_held_out_touches_no_training_state(tmp_path: Path) -> None:
    model = _bn_model()
    plain = copy.deepcopy(model)
    monitor = _batch(123, n=6)
    probe = Probe(
        model,
        nn.CrossEntropyLoss(),
        run="held",
        url=None,
        every=2,
        spool_dir=tmp_path,
        monitor_batch=monitor,
    )

    def run(net: nn.Module, probe: Probe | None) -> tuple[list, dict, torch.Tensor]:
        torch.manual_seed(7)  # dropout masks come from the global RNG
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        loss_fn = probe.loss_fn if probe else nn.CrossEntropyLoss()
        grads = []
        for step in range(5):
            x, y = _batch(step)
            opt.zero_grad()
            loss = loss_fn(net(x), y)
            if probe is None:
                loss.backward()
            else:
                with probe(step):
                    loss.backward()
                    before = [p.grad for p in net.parameters()]
                assert all(
                    a is b for a, b in zip(before, [p.grad for p in net.parameters()], strict=True)
                )
            grads.append([p.grad.clone() for p in net.parameters()])
            opt.step()
        return grads, opt.state_dict(), torch.random.get_rng_state()

    got = run(model, probe)
    want = run(plain, None)
    probe.close()
    for a, b in zip(got[0], want[0], strict=True):  # gradients
        assert all(torch.equal(g, h) for g, h in zip(a, b, strict=True))
    for key, state in got[1]["state"].items():  # optimizer state
        assert all(torch.equal(state[k], want[1]["state"][key][k]) for k in state)
    assert torch.equal(got[2], want[2])  # RNG state
    for name, buf in model.state_dict().items():  # BatchNorm running statistics, weights
        assert torch.equal(buf, plain.state_dict()[name]), name
    assert all(m.training for m in model.modules())
    snaps, events = _spooled(tmp_path)
    assert [s.step for s in snaps] == [0, 2, 4] and events == []
    assert all(s.config.mode == "held-out" and s.batch_size == 6 for s in snaps)


# -- failure policy ----------------------------------------------------------------------


def test_errors_in_the_probe_do_not_stop_training(tmp_path: Path) -> None:
    model = _mlp()
    config = ViViTConfig(backend="backpack")
    probe = Probe(
        model,
        nn.CrossEntropyLoss(),
        run="fail",
        url=None,
        every=2,
        spool_dir=tmp_path,
        config=config,
    )

    def sabotage(step: int) -> None:
        if step == 1:  # a late unsupported layer, found at the next scheduled step
            model.append(nn.LayerNorm(3))
        if step == 3:
            model.pop(-1)

    grads = _train(model, 6, probe, after_step=sabotage)
    assert len(grads) == 6
    probe.close()
    snaps, events = _spooled(tmp_path)
    assert [s.step for s in snaps] == [0, 4]
    assert [e.level for e in events] == ["error"] and "LayerNorm" in events[0].message


def test_nan_loss_is_reported_and_training_goes_on(tmp_path: Path) -> None:
    model = _mlp()
    probe = Probe(model, nn.MSELoss(), run="nan", url=None, every=1, spool_dir=tmp_path)
    for step in range(3):  # no optimizer step: the NaN gradients stay out of the weights
        x, _ = _batch(step)
        target = torch.full((8, 3), float("nan") if step == 1 else 0.0)
        model.zero_grad()
        loss = probe.loss_fn(model(x), target)
        with probe(step):
            loss.backward()
        assert all(p.grad is not None for p in model.parameters())
    probe.close()
    snaps, events = _spooled(tmp_path)
    assert [s.step for s in snaps] == [0, 2]
    assert [(e.step, e.level) for e in events] == [(1, "error")]
    assert "NonFiniteLossError" in events[0].message


def test_a_scalar_call_of_the_loss_does_not_reach_the_loop(tmp_path: Path) -> None:
    # The loss hook runs inside the user's forward: a call on 0-dim tensors (an extra
    # penalty term) must not raise there; the step's snapshot fails and is reported.
    model = _mlp()
    plain = copy.deepcopy(model)
    probe = Probe(model, nn.MSELoss(), run="scalar", url=None, every=1, spool_dir=tmp_path)
    for step in range(2):
        x, _ = _batch(step)
        for net in (model, plain):
            net.zero_grad()
            out = net(x)
            loss = probe.loss_fn(out, torch.zeros(8, 3))
            if step == 1:
                loss = loss + probe.loss_fn(out.sum(), torch.tensor(0.0))
            if net is plain:
                loss.backward()
                continue
            with probe(step):
                loss.backward()
        for p, q in zip(model.parameters(), plain.parameters(), strict=True):
            assert torch.equal(p.grad, q.grad)  # the backward ran in full
    probe.close()
    snaps, events = _spooled(tmp_path)
    assert [s.step for s in snaps] == [0]
    assert [(e.step, e.level) for e in events] == [(1, "error")]


def test_strict_mode_raises(tmp_path: Path) -> None:
    model = _mlp()
    probe = Probe(
        model, nn.MSELoss(), run="strict", url=None, every=1, spool_dir=tmp_path, strict=True
    )
    x, _ = _batch(0)
    loss = probe.loss_fn(model(x), torch.full((8, 3), float("inf")))
    with pytest.raises(Exception, match="loss is"), probe(0):
        loss.backward()
    probe.close()


# -- the real server ---------------------------------------------------------------------


def _run_against(
    url: str,
    run: str,
    steps: int,
    every: int,
    spool: Path,
    after_step: Callable[[int], None] | None = None,
    options: TransportOptions = FAST,
) -> Probe:
    model = _mlp()
    probe = Probe(
        model,
        nn.CrossEntropyLoss(),
        run=run,
        url=url,
        every=every,
        spool_dir=spool,
        transport_options=options,
    )
    _train(model, steps, probe, after_step=after_step)
    return probe


def _wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.02)  # a poll interval, not a synchronisation


def test_server_down_at_start(tmp_path: Path) -> None:
    server = ServerProcess(db=tmp_path / "db.sqlite", port=free_port())
    probe = _run_against(server.url(), "late", 9, 2, tmp_path / "spool")
    _wait_for(lambda: len(Spool(tmp_path / "spool")) == 5)  # all spilled, none lost
    server.start()
    try:
        report = probe.close(timeout=30)
        assert (report.delivered, report.spooled) == (5, 0)
        assert _stored(server, "late") == [0, 2, 4, 6, 8]
    finally:
        server.stop()


def test_server_killed_mid_run_and_restarted(tmp_path: Path) -> None:
    with running_server(tmp_path / "db.sqlite") as server:

        def chaos(step: int) -> None:
            if step == 4:  # some snapshots stored, then SIGKILL with the probe connected
                _wait_for(lambda: len(_stored(server, "killed")) >= 2)
                server.kill()
            if step == 10:
                server.start()

        probe = _run_against(server.url(), "killed", 16, 2, tmp_path / "spool", after_step=chaos)
        report = probe.close(timeout=30)
        assert report.spooled == 0
        assert _stored(server, "killed") == list(range(0, 16, 2))


def test_slow_server_resends_and_stores_once(tmp_path: Path) -> None:
    options = TransportOptions(queue_size=64, connect_timeout=0.5, ack_timeout=0.5, backoff_max=0.2)
    with running_server(tmp_path / "db.sqlite") as server:
        assert server.proc is not None
        pid = server.proc.pid

        def pause(step: int) -> None:
            if step == 1:
                os.kill(pid, signal.SIGSTOP)
            if step == 8:
                _wait_for(lambda: len(Spool(tmp_path / "spool")) >= 1)  # a timeout happened
                os.kill(pid, signal.SIGCONT)

        try:
            probe = _run_against(server.url(), "slow", 12, 1, tmp_path / "spool", pause, options)
        finally:
            os.kill(pid, signal.SIGCONT)
        report = probe.close(timeout=30)
        assert report.spooled == 0
        assert _stored(server, "slow") == list(range(12))


def test_queue_overflow_spills_to_the_spool(tmp_path: Path) -> None:
    options = TransportOptions(queue_size=2, connect_timeout=5.0, ack_timeout=20.0)
    spool_dir = tmp_path / "spool"
    with running_server(tmp_path / "db.sqlite") as server:
        assert server.proc is not None
        pid = server.proc.pid
        os.kill(pid, signal.SIGSTOP)  # acks stop: the queue fills, the rest spills
        try:
            probe = _run_against(server.url(), "overflow", 10, 1, spool_dir, options=options)
            spilled = len(Spool(spool_dir))
        finally:
            os.kill(pid, signal.SIGCONT)
        assert spilled >= 10 - 2 - 1  # queue of 2, at most 1 in flight
        report = probe.close(timeout=30)
        assert report.spooled == 0
        assert _stored(server, "overflow") == list(range(10))
        events = httpx.get(server.url("/api/runs/overflow/events"), timeout=10).json()
        assert events == []


# -- loops people write: epochs, short batches -------------------------------------------


def test_epoch_loop_restarting_its_count_loses_no_snapshot(tmp_path: Path) -> None:
    """``for epoch ...: for step, batch in enumerate(loader)``: every scheduled step lands."""
    model = _mlp()
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with running_server(tmp_path / "db.sqlite") as server:
        probe = Probe(model, loss_fn, run="epochs", url=server.url(), every=5)
        for epoch in range(3):
            for step in range(15):  # enumerate(loader) restarts at 0 every epoch
                x, y = _batch(100 * epoch + step)
                opt.zero_grad()
                loss = loss_fn(model(x), y)
                with probe(step):
                    loss.backward()
                opt.step()
        report = probe.close()
        assert report.spooled == 0
        stored = httpx.get(server.url("/api/runs/epochs/snapshots"), timeout=10).json()
        events = httpx.get(server.url("/api/runs/epochs/events"), timeout=10).json()
    assert [s["step"] for s in stored] == list(range(0, 45, 5))
    assert [s.get("user_step") for s in stored] == [None] * 3 + [0, 5, 10] * 2
    warnings_ = [e for e in events if e["level"] == "warning"]
    assert len(warnings_) == 1 and "went back from 14 to 0" in warnings_[0]["message"]


def test_a_short_last_batch_uses_all_its_samples(tmp_path: Path) -> None:
    model = _mlp()
    config = ViViTConfig(subsample=6)
    probe = Probe(
        model,
        nn.CrossEntropyLoss(),
        run="short",
        url=None,
        every=1,
        spool_dir=tmp_path,
        config=config,
    )
    for step, n in enumerate([8, 4, 8, 4]):
        x, y = _batch(step, n)
        loss = probe.loss_fn(model(x), y)
        with probe(step):
            loss.backward()
    probe.close()
    snaps, events = _spooled(tmp_path)
    assert [s.step for s in snaps] == [0, 1, 2, 3]
    # what each snapshot's curvature used: all 4 samples of the short batches
    assert [s.config.subsample for s in snaps] == [list(range(6)), list(range(4))] * 2
    assert [(e.step, e.level) for e in events] == [(1, "warning")]
    assert "subsample=6 on a batch of 4" in events[0].message
    snap = compute_snapshot(model, nn.CrossEntropyLoss(), *_batch(9, 3), config)
    assert snap.groups[0].lambdas.shape[0] == 3


def test_close_without_a_server_returns_at_once_and_says_how_to_upload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No server at all: close() does not wait out its timeout; everything is spooled."""
    options = TransportOptions(connect_timeout=0.5)
    url = f"http://127.0.0.1:{free_port()}"
    probe = _run_against(url, "nobody", 5, 2, tmp_path / "spool", options=options)
    started = time.monotonic()
    report = probe.close(timeout=120)
    assert time.monotonic() - started < 60  # not the 120 s it was allowed
    assert (report.delivered, report.spooled) == (0, 3)
    assert f"curvscope upload {report.spool_dir} --url {url}" in caplog.text


@pytest.mark.parametrize("backend", ["backpack", "func"])
def test_compute_snapshot_inside_an_armed_step(tmp_path: Path, backend: str) -> None:
    """A one-off snapshot between the loop's forward and backward disturbs neither."""
    model = _mlp().double()
    loss_fn = nn.CrossEntropyLoss()
    config = ViViTConfig(backend=backend)
    probe = Probe(
        model, loss_fn, run="nested", url=None, every=2, spool_dir=tmp_path, config=config
    )
    x, y = _batch(0)
    other_x, other_y = _batch(1)
    x, other_x = x.double(), other_x.double()
    expected = compute_snapshot(model, loss_fn, x, y, config).groups[0].eigvals
    expected_other = compute_snapshot(model, loss_fn, other_x, other_y, config).groups[0].eigvals
    loss = loss_fn(model(x), y)  # step 0 is armed
    nested = compute_snapshot(model, loss_fn, other_x, other_y, config).groups[0].eigvals
    with probe(0):
        loss.backward()
    probe.close()
    snaps, events = _spooled(tmp_path)
    assert events == []
    assert torch.allclose(nested, expected_other, rtol=1e-12, atol=0)
    (snap,) = snaps
    ours = torch.tensor(snap.groups[0].eigvals, dtype=torch.float64)
    assert torch.allclose(ours, expected, rtol=1e-12, atol=0)
