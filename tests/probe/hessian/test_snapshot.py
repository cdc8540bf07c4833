"""``compute_snapshot`` with ``hessian_top_k``: each group's Hessian spectrum, GGN unchanged."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from curvscope.probe import ViViTConfig, compute_snapshot
from curvscope.probe.errors import ConfigError
from curvscope.probe.hessian import moments
from tests.probe.hessian.problems import BY_NAME
from tests.probe.hessian.reference import dense_hessian

NAMES = ["mlp-tanh-ce", "ce-far-from-minimum"]


@pytest.mark.parametrize("groups", ["all", "layer"])
@pytest.mark.parametrize("name", NAMES)
def test_groups_carry_the_dense_hessian_spectrum(name: str, groups: str) -> None:
    problem = BY_NAME[name]
    model, x, y, _ = problem.build()
    config = ViViTConfig(
        param_groups=groups, hessian_top_k=3, hessian_slq_probes=2, hessian_slq_steps=5, seed=0
    )
    snap = compute_snapshot(model, problem.loss_fn, x, y, config)
    assert len(snap.groups) == (1 if groups == "all" else 2)
    negative = False
    for group in snap.groups:
        want = torch.linalg.eigvalsh(dense_hessian(model, problem.loss_fn, x, y, group.params))
        scale = float(want.abs().max())
        assert group.hessian_eigvals is not None and group.hessian_min is not None
        assert group.hessian_eigvals.shape == (3,)
        torch.testing.assert_close(
            group.hessian_eigvals, want.flip(0)[:3], rtol=1e-8, atol=1e-12 * scale
        )
        assert group.hessian_min == pytest.approx(float(want[0]), rel=1e-8, abs=1e-12 * scale)
        negative = negative or group.hessian_min < -1e-2 * scale
        assert group.hessian_density is not None
        nodes, weights = group.hessian_density
        assert nodes.shape == weights.shape == (2, 5)
        assert float(moments(nodes, weights, [0])[0]) == pytest.approx(1.0)
    if problem.indefinite:  # the negative curvature is there, and measured
        assert negative


@pytest.mark.parametrize("name", NAMES)
def test_ggn_results_are_unchanged(name: str) -> None:
    problem = BY_NAME[name]
    model, x, y, _ = problem.build()
    plain = ViViTConfig(param_groups="layer", seed=0)
    with_h = dataclasses.replace(plain, hessian_top_k=3)
    grads = [torch.full_like(p, 0.5) for p in model.parameters()]
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g.clone()
    a = compute_snapshot(model, problem.loss_fn, x, y, plain)
    b = compute_snapshot(model, problem.loss_fn, x, y, with_h)
    for p, g in zip(model.parameters(), grads, strict=True):
        assert torch.equal(p.grad, g)
    assert a.loss == b.loss
    for ga, gb in zip(a.groups, b.groups, strict=True):
        assert ga.hessian_eigvals is None and ga.hessian_min is None
        assert ga.hessian_density is None
        assert gb.hessian_eigvals is not None and gb.hessian_density is None
        for field in ("eigvals", "gammas", "lambdas", "snr_gamma", "snr_lambda", "grad_overlap"):
            assert torch.equal(getattr(ga, field), getattr(gb, field)), field
        assert ga.grad_norm_sq == gb.grad_norm_sq


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hessian_top_k": -1},
        {"hessian_top_k": True},
        {"hessian_slq_probes": -1, "hessian_top_k": 1},
        {"hessian_slq_steps": 0},
        {"hessian_every": 0},
        {"hessian_slq_probes": 2},  # the Hessian is off
    ],
)
def test_bad_hessian_config_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ViViTConfig(**kwargs)  # type: ignore[arg-type]


def test_config_goes_on_the_wire() -> None:
    assert ViViTConfig().to_wire()["hessian_top_k"] == 0
    assert ViViTConfig(hessian_top_k=4).to_wire()["hessian_top_k"] == 4
