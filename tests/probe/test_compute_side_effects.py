"""``compute_snapshot`` leaves nothing behind and runs in the model's dtype and device."""

from __future__ import annotations

import gc
import math
import warnings

import pytest
import torch
from torch import nn

from curvscope.probe import ViViTConfig, compute_snapshot
from tests.probe.reference import dense_vivit
from tests.probe.settings import cnn

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _problem(dtype: torch.dtype = torch.float64, device: str = "cpu"):
    torch.manual_seed(1)
    model = cnn().to(dtype=dtype, device=device)
    x = torch.randn(4, 2, 6, 6, dtype=dtype, device=device)
    y = torch.randint(0, 3, (4,), device=device)
    return model, nn.CrossEntropyLoss(), x, y


def _live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance() on torch's deprecated module attributes
        warnings.simplefilter("ignore", FutureWarning)
        return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


def test_gradients_are_restored_exactly() -> None:
    model, loss_fn, x, y = _problem()
    loss_fn(model(x), y).backward()
    before = [(p.grad, p.grad.clone()) for p in model.parameters()]
    compute_snapshot(model, loss_fn, x, y, ViViTConfig(eigenvectors=2))
    for p, (obj, value) in zip(model.parameters(), before, strict=True):
        assert p.grad is obj
        assert torch.equal(p.grad, value)


def test_unset_gradients_stay_unset() -> None:
    model, loss_fn, x, y = _problem()
    compute_snapshot(model, loss_fn, x, y)
    assert all(p.grad is None for p in model.parameters())


def test_nothing_stays_attached() -> None:
    model, loss_fn, x, y = _problem()
    attrs = {id(m): set(vars(m)) for m in [*model.modules(), loss_fn]}
    param_attrs = {id(p): set(vars(p)) for p in model.parameters()}
    hooks = {id(m): (len(m._forward_hooks), len(m._backward_hooks)) for m in model.modules()}
    compute_snapshot(model, loss_fn, x, y, ViViTConfig(eigenvectors=1))
    for m in [*model.modules(), loss_fn]:
        assert set(vars(m)) == attrs[id(m)], type(m).__name__
    for m in model.modules():
        assert (len(m._forward_hooks), len(m._backward_hooks)) == hooks[id(m)]
    for p in model.parameters():
        assert set(vars(p)) == param_attrs[id(p)]


def test_memory_returns_to_baseline() -> None:
    model, loss_fn, x, y = _problem()
    compute_snapshot(model, loss_fn, x, y)  # warm-up: lazily created library state
    baseline = _live_tensors()
    snap = compute_snapshot(model, loss_fn, x, y, ViViTConfig(eigenvectors=3))
    assert _live_tensors() > baseline  # the snapshot's own results are alive
    del snap
    assert _live_tensors() == baseline


@pytest.mark.parametrize("device", DEVICES)
def test_float32_agrees_with_float64_reference(device: str) -> None:
    model, loss_fn, x, y = _problem(torch.float32, device)
    snap = compute_snapshot(model, loss_fn, x, y)
    group = snap.groups[0]
    assert group.eigvals.dtype == torch.float32
    assert group.eigvals.device.type == device
    model64 = model.double().cpu()
    ref = dense_vivit(model64, loss_fn, x.double().cpu(), y.cpu(), list(model64.parameters()))
    k = min(group.eigvals.shape[0], 5)
    lam = group.eigvals[:k].double().cpu()
    assert torch.allclose(lam, ref.eigvals[:k], rtol=1e-4, atol=1e-5 * float(ref.eigvals[0]))
    gam = group.gammas[:, 0].double().cpu()
    gam_ref = x.shape[0] * ref.grads @ ref.eigvecs[:, 0]
    sign = 1.0 if float(gam @ gam_ref) >= 0 else -1.0
    assert torch.allclose(sign * gam, gam_ref, atol=1e-4 * float(gam_ref.abs().max()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_in_float64() -> None:
    model, loss_fn, x, y = _problem()
    cpu = compute_snapshot(model, loss_fn, x, y).groups[0]
    gpu = compute_snapshot(model.cuda(), loss_fn, x.cuda(), y.cuda()).groups[0]
    assert torch.allclose(gpu.eigvals.cpu(), cpu.eigvals, rtol=1e-10)
    assert torch.allclose(gpu.lambdas.cpu(), cpu.lambdas, rtol=1e-8, atol=1e-12)


# -- the func backend: BatchNorm in training mode, dropout, failures ----------------------

CPU_AND_CUDA = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(
            not torch.cuda.is_available(), reason="needs a CUDA device (the CUDA RNG and buffers)"
        ),
    ),
]


class _Tripwire(nn.Module):
    """Raises in its forward while ``armed`` (after BatchNorm and Dropout have run)."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            raise RuntimeError("tripwire")
        return x


def _train_mode_problem(device: str):
    """BatchNorm in training mode, Dropout, LayerNorm; one BatchNorm in eval mode."""
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Linear(5, 6),
        nn.BatchNorm1d(6),
        nn.ReLU(),
        nn.Dropout(0.3),
        _Tripwire(),
        nn.Linear(6, 6),
        nn.BatchNorm1d(6),
        nn.LayerNorm(6),
        nn.Tanh(),
        nn.Linear(6, 3),
    ).to(device)
    model.train()
    model[6].eval()  # mixed modes must come back as they were, module by module
    with torch.no_grad():
        model[6].running_mean.normal_()
        model[6].running_var.uniform_(0.5, 2.0)
    x = torch.randn(8, 5, device=device)
    y = torch.randint(0, 3, (8,), device=device)
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(model(x), y).backward()  # populated .grad and moved statistics, as in a loop
    return model, loss_fn, x, y


def _hook_counts(modules: list[nn.Module]) -> list[tuple[int, ...]]:
    from torch.nn.modules import module as module_globals

    global_hooks = tuple(
        len(getattr(module_globals, name))
        for name in (
            "_global_forward_pre_hooks",
            "_global_forward_hooks",
            "_global_backward_pre_hooks",
            "_global_backward_hooks",
        )
    )
    return [global_hooks] + [
        (
            len(m._forward_pre_hooks),
            len(m._forward_hooks),
            len(m._backward_pre_hooks),
            len(m._backward_hooks),
        )
        for m in modules
    ]


def _observable_state(model: nn.Module, loss_fn: nn.Module, device: str) -> dict[str, object]:
    return {
        "grads": [(p.grad, p.grad.clone()) for p in model.parameters()],
        "buffers": {name: b.clone() for name, b in model.named_buffers()},
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if device == "cuda" else [],
        "modes": [m.training for m in model.modules()],
        "hooks": _hook_counts([*model.modules(), loss_fn]),
        "attrs": [set(vars(m)) for m in [*model.modules(), loss_fn]],
    }


def _assert_unchanged(model: nn.Module, loss_fn: nn.Module, device: str, before: dict) -> None:
    after = _observable_state(model, loss_fn, device)
    for p, (obj, value) in zip(model.parameters(), before["grads"], strict=True):
        assert p.grad is obj and torch.equal(p.grad, value)
    assert after["buffers"].keys() == before["buffers"].keys()
    for name, buf in after["buffers"].items():  # running_mean/var, num_batches_tracked
        assert torch.equal(buf, before["buffers"][name]), name
    assert torch.equal(after["rng"], before["rng"]), "the CPU RNG state moved"
    assert len(after["cuda_rng"]) == len(before["cuda_rng"])
    for got, want in zip(after["cuda_rng"], before["cuda_rng"], strict=True):
        assert torch.equal(got, want), "the CUDA RNG state moved"
    assert after["modes"] == before["modes"]
    assert after["hooks"] == before["hooks"]
    assert after["attrs"] == before["attrs"]
    assert torch._C._len_torch_function_stack() == 0, "a TorchFunctionMode is still on"


@pytest.mark.parametrize("device", CPU_AND_CUDA)
def test_func_backend_leaves_training_state_alone(device: str) -> None:
    model, loss_fn, x, y = _train_mode_problem(device)
    before = _observable_state(model, loss_fn, device)
    config = ViViTConfig(backend="func", eigenvectors=1)
    snap = compute_snapshot(model, loss_fn, x, y, config)
    _assert_unchanged(model, loss_fn, device, before)
    assert snap.backend == "func"
    group = snap.groups[0]
    assert group.eigvals.numel() > 0 and bool(group.eigvals.isfinite().all())
    assert group.eigvals.device.type == device
    # The same snapshot again (the RNG and statistics were restored: same masks, same batch
    # statistics), and the default backend picks func for BatchNorm in training mode.
    again = compute_snapshot(model, loss_fn, x, y)
    assert again.backend == "func"
    torch.testing.assert_close(again.groups[0].eigvals, group.eigvals)
    _assert_unchanged(model, loss_fn, device, before)


@pytest.mark.parametrize("device", CPU_AND_CUDA)
@pytest.mark.parametrize("failure", ["raising-forward", "nan-loss", "backend-error"])
def test_func_backend_leaves_training_state_alone_on_failure(
    device: str, failure: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from curvscope.probe import CurvscopeError
    from curvscope.probe.backends import func

    model, loss_fn, x, y = _train_mode_problem(device)
    before = _observable_state(model, loss_fn, device)
    if failure == "raising-forward":  # in the forward, with the tracer on
        model[4].armed = True
        expected: type[Exception] = RuntimeError
    elif failure == "nan-loss":  # the batch statistics (and running ones) turn NaN
        x = x.clone()
        x[0, 0] = math.nan
        expected = CurvscopeError
    else:  # in the backend's backward passes (CostError), after the forward and the loss
        monkeypatch.setattr(func, "MAX_GRAM_SIZE", 1)
        expected = CurvscopeError
    with pytest.raises(expected):
        compute_snapshot(model, loss_fn, x, y, ViViTConfig(backend="func"))
    model[4].armed = False
    monkeypatch.undo()
    _assert_unchanged(model, loss_fn, device, before)
    # Nothing of the failed call is in the way of the next one.
    snap = compute_snapshot(model, loss_fn, x if failure != "nan-loss" else x.nan_to_num(), y)
    assert snap.backend == "func" and snap.groups[0].eigvals.numel() > 0
