"""``hessian_spectrum``: against dense references, and it leaves the model as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvscope.probe.errors import BatchSizeMismatchError, ConfigError, NonFiniteLossError
from curvscope.probe.hessian import HessianSpectrum, hessian_spectrum, moments
from tests.probe.hessian.problems import BY_NAME, PROBLEMS, Problem
from tests.probe.hessian.reference import dense_hessian
from tests.probe.hessian.test_hvp import DropoutNet


def _reference(problem: Problem) -> torch.Tensor:
    model, x, y, params = problem.build()
    h = dense_hessian(
        model, problem.loss_fn, x, y, params, problem.outputs, coupled=problem.coupled
    )
    return torch.linalg.eigvalsh(h)


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
def test_top_k_and_minimum_equal_the_dense_spectrum(problem: Problem) -> None:
    want = _reference(problem)
    model, x, y, params = problem.build()
    group = params if problem.group else None
    got = hessian_spectrum(
        model, problem.loss_fn, x, y, params=group, top_k=5, outputs=problem.outputs, seed=0
    )
    scale = float(want.abs().max())
    assert isinstance(got, HessianSpectrum)
    assert got.converged
    assert got.eigvals.dtype == torch.float64 and got.eigvals.shape == (5,)
    torch.testing.assert_close(got.eigvals, want.flip(0)[:5], rtol=1e-8, atol=1e-12 * scale)
    assert got.min_eigval == pytest.approx(float(want[0]), rel=1e-8, abs=1e-12 * scale)
    assert got.density_nodes is None and got.density_weights is None
    assert 0 < got.matvecs <= want.shape[0]


def test_slq_density_comes_along() -> None:
    problem = BY_NAME["mlp-tanh-ce"]
    model, x, y, _ = problem.build()
    got = hessian_spectrum(model, problem.loss_fn, x, y, top_k=2, slq_probes=3, slq_steps=7, seed=1)
    assert got.density_nodes is not None and got.density_weights is not None
    assert got.density_nodes.shape == got.density_weights.shape == (3, 7)
    assert float(moments(got.density_nodes, got.density_weights, [0])[0]) == pytest.approx(1.0)
    # the extreme Ritz values of the probes lie inside the spectrum
    want = _reference(problem)
    assert float(got.density_nodes.max()) <= float(want[-1]) + 1e-10
    assert float(got.density_nodes.min()) >= float(want[0]) - 1e-10
    without = hessian_spectrum(model, problem.loss_fn, x, y, top_k=2, seed=1)
    assert got.matvecs == without.matvecs + 3 * 7


def test_seed_makes_it_reproducible() -> None:
    problem = BY_NAME["mlp-tanh-ce"]
    model, x, y, _ = problem.build()
    kwargs = {"top_k": 2, "max_steps": 12, "slq_probes": 2, "slq_steps": 4}
    a = hessian_spectrum(model, problem.loss_fn, x, y, seed=3, **kwargs)
    b = hessian_spectrum(model, problem.loss_fn, x, y, seed=3, **kwargs)
    assert torch.equal(a.eigvals, b.eigvals) and a.min_eigval == b.min_eigval
    assert torch.equal(a.density_nodes, b.density_nodes)
    assert not a.converged and a.matvecs == 12 + 2 * 4
    c = hessian_spectrum(model, problem.loss_fn, x, y, seed=None, **kwargs)
    assert c.eigvals.shape == (2,)


def test_float32_model_agrees_with_the_float64_reference() -> None:
    problem = BY_NAME["cnn-ce"]
    want = _reference(problem)
    model, x, y, _ = problem.build()
    got = hessian_spectrum(model.float(), problem.loss_fn, x.float(), y, top_k=3, seed=0)
    assert got.eigvals.dtype == torch.float32
    assert got.converged  # at the resolution of float32
    torch.testing.assert_close(got.eigvals.double(), want.flip(0)[:3], rtol=1e-4, atol=1e-5)
    assert got.min_eigval == pytest.approx(float(want[0]), rel=1e-4)


def test_autocast_is_switched_off_and_half_weights_are_measured_in_float32() -> None:
    problem = BY_NAME["mlp-tanh-ce"]
    model, x, y, _ = problem.build()
    model, x = model.float(), x.float()
    plain = hessian_spectrum(model, problem.loss_fn, x, y, top_k=2, seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = hessian_spectrum(model, problem.loss_fn, x, y, top_k=2, seed=0)
    torch.testing.assert_close(cast.eigvals, plain.eigvals, rtol=0, atol=0)
    half = model.to(torch.bfloat16)
    saved = [(p, p.data_ptr(), p.detach().clone()) for p in half.parameters()]
    low = hessian_spectrum(half, problem.loss_fn, x.to(torch.bfloat16), y, top_k=2, seed=0)
    assert low.eigvals.dtype == torch.float32
    for p, ptr, value in saved:  # the very storage, bit for bit
        assert p.dtype == torch.bfloat16 and p.data_ptr() == ptr and torch.equal(p, value)
    torch.testing.assert_close(low.eigvals, plain.eigvals, rtol=0.1, atol=1e-2)


@pytest.mark.parametrize("method", ["double-backward", "forward-over-reverse"])
def test_the_model_is_left_exactly_as_it_was(method: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.3), nn.Linear(6, 3)
    ).double()
    model.train()
    model[1].eval()  # modes are mixed on purpose
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    model[1].train()
    loss_fn(model(x), y).backward()  # gradients and running statistics exist
    model[1].eval()
    model[4].bias.grad = None  # one unset gradient
    grads = [(p.grad, None if p.grad is None else p.grad.clone()) for p in model.parameters()]
    buffers = [(b, b.clone()) for b in model.buffers()]
    modes = [m.training for m in model.modules()]
    attrs = {id(m): set(vars(m)) for m in [*model.modules(), loss_fn]}
    hooks = [(len(m._forward_hooks), len(m._backward_hooks)) for m in model.modules()]
    rng = torch.get_rng_state()
    hessian_spectrum(model, loss_fn, x, y, top_k=2, slq_probes=1, slq_steps=3, method=method)
    model[1].train()  # BatchNorm in training mode: running statistics must not move
    hessian_spectrum(model, loss_fn, x, y, top_k=2, method=method)
    model[1].eval()
    for p, (obj, value) in zip(model.parameters(), grads, strict=True):
        assert p.grad is obj
        assert value is None or torch.equal(p.grad, value)
    for b, saved in buffers:
        assert torch.equal(b, saved)
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)
    for m in [*model.modules(), loss_fn]:
        assert set(vars(m)) == attrs[id(m)]
    assert [(len(m._forward_hooks), len(m._backward_hooks)) for m in model.modules()] == hooks


def test_dropout_model_gives_a_consistent_symmetric_operator() -> None:
    torch.manual_seed(0)
    model = DropoutNet().double().train()
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    got = hessian_spectrum(model, nn.CrossEntropyLoss(), x, y, top_k=3, seed=0)
    assert got.converged  # a random operator per product would not converge


def test_bad_arguments_are_refused() -> None:
    problem = BY_NAME["mlp-tanh-ce"]
    model, x, y, _ = problem.build()
    loss_fn = problem.loss_fn
    with pytest.raises(ConfigError, match="top_k"):
        hessian_spectrum(model, loss_fn, x, y, top_k=0)
    with pytest.raises(ConfigError, match="tol"):
        hessian_spectrum(model, loss_fn, x, y, tol=0.0)
    with pytest.raises(ConfigError, match="max_steps"):
        hessian_spectrum(model, loss_fn, x, y, max_steps=0)
    with pytest.raises(ConfigError, match="slq"):
        hessian_spectrum(model, loss_fn, x, y, slq_probes=-1)
    with pytest.raises(ConfigError, match="not a trainable parameter"):
        hessian_spectrum(model, loss_fn, x, y, params=[nn.Parameter(torch.ones(2))])
    with pytest.raises(BatchSizeMismatchError):
        hessian_spectrum(model, loss_fn, x, y[:3])
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable"):
        hessian_spectrum(frozen, loss_fn, torch.ones(3, 2), torch.tensor([0, 1, 0]))
    with pytest.raises(NonFiniteLossError):
        hessian_spectrum(model, loss_fn, x * float("nan"), y)
