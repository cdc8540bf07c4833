"""``GroupHessian``: products against dense ``torch.func`` Hessians, both methods, no leftovers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvscope.probe.hessian import GroupHessian
from tests.probe.hessian.problems import BY_NAME, PROBLEMS, Problem
from tests.probe.hessian.reference import dense_hessian, flat_loss

METHODS = ["double-backward", "forward-over-reverse"]


def _setup(problem: Problem, method: str = "auto"):
    model, x, y, params = problem.build()
    reference = dense_hessian(
        model, problem.loss_fn, x, y, params, problem.outputs, coupled=problem.coupled
    )
    hessian = GroupHessian(
        model, problem.loss_fn, x, y, params, outputs=problem.outputs, method=method
    )
    return model, reference, hessian


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
def test_products_equal_the_dense_hessian(problem: Problem, method: str) -> None:
    _, reference, hessian = _setup(problem, method)
    assert hessian.dim == reference.shape[0]
    assert hessian.method == method
    scale = float(reference.abs().max())
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(hessian.dim, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(hessian.matvec(v), reference @ v, rtol=1e-12, atol=1e-12 * scale)
    assert hessian.matvecs == 3


@pytest.mark.parametrize("name", ["mlp-tanh-ce", "cnn-ce", "bn-train-ce", "group-mixed"])
def test_dense_is_the_reference(name: str) -> None:
    _, reference, hessian = _setup(BY_NAME[name])
    dense = hessian.dense()
    torch.testing.assert_close(dense, reference, rtol=1e-12, atol=1e-12 * float(dense.abs().max()))
    assert hessian.matvecs == hessian.dim


def test_loss_is_the_batch_loss() -> None:
    problem = BY_NAME["cnn-ce"]
    model, x, y, params = problem.build()
    for method in METHODS:
        hessian = GroupHessian(model, problem.loss_fn, x, y, params, method=method)
        with torch.no_grad():
            loss = float(problem.loss_fn(model(x), y))
        assert hessian.loss == pytest.approx(loss, rel=1e-14)


@pytest.mark.parametrize("method", METHODS)
def test_batchnorm_in_training_mode_matches_finite_differences(method: str) -> None:
    # independent of any second derivative: central differences of the gradient
    problem = BY_NAME["bn-train-ce"]
    model, x, y, params = problem.build()
    loss, theta = flat_loss(model, problem.loss_fn, x, y, params)
    grad = torch.func.grad(loss)
    hessian = GroupHessian(model, problem.loss_fn, x, y, params, method=method)
    v = torch.randn(hessian.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = v / v.norm()
    eps = 1e-5  # truncation error ~ eps² ‖∇³L‖ (torch.func.hessian is off by ~0.1 here)
    fd = (grad(theta + eps * v) - grad(theta - eps * v)) / (2 * eps)
    torch.testing.assert_close(hessian.matvec(v), fd, rtol=0, atol=1e-8)


def test_auto_prefers_double_backward() -> None:
    for name in ["cnn-ce", "mlp-tanh-ce", "bn-train-ce"]:
        model, x, y, params = BY_NAME[name].build()
        assert GroupHessian(model, BY_NAME[name].loss_fn, x, y, params).method == (
            "double-backward"
        )


class _TanhGrad(torch.autograd.Function):
    """``g · (1 − y²)``, whose own backward is missing (it raises)."""

    @staticmethod
    def forward(g, y):  # type: ignore[override]
        return g * (1 - y * y)

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[override]
        ctx.save_for_forward(*inputs)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        raise NotImplementedError("no double backward")

    @staticmethod
    def jvp(ctx, g_dot, y_dot):  # type: ignore[override]
        g, y = ctx.saved_tensors
        return g_dot * (1 - y * y) - 2 * g * y * y_dot


class NoDoubleBackward(torch.autograd.Function):
    """``tanh`` whose backward cannot be differentiated (double backward raises)."""

    @staticmethod
    def forward(x):  # type: ignore[override]
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[override]
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return _TanhGrad.apply(grad, y)

    @staticmethod
    def jvp(ctx, x_dot):  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return x_dot * (1 - y * y)


class NoForwardAD(torch.autograd.Function):
    """``tanh`` as an old-style Function: no ``jvp``, no ``torch.func`` support."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


class Wrap(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn
        self.inp = nn.Linear(5, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        return self.out(self.fn(self.inp(x)))


@pytest.mark.parametrize(
    ("fn", "works"),
    [(NoDoubleBackward, "forward-over-reverse"), (NoForwardAD, "double-backward")],
)
def test_auto_uses_the_method_that_works(fn, works: str) -> None:
    torch.manual_seed(0)
    model = Wrap(fn.apply).double()
    x, y = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    params = list(model.parameters())
    loss_fn = nn.CrossEntropyLoss()
    hessian = GroupHessian(model, loss_fn, x, y, params)  # double backward first
    v = torch.randn(hessian.dim, dtype=torch.float64)
    hv = hessian.matvec(v)
    assert hessian.method == works
    torch.manual_seed(0)
    plain = Wrap(torch.tanh).double()
    reference = dense_hessian(plain, loss_fn, x, y, list(plain.parameters()))
    torch.testing.assert_close(hv, reference @ v, rtol=1e-12, atol=1e-12)
    other = "forward-over-reverse" if works == "double-backward" else "double-backward"
    with pytest.raises((RuntimeError, NotImplementedError)):
        GroupHessian(model, loss_fn, x, y, params, method=other).matvec(v)  # type: ignore[arg-type]


class DropoutNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 6)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(6, 3)

    def forward(self, x, mask=None):
        h = torch.tanh(self.inp(x))
        return self.out(self.drop(h) if mask is None else h * mask)


@pytest.mark.parametrize("method", METHODS)
def test_dropout_uses_the_masks_of_one_forward_pass_from_the_current_state(method: str) -> None:
    torch.manual_seed(0)
    model = DropoutNet().double().train()
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    params = list(model.parameters())
    torch.manual_seed(123)
    state = torch.get_rng_state()
    mask = nn.functional.dropout(torch.ones(8, 6, dtype=torch.float64), 0.5)  # the masks drawn
    torch.set_rng_state(state)
    hessian = GroupHessian(model, nn.CrossEntropyLoss(), x, y, params, method=method)
    v = torch.randn(hessian.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    first, second = hessian.matvec(v), hessian.matvec(v)
    assert torch.equal(first, second)  # one fixed operator
    assert torch.equal(torch.get_rng_state(), state)  # the random state is untouched
    reference = dense_hessian(model, nn.CrossEntropyLoss(), (x, mask), y, params)
    torch.testing.assert_close(first, reference @ v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_buffers_and_gradients_are_untouched(method: str) -> None:
    problem = BY_NAME["bn-train-ce"]
    model, x, y, params = problem.build()
    problem.loss_fn(model(x), y).backward()
    buffers = [(b, b.clone()) for b in model.buffers()]
    grads = [(p.grad, p.grad.clone()) for p in model.parameters()]
    hessian = GroupHessian(model, problem.loss_fn, x, y, params, method=method)
    hessian.matvec(torch.ones(hessian.dim, dtype=torch.float64))
    for b, saved in buffers:
        assert torch.equal(b, saved)
    for p, (obj, value) in zip(model.parameters(), grads, strict=True):
        assert p.grad is obj and torch.equal(p.grad, value)
    assert model.training and model[1].training


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.spare = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return self.lin(x)


@pytest.mark.parametrize("method", METHODS)
def test_an_unused_parameter_has_zero_rows(method: str) -> None:
    torch.manual_seed(0)
    model = Unused().double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 2, (5,))
    params = [model.spare, *model.lin.parameters()]
    hessian = GroupHessian(model, nn.CrossEntropyLoss(), x, y, params, method=method)
    dense = hessian.dense()
    assert torch.equal(dense[:4], torch.zeros(4, hessian.dim, dtype=torch.float64))
    reference = dense_hessian(model, nn.CrossEntropyLoss(), x, y, list(model.lin.parameters()))
    torch.testing.assert_close(dense[4:, 4:], reference, rtol=1e-12, atol=1e-14)


def test_bad_arguments_are_refused() -> None:
    model, x, y, params = BY_NAME["mlp-tanh-ce"].build()
    loss_fn = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match="method"):
        GroupHessian(model, loss_fn, x, y, params, method="finite-differences")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        GroupHessian(model, loss_fn, x, y, [])
    with pytest.raises(ValueError, match="not parameters"):
        GroupHessian(model, loss_fn, x, y, [nn.Parameter(torch.ones(2))])
    hessian = GroupHessian(model, loss_fn, x, y, params)
    with pytest.raises(ValueError, match="shape"):
        hessian.matvec(torch.ones(hessian.dim + 1, dtype=torch.float64))
