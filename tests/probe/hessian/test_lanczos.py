"""Lanczos and extreme eigenpairs against ``torch.linalg.eigh`` (matrices and model Hessians)."""

from __future__ import annotations

import pytest
import torch

from curvscope.probe.hessian import BlockLanczos, GroupHessian, extreme_eigenpairs, lanczos
from tests.probe.hessian.problems import BY_NAME, PROBLEMS, Problem
from tests.probe.hessian.reference import dense_hessian

F64 = torch.float64


def _symmetric(eigvals: list[float] | torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``U diag(eigvals) Uᵀ`` with a random orthogonal ``U``."""
    ev = torch.as_tensor(eigvals, dtype=F64)
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(len(ev), len(ev), generator=gen, dtype=F64))
    return u @ torch.diag(ev) @ u.T


def _random_spectrum(dim: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _assert_eigvals(got: torch.Tensor, want: torch.Tensor, scale: float) -> None:
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-12 * scale)


# ---------------------------------------------------------------------- the process


def test_lanczos_builds_an_orthonormal_basis_and_the_projection() -> None:
    h = _symmetric(_random_spectrum(40))
    v0 = torch.randn(40, generator=_gen(1), dtype=F64)
    alpha, beta, q = lanczos(lambda v: h @ v, 40, 15, v0=v0)
    assert alpha.shape == (15,) and beta.shape == (14,) and q.shape == (40, 15)
    t = torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)
    torch.testing.assert_close(q.T @ q, torch.eye(15, dtype=F64), rtol=0, atol=1e-13)
    torch.testing.assert_close(q.T @ h @ q, t, rtol=0, atol=1e-13)
    torch.testing.assert_close(q[:, 0], v0 / v0.norm(), rtol=0, atol=1e-15)
    assert bool((beta > 0).all())


def test_lanczos_stops_on_breakdown_with_exact_ritz_values() -> None:
    # three distinct eigenvalues: the Krylov space of any vector is invariant after 3 steps
    h = _symmetric([4.0] * 5 + [1.0] * 7 + [-2.0] * 8)
    alpha, beta, q = lanczos(lambda v: h @ v, 20, 20, generator=_gen(), dtype=F64)
    assert alpha.shape == (3,) and q.shape == (20, 3)
    t = torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)
    torch.testing.assert_close(
        torch.linalg.eigvalsh(t), torch.tensor([-2.0, 1.0, 4.0], dtype=F64), rtol=0, atol=1e-13
    )


@pytest.mark.parametrize("block", [1, 3])
def test_steps_equal_to_dim_give_the_whole_spectrum_with_multiplicities(block: int) -> None:
    # a cluster and repeated eigenvalues: single-vector Krylov spaces break down early and
    # the process restarts, so at m = dim the projection is similar to H
    ev = torch.cat([torch.tensor([3.0, 3.0, 3.0, -1.0, -1.0, 0.0, 0.0, 0.0]), torch.rand(22)])
    h = _symmetric(ev, seed=3)
    start = torch.randn(30, block, generator=_gen(), dtype=F64)
    proc = BlockLanczos(lambda v: h @ v, 30, start, generator=_gen(1))
    while not proc.exhausted:
        proc.step()
    assert proc.size == 30
    theta, _, res = proc.ritz()
    torch.testing.assert_close(theta, torch.linalg.eigvalsh(h), rtol=0, atol=1e-12)
    assert float(res.max()) < 1e-12
    q = proc.basis
    torch.testing.assert_close(q.T @ q, torch.eye(30, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(q.T @ h @ q, proc.projection(), rtol=0, atol=1e-12)


def test_ritz_residuals_are_the_true_residuals() -> None:
    h = _symmetric(_random_spectrum(50, seed=2))
    proc = BlockLanczos(lambda v: h @ v, 50, torch.randn(50, 2, generator=_gen(), dtype=F64))
    for _ in range(6):
        proc.step()
    theta, s, res = proc.ritz()
    y = proc.basis @ s
    true = (h @ y - y * theta).norm(dim=0)
    torch.testing.assert_close(res, true, rtol=1e-8, atol=1e-13)


# ---------------------------------------------------------------------- extreme eigenpairs


@pytest.mark.parametrize("k", [1, 3, 5])
def test_extreme_eigenpairs_of_a_matrix(k: int) -> None:
    ev = torch.cat([torch.tensor([10.0, 8.0, 7.5, 7.0, 6.0, -3.0]), torch.rand(194)])
    h = _symmetric(ev, seed=4)
    got = extreme_eigenpairs(lambda v: h @ v, 200, k, generator=_gen(), dtype=F64)
    want = torch.linalg.eigvalsh(h)
    assert got.converged and got.steps < 200  # converged before exhausting the space
    assert got.matvecs == got.steps
    _assert_eigvals(got.eigvals, want.flip(0)[:k], 10.0)
    _assert_eigvals(got.min_eigval, want[0], 10.0)
    # the eigenvectors: orthonormal, residuals as reported
    y = got.eigvecs
    torch.testing.assert_close(y.T @ y, torch.eye(k, dtype=F64), rtol=0, atol=1e-12)
    true = (h @ y - y * got.eigvals).norm(dim=0)
    assert bool((true <= got.residuals + 1e-12).all())
    assert bool((got.residuals <= 1e-8 * got.eigvals.abs()).all())
    min_res = (h @ got.min_eigvec - got.min_eigval * got.min_eigvec).norm()
    assert float(min_res) <= 1e-8 * 3.0


def test_repeated_largest_eigenvalues_come_out_with_their_multiplicity() -> None:
    ev = torch.cat([torch.tensor([5.0, 5.0, 5.0, 4.0]), torch.rand(96)])
    h = _symmetric(ev, seed=5)
    got = extreme_eigenpairs(lambda v: h @ v, 100, 4, which="largest", generator=_gen(), dtype=F64)
    assert got.converged and got.steps < 100
    _assert_eigvals(got.eigvals, torch.tensor([5.0, 5.0, 5.0, 4.0], dtype=F64), 5.0)


def test_rank_deficient_operator() -> None:
    # H = V Vᵀ of rank 6 in dimension 60: 54 zero eigenvalues
    v = torch.randn(60, 6, generator=_gen(6), dtype=F64)
    h = v @ v.T
    got = extreme_eigenpairs(lambda x: h @ x, 60, 3, generator=_gen(), dtype=F64)
    want = torch.linalg.eigvalsh(h)
    assert got.converged
    scale = float(want[-1])
    _assert_eigvals(got.eigvals, want.flip(0)[:3], scale)
    assert abs(float(got.min_eigval)) <= 1e-12 * scale


def test_which_selects_what_must_converge() -> None:
    ev = torch.cat(
        [torch.tensor([10.0, -0.2], dtype=F64), torch.linspace(-0.19, 1.0, 298, dtype=F64)]
    )
    h = _symmetric(ev, seed=7)
    largest = extreme_eigenpairs(
        lambda v: h @ v, 300, 1, which="largest", generator=_gen(), dtype=F64
    )
    both = extreme_eigenpairs(lambda v: h @ v, 300, 1, which="both", generator=_gen(), dtype=F64)
    smallest = extreme_eigenpairs(
        lambda v: h @ v, 300, 1, which="smallest", generator=_gen(), dtype=F64
    )
    assert largest.converged and both.converged and smallest.converged
    assert largest.steps < both.steps  # the isolated top converges first
    assert float(largest.eigvals[0]) == pytest.approx(10.0, rel=1e-8)
    assert float(smallest.min_eigval) == pytest.approx(-0.2, rel=1e-8)


def test_max_steps_caps_the_basis_and_reports_no_convergence() -> None:
    h = _symmetric(torch.linspace(0.0, 1.0, 100), seed=8)  # no gaps to speak of
    got = extreme_eigenpairs(lambda v: h @ v, 100, 2, max_steps=10, generator=_gen(), dtype=F64)
    assert not got.converged
    assert got.steps == 10 and got.matvecs == 10


def test_bad_arguments_are_refused() -> None:
    def mv(v: torch.Tensor) -> torch.Tensor:
        return v

    with pytest.raises(ValueError, match="which"):
        extreme_eigenpairs(mv, 4, which="middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k must"):
        extreme_eigenpairs(mv, 4, 0)
    with pytest.raises(ValueError, match="tol"):
        extreme_eigenpairs(mv, 4, tol=0.0)
    with pytest.raises(ValueError, match="zero"):
        lanczos(mv, 4, 2, v0=torch.zeros(4))


def test_identity_and_tiny_dimensions() -> None:
    eye = extreme_eigenpairs(lambda v: 2.0 * v, 5, 3, dtype=F64, generator=_gen())
    assert eye.converged and eye.steps <= 5
    _assert_eigvals(eye.eigvals, torch.full((3,), 2.0, dtype=F64), 2.0)
    one = extreme_eigenpairs(lambda v: -3.0 * v, 1, 4, dtype=F64, generator=_gen())
    assert one.eigvals.tolist() == [-3.0] and float(one.min_eigval) == -3.0


# ---------------------------------------------------------------------- model Hessians


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
def test_model_hessians_top_k_and_minimum(problem: Problem) -> None:
    model, x, y, params = problem.build()
    reference = dense_hessian(
        model, problem.loss_fn, x, y, params, problem.outputs, coupled=problem.coupled
    )
    want = torch.linalg.eigvalsh(reference)
    scale = float(want.abs().max())
    if problem.indefinite:
        assert float(want[0]) < -0.1 * scale  # negative curvature, far from a minimum
    hessian = GroupHessian(model, problem.loss_fn, x, y, params, outputs=problem.outputs)
    for k in (1, 3):
        got = extreme_eigenpairs(hessian.matvec, hessian.dim, k, generator=_gen(), dtype=F64)
        assert got.converged
        if k == 1:
            assert got.steps < hessian.dim  # converged, not merely exhausted
        _assert_eigvals(got.eigvals, want.flip(0)[:k], scale)
        _assert_eigvals(got.min_eigval, want[0], scale)


def test_last_layer_mse_hessian_has_multiplicities_and_zeros() -> None:
    problem = BY_NAME["group-last-layer-mse"]
    model, x, y, params = problem.build()
    want = torch.linalg.eigvalsh(dense_hessian(model, problem.loss_fn, x, y, params))
    hessian = GroupHessian(model, problem.loss_fn, x, y, params)
    got = extreme_eigenpairs(hessian.matvec, hessian.dim, 6, generator=_gen(), dtype=F64)
    scale = float(want[-1])
    _assert_eigvals(got.eigvals, want.flip(0)[:6], scale)
    torch.testing.assert_close(got.eigvals[:3], got.eigvals[0].expand(3), rtol=1e-8, atol=0)
    assert abs(float(got.min_eigval)) <= 1e-12 * scale
