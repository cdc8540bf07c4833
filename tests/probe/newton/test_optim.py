"""``ViViTNewton`` on convex problems, in float64."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from curvscope.probe import BootstrapDamping, NewtonBatch, ViViTConfig, ViViTNewton


def _regression(n: int = 32, d: int = 5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w = torch.randn(d, 2, generator=gen, dtype=torch.float64)
    y = x @ w + 0.3 * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    torch.manual_seed(seed)
    model = nn.Linear(d, 2).double()
    return model, x, y


def _least_squares_loss(x: torch.Tensor, y: torch.Tensor) -> float:
    design = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
    coef = torch.linalg.lstsq(design, y).solution
    return float((design @ coef - y).square().mean())


def test_undamped_step_solves_linear_least_squares() -> None:
    # MSE of a linear model is quadratic and its GGN is its Hessian (full rank here),
    # so one Newton step with a tiny damping lands on the least-squares solution
    model, x, y = _regression()
    loss_fn = nn.MSELoss()
    opt = ViViTNewton(model.parameters(), lr=1.0, damping=1e-10)
    before = opt.step(model=model, loss_fn=loss_fn, inputs=x, targets=y)
    with torch.no_grad():
        after = float(loss_fn(model(x), y))
    best = _least_squares_loss(x, y)
    assert before > 2 * best
    assert after == pytest.approx(best, rel=1e-8)
    assert opt.last_snapshot is not None and opt.last_snapshot.loss == before
    (delta,) = opt.last_dampings.values()
    assert bool((delta == 1e-10).all())


def test_bootstrap_damping_decreases_logistic_regression_loss() -> None:
    gen = torch.Generator().manual_seed(1)
    n, d = 64, 4
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w = torch.randn(d, 3, generator=gen, dtype=torch.float64)
    y = (x @ w + 0.5 * torch.randn(n, 3, generator=gen, dtype=torch.float64)).argmax(1)
    torch.manual_seed(1)
    model = nn.Linear(d, 3).double()
    loss_fn = nn.CrossEntropyLoss()
    opt = ViViTNewton(model.parameters(), lr=1.0, damping=BootstrapDamping(seed=0))
    with torch.no_grad():
        initial = float(loss_fn(model(x), y))
    for _ in range(8):
        idx = torch.randperm(n, generator=gen)[:32]  # mini-batches: the policy sees noise
        opt.step(lambda idx=idx: NewtonBatch(model, loss_fn, x[idx], y[idx]))
        assert opt.last_dampings["group0"].shape == (opt.last_snapshot.groups[0].gammas.shape[1],)
    with torch.no_grad():
        final = float(loss_fn(model(x), y))
    assert final < 0.5 * initial


def test_learning_rate_scales_the_step_per_param_group() -> None:
    model, x, y = _regression(seed=2)
    loss_fn = nn.MSELoss()
    start = copy.deepcopy(model.state_dict())
    full = ViViTNewton(model.parameters(), lr=1.0, damping=0.5)
    full.step(model=model, loss_fn=loss_fn, inputs=x, targets=y)
    full_update = {k: v - start[k] for k, v in model.state_dict().items()}

    model.load_state_dict(start)
    groups = [{"params": [model.weight], "lr": 0.25}, {"params": [model.bias]}]
    scaled = ViViTNewton(groups, lr=1.0, damping=0.5)
    scaled.step(model=model, loss_fn=loss_fn, inputs=x, targets=y)
    update = {k: v - start[k] for k, v in model.state_dict().items()}
    assert torch.allclose(update["weight"], 0.25 * full_update["weight"], rtol=1e-12, atol=0)
    assert torch.allclose(update["bias"], full_update["bias"], rtol=1e-12, atol=0)


def test_layer_groups_and_unowned_parameters() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(16, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    loss_fn = nn.MSELoss()
    frozen = model[0].weight.detach().clone()
    owned = [model[0].bias, *model[2].parameters()]
    opt = ViViTNewton(owned, damping=1.0, config=ViViTConfig(param_groups="layer"))
    before = opt.step(model=model, loss_fn=loss_fn, inputs=x, targets=y)
    assert set(opt.last_dampings) == {"0", "2"}
    assert torch.equal(model[0].weight, frozen)  # in block "0" but not the optimizer's
    with torch.no_grad():
        assert float(loss_fn(model(x), y)) < before


def test_step_needs_a_batch() -> None:
    model, _, _ = _regression()
    with pytest.raises(ValueError, match="closure"):
        ViViTNewton(model.parameters()).step()
