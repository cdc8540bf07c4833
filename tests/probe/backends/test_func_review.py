"""Adversarial review of ``backend="func"`` / ``"auto"``: models people write, float64.

Each test compares :func:`compute_snapshot` with the dense full-batch reference
(:func:`~tests.probe.reference.dense_vivit_full`). The review found 14 defects (silently
wrong numbers, or a crash where a snapshot is possible); each test here failed before its
fix. Where refusing is the fix (a loss call that broadcasts, reentrant checkpointing), a
:class:`CurvscopeError` passes.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from curvscope.probe import ViViTConfig, compute_snapshot
from curvscope.probe.errors import CurvscopeError
from tests.probe.reference import dense_vivit_full
from tests.probe.test_compute import _check_eigenvectors, _check_group, _close

FUNC = ViViTConfig(backend="func")


def _check(model, loss_fn, x, y, config=FUNC, outputs=None, ref_model=None):
    """Every group of the snapshot against the dense reference of its own parameters.

    ``ref_model``: an equivalent model (same parameter names) for the reference, where
    ``torch.func`` cannot differentiate ``model`` itself (checkpointing).
    """
    snap = compute_snapshot(model, loss_fn, x, y, config, outputs=outputs)
    ref_model = model if ref_model is None else ref_model
    names = {id(p): name for name, p in model.named_parameters()}
    ref_params = dict(ref_model.named_parameters())
    n = y.shape[0]
    sub = config.subsample_indices(n)
    m = n if sub is None else len(sub)
    assert snap.groups
    for group in snap.groups:
        params = [ref_params[names[id(p)]] for p in group.params]
        ref = dense_vivit_full(ref_model, loss_fn, x, y, params, sub, outputs)
        _check_group(group, ref, n, m)
        if config.eigenvectors:
            _check_eigenvectors(group, ref, config.eigenvectors)
    return snap


def _check_spectrum(model, loss_fn, x, y, config=FUNC) -> None:
    """Eigenvalues only (for a zero gradient, where γ_nk = 0 and the SNRs are undefined)."""
    snap = compute_snapshot(model, loss_fn, x, y, config)
    for group in snap.groups:
        ref = dense_vivit_full(model, loss_fn, x, y, group.params)
        lam_max = float(ref.eigvals[0])
        k = int((ref.eigvals > 1e-9 * lam_max).sum())
        assert group.eigvals.shape[0] == k
        _close(group.eigvals, ref.eigvals[:k], lam_max)


def _seeded(make, seed: int = 0):
    torch.manual_seed(seed)
    return make().double()


CE = nn.CrossEntropyLoss()


def _batch(n: int = 4, d: int = 5, c: int = 3, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, c, (n,), generator=gen)


# -- known defects: silently wrong --------------------------------------------------------


def _tied_sequential() -> nn.Module:
    model = nn.Sequential(nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 3))
    model[2].weight = model[0].weight
    return model


def test_auto_with_tied_weights() -> None:
    model = _seeded(_tied_sequential)
    x, y = _batch()
    _check(model, CE, x, y, ViViTConfig())  # the default: backend="auto"


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(6, 4)
        self.head = nn.Linear(4, 6)
        self.head.weight = self.embed.weight

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(torch.tanh(self.embed(tokens)))


def test_layer_groups_with_tied_weights() -> None:
    model = _seeded(TiedLM)
    tokens = torch.tensor([0, 3, 5, 3])
    y = torch.tensor([1, 2, 0, 4])
    _check(model, CE, tokens, y, ViViTConfig(backend="func", param_groups="layer"))


class Scalar(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(5, 4)
        self.out = nn.Linear(4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.tanh(self.body(x)))  # [N, 1]


def test_mse_sum_with_broadcast_targets() -> None:
    model = _seeded(Scalar)
    x, _ = _batch()
    y = torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about the broadcast
        with contextlib.suppress(CurvscopeError):  # refusing the broadcast is a fix too
            _check(model, nn.MSELoss(reduction="sum"), x, y)


class Checkpointed(nn.Module):
    def __init__(self, reentrant: bool | None) -> None:
        super().__init__()
        self.reentrant = reentrant
        self.body = nn.Linear(5, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        def block(z: Tensor) -> Tensor:
            return torch.tanh(self.body(z))

        if self.reentrant is None:
            return self.head(block(x))
        return self.head(checkpoint(block, x, use_reentrant=self.reentrant))


def test_reentrant_checkpoint() -> None:
    model = _seeded(lambda: Checkpointed(True))
    plain = copy.deepcopy(model)
    plain.reentrant = None
    x, y = _batch()
    x.requires_grad_(True)  # else the checkpointed block gets no gradient at all
    with contextlib.suppress(CurvscopeError):  # refusing it is a fix too
        _check(model, CE, x, y, ref_model=plain)


class LearnedQuery(nn.Module):
    """A parameter as the *input* of a layer (learned queries through a projection)."""

    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(2, 5))
        self.proj = nn.Linear(5, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        q = self.proj(self.query)
        return self.head(torch.tanh(x @ q.T @ q))


class SharedWeight(nn.Module):
    """A layer's weight also used by matmul: the weight is generic, its site is dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(5, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.layer(x))
        return self.head(torch.tanh(h @ self.layer.weight.T))


class SumOfParams(nn.Module):
    """``a + b`` of two parameters, one broadcast: b becomes a shift site, a is not seen."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(5))
        self.b = nn.Parameter(torch.randn(1))
        self.head = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(x + (self.a + self.b)))


class MaskedPositions(nn.Module):
    """nanoGPT-style ``wte(idx) + wpe(arange(T))`` whose sum is then masked in place."""

    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(6, 4)
        self.wpe = nn.Embedding(3, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, idx: Tensor) -> Tensor:
        h = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        h *= (idx != 0).to(h.dtype).unsqueeze(-1)
        return self.head(torch.tanh(h)).mean(1)


def _zero_residual(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).clone()  # targets = outputs: the MSE gradient is exactly zero


@pytest.mark.parametrize("make", [LearnedQuery, SharedWeight, SumOfParams, MaskedPositions])
def test_missed_uses_at_zero_residual(make) -> None:
    model = _seeded(make)
    if make is MaskedPositions:
        x = torch.tensor([[1, 2, 0], [3, 0, 0], [5, 4, 3], [2, 2, 1]])
    else:
        x, _ = _batch()
    _check_spectrum(model, nn.MSELoss(), x, _zero_residual(model, x))


# -- known defects: crashes where a snapshot is possible ---------------------------------


def _inplace_relu() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 6), nn.ReLU(inplace=True), nn.Linear(6, 3))


def _padding_embedding() -> nn.Module:
    return nn.Sequential(nn.Embedding(5, 4, padding_idx=0), nn.Flatten(), nn.Linear(12, 3))


def _same_layer_twice() -> nn.Module:
    layer = nn.Linear(5, 5)
    return nn.Sequential(layer, nn.Tanh(), layer, nn.Tanh(), nn.Linear(5, 3))


@pytest.mark.parametrize("make", [_inplace_relu, _padding_embedding, _same_layer_twice])
def test_auto_falls_back_where_backpack_fails(make) -> None:
    model = _seeded(make)
    if make is _padding_embedding:
        x, y = torch.tensor([[0, 1, 2], [3, 0, 0], [4, 4, 1], [2, 3, 0]]), _batch()[1]
    else:
        x, y = _batch()
    _check(model, CE, x, y, ViViTConfig())


class FoldedFrames(nn.Module):
    """Video frames folded into the batch axis: Conv2d on ``[N·T, C, H, W]``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.head = nn.Linear(3, 3)

    def forward(self, video: Tensor) -> Tensor:
        n, t = video.shape[:2]
        frames = torch.tanh(self.conv(video.flatten(0, 1)))  # [N·T, 3, 2, 2]
        return self.head(frames.mean((2, 3)).view(n, t, 3).mean(1))


def test_conv_on_frames_folded_into_the_batch() -> None:
    model = _seeded(FoldedFrames)
    gen = torch.Generator().manual_seed(3)
    video = torch.randn(3, 2, 2, 4, 4, generator=gen, dtype=torch.float64)
    _check(model, CE, video, torch.tensor([0, 2, 1]))


class ScalarGate(nn.Module):
    """``h + self.gate(h)`` with a ``Linear(d, 1)`` gate: broadcast over the features."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(5, 4)
        self.gate = nn.Linear(4, 1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.embed(x))
        h = h + self.gate(h)
        return self.head(torch.tanh(h).mean(1))


def test_redirect_with_a_broadcast_feature_axis() -> None:
    model = _seeded(ScalarGate)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(4, 3, 5, generator=gen, dtype=torch.float64)
    _check(model, CE, x, torch.tensor([0, 1, 2, 1]))


class FunctionalConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 2, 3, 3) * 0.3)
        self.head = nn.Linear(3 * 5 * 5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(F.conv2d(x, self.weight, padding=[1])).flatten(1))


def test_functional_conv_with_a_one_element_padding_list() -> None:
    model = _seeded(FunctionalConv)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 2, 5, 5, generator=gen, dtype=torch.float64)
    _check(model, CE, x, torch.tensor([0, 2, 1]))


# -- verified: these work ----------------------------------------------------------------


class LayerTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(5, 5)
        self.act = nn.Tanh()
        self.head = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.act(self.layer(self.act(self.layer(x)))))


@pytest.mark.parametrize("backend", ["func", "auto"])
def test_a_layer_applied_twice(backend: str) -> None:
    model = _seeded(LayerTwice)
    x, y = _batch()
    _check(model, CE, x, y, ViViTConfig(backend=backend, eigenvectors=2))


def test_tied_embedding_and_head() -> None:
    model = _seeded(TiedLM)
    tokens = torch.tensor([0, 3, 5, 3])
    _check(model, CE, tokens, torch.tensor([1, 2, 0, 4]), ViViTConfig(backend="func", top_k=4))


class BatchMixing(nn.Module):
    """Samples mixed without BatchNorm: centring over the batch, attention over samples."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(5, 4), nn.Linear(5, 4), nn.Linear(5, 4)
        self.mid = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        att = torch.softmax(self.q(x) @ self.k(x).T, dim=-1)
        h = self.mid(att @ self.v(x))
        return self.head(torch.tanh(h - h.mean(0)))


def test_samples_mixed_without_batchnorm() -> None:
    model = _seeded(BatchMixing)
    x, y = _batch()
    _check(model, CE, x, y, ViViTConfig(backend="func", subsample=[3, 0]))


def test_inplace_ops_after_layers_take_the_generic_path() -> None:
    model = _seeded(
        lambda: nn.Sequential(
            nn.Linear(5, 6),
            nn.ReLU(inplace=True),
            nn.Linear(6, 4),
            nn.ReLU(inplace=True),
            nn.Linear(4, 3),
        )
    )
    x, y = _batch()
    _check(model, CE, x, y)


class SequenceFirstFlat(nn.Module):
    """Rows ``[T·N, E]`` sample-minor (a sequence-first tensor flattened)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        n, t, e = x.shape
        h = torch.tanh(self.layer(x.transpose(0, 1).reshape(t * n, e)))
        return self.head(h.reshape(t, n, 5).mean(0))


def test_sequence_first_flattened_rows() -> None:
    model = _seeded(SequenceFirstFlat)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(3, 3, 4, generator=gen, dtype=torch.float64)  # T == N
    _check(model, CE, x, torch.tensor([0, 2, 1]))


@pytest.mark.parametrize(
    ("conv", "shape"),
    [
        (lambda: nn.Conv2d(4, 6, 3, stride=2, dilation=2, padding=2, groups=2), (4, 5, 5)),
        (lambda: nn.Conv2d(2, 3, (3, 2), padding=1, padding_mode="reflect"), (2, 4, 4)),
        (lambda: nn.Conv1d(3, 6, 2, stride=2, groups=3), (3, 7)),
        (lambda: nn.Conv3d(2, 2, 2, stride=(1, 2, 1), padding=(0, 1, 1)), (2, 3, 4, 3)),
    ],
    ids=["conv2d-groups-dilation", "conv2d-reflect", "conv1d-depthwise", "conv3d"],
)
def test_convolutions(conv, shape) -> None:
    torch.manual_seed(0)
    layer = conv()
    with torch.no_grad():
        features = layer(torch.zeros(1, *shape)).numel()
    model = nn.Sequential(layer, nn.Tanh(), nn.Flatten(), nn.Linear(features, 3)).double()
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(3, *shape, generator=gen, dtype=torch.float64)
    _check(model, CE, x, torch.tensor([0, 2, 1]))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_batchnorm(mode: str) -> None:
    model = _seeded(
        lambda: nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))
    )
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
    getattr(model, mode)()
    x, y = _batch()
    _check(model, CE, x, y)


class Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(5, 4)
        self.out = nn.Linear(4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.tanh(self.body(x))).squeeze(-1)  # [N]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_on_one_dimensional_outputs(reduction: str) -> None:
    model = _seeded(Regressor)
    x, _ = _batch()
    y = torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    _check(model, nn.MSELoss(reduction=reduction), x, y, ViViTConfig(backend="auto"))


def test_a_single_sample() -> None:
    model = _seeded(lambda: nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)))
    x, y = _batch(n=1)
    group = compute_snapshot(model, CE, x, y, FUNC).groups[0]
    ref = dense_vivit_full(model, CE, x, y, group.params)
    k = group.eigvals.shape[0]
    lam_max = float(ref.eigvals[0])
    _close(group.eigvals, ref.eigvals[:k], lam_max)
    assert float(ref.eigvals[k]) <= 1e-9 * lam_max
    gammas = ref.grads @ ref.eigvecs[:, :k]  # N = 1
    _close(group.gammas.abs(), gammas.abs(), float(gammas.abs().max()))
    _close(group.lambdas, ref.eigvals[:k][None], lam_max)


class Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 4, padding_idx=2)
        self.pos = nn.Parameter(torch.randn(1, 3, 4))
        self.head = nn.Linear(4, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(torch.tanh(self.embed(tokens) + self.pos).mean(1))


def test_embedding_with_padding_and_lifted_eigenvectors_on_a_subset() -> None:
    model = _seeded(Tokens)
    tokens = torch.tensor([[2, 2, 1], [0, 2, 5], [6, 3, 2], [1, 1, 4]])
    config = ViViTConfig(backend="func", subsample=[0, 2, 3], eigenvectors=3, top_k=5)
    _check(model, CE, tokens, torch.tensor([0, 1, 2, 1]), config)


def test_explicit_groups_split_weight_and_bias() -> None:
    model = _seeded(lambda: nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)))
    groups = [[model[0].weight, model[2].bias], [model[0].bias], [model[2].weight]]
    x, y = _batch()
    _check(model, CE, x, y, ViViTConfig(backend="func", param_groups=groups, eigenvectors=2))


def test_non_reentrant_checkpoint() -> None:
    model = _seeded(lambda: Checkpointed(False))
    plain = copy.deepcopy(model)
    plain.reentrant = None
    x, y = _batch()
    _check(model, CE, x, y, ref_model=plain)


def test_float32_model_against_a_float64_reference() -> None:
    from tests.probe.func_settings import Encoder

    model = _seeded(Encoder)  # sequence-first attention, embedding, LayerNorm
    gen = torch.Generator().manual_seed(9)
    tokens = torch.randint(0, 7, (3, 3), generator=gen)  # T == N
    y = torch.tensor([0, 2, 1])
    model32 = copy.deepcopy(model).float()
    config = dataclasses.replace(FUNC, eig_rtol=1e-5)
    group = compute_snapshot(model32, CE, tokens, y, config).groups[0]
    ref = dense_vivit_full(model, CE, tokens, y, list(model.parameters()))
    k = group.eigvals.shape[0]
    lam_max = float(ref.eigvals[0])
    _close(group.eigvals.double(), ref.eigvals[:k], lam_max, rtol=1e-5)
    gamma = 3 * ref.grads @ ref.eigvecs[:, 0]
    ours = group.gammas[:, 0].double()
    sign = 1.0 if float(ours @ gamma) >= 0 else -1.0
    _close(sign * ours, gamma, 3 * float(ref.grads.norm(dim=1).max()), rtol=1e-5)
