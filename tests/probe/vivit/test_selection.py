"""Direction selection: its semantics on degenerate and separated spectra, and the
statistics of the selected directions against the dense float64 reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvscope.probe import ConfigError, ViViTConfig, compute_snapshot
from curvscope.probe.newton.newton import damped_newton_step
from curvscope.probe.vivit.selection import describe, select_directions
from tests.probe.reference import dense_vivit

LAM = torch.tensor([5.0, 2.0, 2.0, 2.0, 0.5, 1e-3], dtype=torch.float64)  # a triple


@pytest.mark.parametrize(
    ("spec", "top_k", "expected"),
    [
        (None, None, [0, 1, 2, 3, 4, 5]),
        (None, 2, [0, 1]),
        (("top", 2), None, [0, 1]),
        (("top", 99), None, [0, 1, 2, 3, 4, 5]),
        (("bottom", 2), None, [4, 5]),
        (("bottom", 99), None, [0, 1, 2, 3, 4, 5]),
        (("band", 2.0, 2.0), None, [1, 2, 3]),  # every copy of a degenerate eigenvalue
        (("band", 0.1, None), None, [0, 1, 2, 3, 4]),
        (("band", None, 1.0), None, [4, 5]),
        (("band", 10.0, 20.0), None, []),
        (lambda lam: torch.nonzero(lam > 1.0).flatten(), None, [0, 1, 2, 3]),
        (lambda lam: [5, 0], None, [0, 5]),  # returned in descending order of λ
    ],
)
def test_selection_semantics(spec, top_k, expected) -> None:
    assert select_directions(LAM, spec, top_k).tolist() == expected


@pytest.mark.parametrize(
    "spec",
    [
        ("top", 0),
        ("bottom", -1),
        ("band", 2.0, 1.0),
        ("band", float("nan"), None),
        ("middle", 3),
        5,
    ],
)
def test_invalid_specs_are_refused_up_front(spec) -> None:
    with pytest.raises(ConfigError):
        ViViTConfig(directions=spec)


def test_top_k_and_directions_are_one_or_the_other() -> None:
    with pytest.raises(ConfigError, match="not both"):
        ViViTConfig(top_k=3, directions=("bottom", 2))


@pytest.mark.parametrize("bad", [lambda lam: [0, 0], lambda lam: [7], lambda lam: [0.5]])
def test_a_callable_must_return_distinct_indices(bad) -> None:
    with pytest.raises(ConfigError):
        select_directions(LAM, bad)


def test_descriptions_on_the_wire() -> None:
    assert describe(None) is None and describe(None, 4) == "top:4"
    assert describe(("bottom", 3)) == "bottom:3"
    assert describe(("band", 1e-3, None)) == "band:0.001:"

    def above_one(lam):
        return [0]

    assert describe(above_one) == "callable:above_one"


def _problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (7,), generator=gen)
    return model, nn.CrossEntropyLoss(), x, y


@pytest.mark.parametrize("backend", ["backpack", "func"])
@pytest.mark.parametrize(
    "spec", [("bottom", 3), ("band", 1e-3, 1e-1), lambda lam: list(range(0, len(lam), 2))]
)
def test_selected_statistics_match_the_dense_reference(backend, spec) -> None:
    model, loss_fn, x, y = _problem()
    config = ViViTConfig(directions=spec, backend=backend)
    snap = compute_snapshot(model, loss_fn, x, y, config, keep_factors=True)
    (group,) = snap.groups
    ref = dense_vivit(model, loss_fn, x, y, list(model.parameters()))
    k = group.eigvals.shape[0]
    chosen = select_directions(ref.eigvals[:k], spec).tolist()
    assert group.directions.tolist() == chosen and len(chosen) > 0
    lam_max = float(ref.eigvals[0])
    assert torch.allclose(group.selected_eigvals, ref.eigvals[chosen], rtol=0, atol=1e-12 * lam_max)
    vecs = ref.eigvecs[:, chosen]  # [D, K']
    gamma_ref = ref.grad @ vecs  # e_kᵀ g, up to the sign of e_k
    assert torch.allclose(group.gamma.abs(), gamma_ref.abs(), rtol=0, atol=1e-10)
    overlap_ref = gamma_ref.square() / ref.grad.square().sum()
    assert torch.allclose(group.grad_overlap, overlap_ref, rtol=0, atol=1e-10)
    lambdas_ref = torch.einsum("dk,nde,ek->nk", vecs, ref.ggn_per_sample, vecs) * x.shape[0]
    assert torch.allclose(group.lambdas, lambdas_ref, rtol=0, atol=1e-10 * lam_max * x.shape[0])
    # a Newton step over the selected directions only: -Σ γ_k/λ_k e_k
    step = torch.cat([t.flatten() for t in damped_newton_step(group, 0.0)])
    expected = -(vecs @ (gamma_ref / ref.eigvals[chosen]))
    assert torch.allclose(step, expected, rtol=0, atol=1e-8 * float(expected.abs().max()))
