"""Live step trust (paper §4.2): against a plain-loop float64 reference and on cases whose
answer is known; the snapshot pipeline (compute_snapshot and the in-loop Probe) attaches it."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from curvscope.probe import Probe, ViViTConfig, compute_snapshot, newton_step
from curvscope.probe.errors import ConfigError
from curvscope.probe.loop import probe as probe_module
from curvscope.probe.loop.wire import encode_snapshot
from curvscope.probe.newton.trust import step_trust
from curvscope.probe.snapshot import Snapshot
from curvscope.server.protocol import SnapshotMessage, parse_ingest_message
from tests.probe.reference import dense_vivit


def _samples(mean: float, std: float, n: int, seed: int) -> torch.Tensor:
    """``[n]`` samples with exactly the given mean and (population) standard deviation."""
    z = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = (z - z.mean()) / z.std(unbiased=False)
    return mean + std * z


def _quantile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default), by hand."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (pos - lo) * (ordered[hi] - ordered[lo])


def _slow_trust(
    gammas: torch.Tensor,
    lambdas: torch.Tensor,
    eigvals: torch.Tensor,
    grid: list[float],
    resamples: int,
    seed: int,
    q: float = 0.05,
) -> tuple[list[float], list[float], float]:
    """Loops over directions, dampings and resamples in Python floats.

    Draws the resample indices in the documented order (step γ, step λ, evaluation γ,
    evaluation λ; ``randint(0, size, (B, size))`` each) from a generator with ``seed``.
    """
    gen = torch.Generator().manual_seed(seed)
    n, m = gammas.shape[0], lambdas.shape[0]
    draws = [
        torch.randint(0, size, (resamples, size), generator=gen).tolist() for size in (n, m, n, m)
    ]
    g_rows, l_rows = gammas.tolist(), lambdas.tolist()
    deltas, bounds, total = [], [], 0.0
    for k in range(gammas.shape[1]):

        def mean(rows: list[list[float]], idx: list[int], k: int = k) -> float:
            return sum(rows[i][k] for i in idx) / len(idx)

        best_bound, best_delta = -math.inf, math.inf
        for delta in grid:
            rs = []
            for b in range(resamples):
                g_step = mean(g_rows, draws[0][b])
                l_step = mean(l_rows, draws[1][b])
                g_eval = mean(g_rows, draws[2][b])
                l_eval = mean(l_rows, draws[3][b])
                s = -g_step / (l_step + delta)
                rs.append(-s * g_eval - 0.5 * s * s * l_eval)
            bound = _quantile(rs, q)
            if bound > best_bound:
                best_bound = bound
                best_delta = delta if bound >= 0 else math.inf
        deltas.append(best_delta)
        bounds.append(best_bound)
        if math.isfinite(best_delta):
            gamma = sum(row[k] for row in g_rows) / n
            lam = float(eigvals[k])
            # γ²(λ + 2δ) / (2(λ + δ)²): the reduction −sγ − ½s²λ at s = −γ/(λ + δ)
            total += gamma**2 * (lam + 2 * best_delta) / (2 * (lam + best_delta) ** 2)
    return deltas, bounds, total


def _problem(n: int = 10, m: int = 7) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three directions with signal (different noise levels) and one of pure gradient noise."""
    gammas = torch.stack(
        [
            _samples(1.0, 0.3, n, 1),
            _samples(1.0, 0.8, n, 2),
            _samples(-0.5, 0.2, n, 3),
            _samples(0.0, 1.0, n, 4),
        ],
        dim=1,
    )
    lambdas = torch.stack(
        [
            _samples(2.0, 0.5, m, 5),
            _samples(1.0, 2.0, m, 6),
            _samples(0.5, 0.1, m, 7),
            _samples(1.0, 0.1, m, 8),
        ],
        dim=1,
    )
    return gammas, lambdas, lambdas.mean(0)


def test_matches_a_plain_loop_reference() -> None:
    gammas, lambdas, eigvals = _problem()
    grid = torch.logspace(-2, 1, 7, dtype=torch.float64)
    ours = step_trust(gammas, lambdas, eigvals, resamples=25, seed=3, grid=grid)
    deltas, bounds, total = _slow_trust(gammas, lambdas, eigvals, grid.tolist(), 25, seed=3)
    assert [math.isinf(d) for d in deltas] == [False, False, False, True]  # the case is mixed
    assert ours.damping.shape == ours.bound.shape == (4,)
    assert ours.damping.dtype == torch.float64
    assert ours.damping.isinf().tolist() == [math.isinf(d) for d in deltas]
    finite = [k for k, d in enumerate(deltas) if math.isfinite(d)]
    assert ours.damping[finite].tolist() == [deltas[k] for k in finite]
    assert torch.allclose(
        ours.bound, torch.tensor(bounds, dtype=torch.float64), rtol=1e-12, atol=1e-15
    )
    assert ours.newton_reduction == pytest.approx(total, rel=1e-12)
    assert ours.newton_reduction > 0


def test_default_grid_matches_the_reference() -> None:
    gammas, lambdas, eigvals = _problem(n=6, m=6)
    ours = step_trust(gammas, lambdas, eigvals, resamples=8, seed=11)
    grid = torch.logspace(-3, 2, 100, dtype=torch.float64).tolist()
    deltas, bounds, total = _slow_trust(gammas, lambdas, eigvals, grid, 8, seed=11)
    assert ours.damping.tolist() == deltas
    assert torch.allclose(
        ours.bound, torch.tensor(bounds, dtype=torch.float64), rtol=1e-12, atol=1e-15
    )
    assert ours.newton_reduction == pytest.approx(total, rel=1e-12)


def test_signal_gets_a_non_negative_bound_and_noise_does_not() -> None:
    n = 64
    strong = [_samples(1.0 + k, 0.05 * (1.0 + k), n, 20 + k) for k in range(3)]  # SNR ≈ 400
    noise = [_samples(0.0, 1.0 + k, n, 30 + k) for k in range(3)]  # mean exactly 0
    gammas = torch.stack(strong + noise, dim=1)
    lambdas = torch.stack([_samples(1.0 + k, 0.1, n, 40 + k) for k in range(6)], dim=1)
    trust = step_trust(gammas, lambdas, lambdas.mean(0), seed=0)
    assert (trust.bound[:3] >= 0).all() and trust.damping[:3].isfinite().all()
    assert (trust.bound[3:] < 0).all() and trust.damping[3:].isinf().all()
    # the whole step only uses the trusted directions: γ_k²(λ_k + 2δ_k) / (2(λ_k + δ_k)²)
    gamma, lam, delta = gammas.mean(0)[:3], lambdas.mean(0)[:3], trust.damping[:3]
    expected = float((gamma**2 * (lam + 2 * delta) / (2 * (lam + delta) ** 2)).sum())
    assert trust.newton_reduction == pytest.approx(expected, rel=1e-12)


def test_the_same_inputs_give_the_same_numbers_and_another_seed_other_ones() -> None:
    gammas, lambdas, eigvals = _problem()
    first = step_trust(gammas, lambdas, eigvals, resamples=20, seed=5)
    again = step_trust(gammas, lambdas, eigvals, resamples=20, seed=5)
    other = step_trust(gammas, lambdas, eigvals, resamples=20, seed=6)
    assert torch.equal(first.bound, again.bound) and torch.equal(first.damping, again.damping)
    assert not torch.equal(first.bound, other.bound)


def test_no_directions() -> None:
    empty = torch.zeros(5, 0, dtype=torch.float64)
    trust = step_trust(empty, empty, torch.zeros(0, dtype=torch.float64))
    assert trust.damping.shape == trust.bound.shape == (0,)
    assert trust.newton_reduction == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"step_trust": 1}, "step_trust"),
        ({"step_trust_resamples": 1}, "step_trust_resamples"),
        ({"step_trust_resamples": True}, "step_trust_resamples"),
        ({"step_trust_seed": -1}, "step_trust_seed"),
    ],
)
def test_config_is_validated(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ViViTConfig(**kwargs)


# -- the snapshot pipeline -----------------------------------------------------------------
def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).double()


def _batch(step: int = 0, n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    # a learnable target far from the initial outputs: the gradient has signal
    y = torch.stack([3.0 * x[:, 0] + 1.0, -2.0 * x[:, 1] + 2.0], dim=1)
    return x, y


def test_compute_snapshot_attaches_the_trust_of_every_group() -> None:
    model, (x, y) = _model(), _batch()
    config = ViViTConfig(param_groups="layer", step_trust=True, step_trust_seed=4)
    snap = compute_snapshot(model, nn.MSELoss(), x, y, config)
    assert len(snap.groups) == 2
    for group in snap.groups:
        k = group.gammas.shape[1]
        assert group.trust_damping is not None and group.trust_bound is not None
        assert group.trust_damping.shape == group.trust_bound.shape == (k,)
        expected = step_trust(
            group.gammas,
            group.lambdas,
            group.selected_eigvals,
            resamples=100,
            seed=4,
            gamma=group.gamma,
        )
        assert torch.equal(group.trust_bound, expected.bound)
        assert torch.equal(group.trust_damping, expected.damping)
        assert group.newton_reduction == expected.newton_reduction
    assert any(bool((g.trust_bound >= 0).any()) for g in snap.groups)  # type: ignore[operator]
    # a replay of the same batch gives the same numbers
    again = compute_snapshot(model, nn.MSELoss(), x, y, config)
    for a, b in zip(snap.groups, again.groups, strict=True):
        assert torch.equal(a.trust_bound, b.trust_bound)  # type: ignore[arg-type]
        assert a.newton_reduction == b.newton_reduction
    off = compute_snapshot(model, nn.MSELoss(), x, y, ViViTConfig(param_groups="layer"))
    assert all(g.trust_bound is None and g.newton_reduction is None for g in off.groups)


@pytest.mark.parametrize(
    ("n", "overrides"),
    [(1, {}), (6, {"subsample_grad": [3]}), (6, {"subsample": 1})],
    ids=["batch-of-one", "one-gradient-sample", "one-curvature-sample"],
)
def test_one_sample_is_not_trusted_blindly(n: int, overrides: dict) -> None:
    """Was: a single γ (or λ) sample gave every bootstrap draw the same value, so every
    direction got a bound >= 0 and the smallest damping. Now no trust is computed."""
    model, (x, y) = _model(), _batch()
    config = ViViTConfig(step_trust=True, **overrides)
    snap = compute_snapshot(model, nn.MSELoss(), x[:n], y[:n], config)
    for group in snap.groups:
        assert group.trust_damping is None and group.trust_bound is None
        assert group.newton_reduction is None
    message = encode_snapshot(snap, run="r", step=0, config=config, mode="function")
    assert "trust_bound" not in message.model_dump_json()
    assert message.config.step_trust is True


@pytest.mark.parametrize("subsample_grad", [None, 8])
def test_newton_reduction_is_the_quadratic_model_of_the_damped_step(
    subsample_grad: int | None,
) -> None:
    # dense float64 reference: −(gᵀΔθ + ½ Δθᵀ G Δθ) for Δθ = −Σ_k γ_k/(λ_k + δ_k) e_k, with
    # the whole batch's gradient g also where the bootstrap sees only 8 samples' γ_nk
    model, (x, y) = _model(), _batch()
    loss_fn = nn.MSELoss()
    config = ViViTConfig(step_trust=True, subsample_grad=subsample_grad)
    snap = compute_snapshot(model, loss_fn, x, y, config, keep_factors=True)
    group = snap.groups[0]
    assert group.gammas.shape[0] == (subsample_grad or x.shape[0])
    assert group.trust_damping is not None and bool(group.trust_damping.isfinite().any())
    step = torch.cat([t.reshape(-1) for t in newton_step(group, group.trust_damping)])
    dense = dense_vivit(model, loss_fn, x, y, list(model.parameters()))
    model_change = dense.grad @ step + 0.5 * step @ dense.ggn @ step
    assert group.newton_reduction == pytest.approx(float(-model_change), rel=1e-8)


def test_a_snapshot_with_step_trust_is_a_valid_message() -> None:
    model, (x, y) = _model(), _batch()
    config = ViViTConfig(param_groups="layer", step_trust=True)
    snap = compute_snapshot(model, nn.MSELoss(), x, y, config)
    message = encode_snapshot(snap, run="run", step=3, config=config, mode="function")
    wire = json.loads(message.model_dump_json())
    parsed = parse_ingest_message(wire)
    assert isinstance(parsed, SnapshotMessage) and parsed == message
    assert wire["config"]["step_trust"] is True
    for sent, group in zip(wire["groups"], snap.groups, strict=True):
        assert group.trust_damping is not None and group.trust_bound is not None
        assert sent["trust_bound"] == pytest.approx(group.trust_bound.tolist(), rel=1e-15)
        assert sent["trust_damping"] == [
            None if math.isinf(d) else pytest.approx(d, rel=1e-15)
            for d in group.trust_damping.tolist()
        ]
        assert sent["newton_reduction"] == pytest.approx(group.newton_reduction, rel=1e-15)
    # without step trust the message carries none of it, not even as nulls
    plain = ViViTConfig(param_groups="layer")
    snap = compute_snapshot(model, nn.MSELoss(), x, y, plain)
    text = encode_snapshot(snap, run="run", step=3, config=plain, mode="function").model_dump_json()
    assert "trust" not in text and "newton_reduction" not in text


def test_the_in_loop_probe_attaches_the_trust(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ViViTConfig(step_trust=True, step_trust_resamples=30, step_trust_seed=2)
    model = copy.deepcopy(_model())
    loss_fn = nn.MSELoss()
    probe = Probe(
        model,
        loss_fn,
        run="trust",
        url=None,
        every=1,
        config=config,
        spool_dir=tmp_path,
        strict=True,
    )
    seen: list[Snapshot] = []
    encode = probe_module.encode_snapshot

    def record(snapshot: Snapshot, **kwargs: Any) -> Any:
        seen.append(snapshot)
        return encode(snapshot, **kwargs)

    monkeypatch.setattr(probe_module, "encode_snapshot", record)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(2):
        x, y = _batch(step)
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        with probe(step):
            loss.backward()
        opt.step()
    probe.close()
    assert len(seen) == 2
    for snapshot in seen:
        group = snapshot.groups[0]
        expected = step_trust(
            group.gammas,
            group.lambdas,
            group.selected_eigvals,
            resamples=30,
            seed=2,
            gamma=group.gamma,
        )
        assert group.trust_bound is not None and torch.equal(group.trust_bound, expected.bound)
        assert group.newton_reduction == expected.newton_reduction
