"""The ``func`` backend against the full-batch dense reference, in float64.

Every model family of :mod:`tests.probe.func_settings` (attention, RNNs, LayerNorm,
functional ops, BatchNorm in training mode, position-wise and weighted losses, tuple and
dict inputs, tied weights, ``outputs=`` adapters), and agreement with the ``backpack``
backend on every model both support.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor, nn

from curvscope.probe import CostError, ViViTConfig, compute_snapshot
from tests.probe.func_settings import FUNC_SETTINGS, FuncSetting
from tests.probe.reference import dense_vivit_full
from tests.probe.settings import SETTINGS
from tests.probe.test_compute import _build, _check_eigenvectors, _check_group, _close


def _double(value: object) -> object:
    if isinstance(value, Tensor):
        return value.double() if value.is_floating_point() else value
    if isinstance(value, tuple):
        return tuple(_double(v) for v in value)
    if isinstance(value, dict):
        return {k: _double(v) for k, v in value.items()}
    return value


def _problem(setting: FuncSetting, seed: int = 0):
    torch.manual_seed(seed)
    model = setting.make_model().double()
    gen = torch.Generator().manual_seed(seed)
    x, y = setting.make_batch(gen)
    return model, setting.make_loss(), _double(x), _double(y)


@pytest.mark.parametrize("setting", FUNC_SETTINGS, ids=[s.name for s in FUNC_SETTINGS])
def test_matches_full_batch_reference(setting: FuncSetting) -> None:
    model, loss_fn, x, y = _problem(setting)
    buffers = [b.clone() for b in model.buffers()]
    config = dataclasses.replace(setting.config, backend="func")
    snap = compute_snapshot(model, loss_fn, x, y, config, outputs=setting.outputs)
    assert snap.backend == "func"
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))
    n = y.shape[0]
    sub = setting.config.subsample_indices(n)
    m = n if sub is None else len(sub)
    assert snap.groups
    for group in snap.groups:
        ref = dense_vivit_full(model, loss_fn, x, y, group.params, sub, setting.outputs)
        assert snap.loss == pytest.approx(ref.loss, rel=1e-13)
        _check_group(group, ref, n, m)
        if setting.config.eigenvectors:
            _check_eigenvectors(group, ref, setting.config.eigenvectors)


@pytest.mark.parametrize("setting", SETTINGS, ids=[s.name for s in SETTINGS])
def test_backends_agree(setting) -> None:
    model, x, y, config = _build(setting)
    snaps = {
        backend: compute_snapshot(
            model, setting.loss_fn, x, y, dataclasses.replace(config, backend=backend)
        )
        for backend in ("backpack", "func")
    }
    assert [s.backend for s in snaps.values()] == ["backpack", "func"]
    for ours, theirs in zip(snaps["func"].groups, snaps["backpack"].groups, strict=True):
        lam_max = float(theirs.eigvals[0])
        assert ours.eigvals.shape == theirs.eigvals.shape
        _close(ours.eigvals, theirs.eigvals, lam_max)
        _close(torch.tensor(ours.grad_norm_sq), torch.tensor(theirs.grad_norm_sq))
        for j in range(min(3, ours.gammas.shape[1])):
            gaps = (theirs.eigvals[j] - theirs.eigvals).abs()
            gaps[j] = float("inf")
            if float(gaps.min()) < 1e-6 * lam_max:
                continue  # a degenerate eigenvalue: its directions are not unique
            sign = 1.0 if float(ours.gammas[:, j] @ theirs.gammas[:, j]) >= 0 else -1.0
            scale = float(theirs.gammas.abs().max())
            _close(sign * ours.gammas[:, j], theirs.gammas[:, j], scale, 1e-11)
            _close(ours.lambdas[:, j], theirs.lambdas[:, j], lam_max * ours.lambdas.shape[0])


@pytest.mark.parametrize("setting", FUNC_SETTINGS, ids=[s.name for s in FUNC_SETTINGS])
def test_auto_picks_backpack_only_where_it_is_exact(setting: FuncSetting) -> None:
    model, loss_fn, x, y = _problem(setting)
    snap = compute_snapshot(model, loss_fn, x, y, setting.config, outputs=setting.outputs)
    plain = setting.name in ("mlp-top-k-eigenvectors",)  # BackPACK's own layers and loss
    assert snap.backend == ("backpack" if plain else "func")


def _mc_ggn(model, loss_fn, x, y, outputs, mc: int, seed: int) -> Tensor:
    config = ViViTConfig(
        curvature="mc", mc_samples=mc, seed=seed, eigenvectors=10_000, backend="func"
    )
    group = compute_snapshot(model, loss_fn, x, y, config, outputs=outputs).groups[0]
    vecs = torch.stack([torch.cat([t.flatten() for t in v]) for v in group.eigenvectors])
    return vecs.T @ torch.diag(group.eigvals) @ vecs


def test_position_wise_mc_is_unbiased() -> None:
    """One label per position, summed over a sample's positions: M columns per sample."""
    setting = next(s for s in FUNC_SETTINGS if s.name == "tokens-ignore-index")
    model, loss_fn, x, y = _problem(setting)
    exact = dense_vivit_full(model, loss_fn, x, y, list(model.parameters()), None, setting.outputs)
    snap = compute_snapshot(
        model,
        loss_fn,
        x,
        y,
        ViViTConfig(curvature="mc", mc_samples=2, seed=0),
        outputs=setting.outputs,
    )
    assert snap.groups[0].lambdas.shape[0] == 3  # N rows; Gram of N·M = 6 rows at most
    assert snap.groups[0].eigvals.shape[0] <= 6
    errors = {}
    for mc in (4, 400):
        ggn = _mc_ggn(model, loss_fn, x, y, setting.outputs, mc, seed=1)
        errors[mc] = float((ggn - exact.ggn).norm() / exact.ggn.norm())
    assert errors[400] < 0.15, errors  # Monte-Carlo error ~ 1/sqrt(M)
    assert errors[400] < errors[4], errors


@pytest.mark.parametrize(
    ("name", "generic"),
    [
        ("broadcast-positions", set()),  # every parameter structured: redirect and shift
        ("transformer-batch-first", "self_attn"),  # F.multi_head_attention_forward's own
        ("batchnorm-train", {"0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias"}),
    ],
)
def test_which_parameters_take_the_generic_path(name: str, generic: set[str] | str) -> None:
    """Structured where the layout test passes; the rest is generic (and still exact)."""
    from curvscope.probe.collector import ViViTCollector

    setting = next(s for s in FUNC_SETTINGS if s.name == name)
    model, loss_fn, x, y = _problem(setting)
    config = ViViTConfig(backend="func")
    collector = ViViTCollector(model, loss_fn, config, outputs=setting.outputs)
    with collector.hooks():
        loss_fn(collector.forward(x), y)
        with collector.backward(y.shape[0]):
            pass
    if isinstance(generic, str):
        generic = {n for n, _ in model.named_parameters() if generic in n}
    assert set(collector.backend.report) == generic


def test_exact_curvature_of_a_language_model_is_refused_with_its_cost() -> None:
    model = nn.Sequential(nn.Embedding(512, 8), nn.Linear(8, 512))
    x = torch.randint(0, 512, (4, 64))
    with pytest.raises(CostError, match=r"32768 columns per sample.*curvature='mc'"):
        compute_snapshot(
            model, nn.CrossEntropyLoss(), x, x, outputs=lambda out: out.transpose(1, 2)
        )


@pytest.mark.parametrize("form", ["structured", "expanded"])
@pytest.mark.parametrize(
    "name", ["functional-cnn", "transformer-seq-first", "tokens-ignore-subsample"]
)
def test_both_factor_forms_match_the_reference(name: str, form: str) -> None:
    """Linear and convolution sites in either form (the cost model picks one per layer)."""
    from curvscope.probe.vivit.factors import factor_form

    setting = next(s for s in FUNC_SETTINGS if s.name == name)
    model, loss_fn, x, y = _problem(setting)
    config = dataclasses.replace(setting.config, backend="func")
    with factor_form(form):  # type: ignore[arg-type]
        snap = compute_snapshot(model, loss_fn, x, y, config, outputs=setting.outputs)
    n = y.shape[0]
    sub = config.subsample_indices(n)
    for group in snap.groups:
        ref = dense_vivit_full(model, loss_fn, x, y, group.params, sub, setting.outputs)
        _check_group(group, ref, n, n if sub is None else len(sub))


def test_a_generic_factor_too_large_is_refused_with_its_size(monkeypatch) -> None:
    """BatchNorm in training mode with exact curvature: V of the generic path is refused."""
    import curvscope.probe.backends.func as func

    setting = next(s for s in FUNC_SETTINGS if s.name == "batchnorm-train")
    model, loss_fn, x, y = _problem(setting)
    monkeypatch.setattr(func, "MAX_GENERIC_BYTES", 1000)
    with pytest.raises(CostError, match=r"generic path \(samples are mixed.*curvature='mc'"):
        compute_snapshot(model, loss_fn, x, y, ViViTConfig(backend="func"))
