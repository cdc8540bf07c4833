"""``compute_snapshot`` leaves nothing behind and runs in the model's dtype and device."""

from __future__ import annotations

import gc
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
