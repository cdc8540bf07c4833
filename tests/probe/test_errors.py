"""Bad input raises a clear exception before any heavy work (no forward pass runs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from curvscope.probe import (
    BatchNormTrainingError,
    BatchSizeMismatchError,
    ConfigError,
    NonFiniteLossError,
    UnsupportedLayerError,
    UnsupportedLossError,
    ViViTConfig,
    compute_snapshot,
)


class CountForwards:
    def __init__(self, model: nn.Module) -> None:
        self.calls = 0
        model.register_forward_pre_hook(self._hook)

    def _hook(self, *_: object) -> None:
        self.calls += 1


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 3), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def _batch(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 4), torch.randint(0, 2, (n,))


BACKPACK = ViViTConfig(backend="backpack")
"""What BackPACK refuses, it refuses up front (``"auto"`` takes the ``func`` backend)."""


def test_unsupported_layer_names_class_and_path() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Sequential(nn.GELU(), nn.Linear(3, 2)))
    counter = CountForwards(model)
    with pytest.raises(UnsupportedLayerError, match=r"GELU at '1\.0'") as info:
        compute_snapshot(model, nn.CrossEntropyLoss(), *_batch(), BACKPACK)
    assert (info.value.path, info.value.layer) == ("1.0", "GELU")
    assert counter.calls == 0


def test_every_offending_layer_is_named() -> None:
    model = nn.Sequential(
        nn.Linear(4, 3), nn.LayerNorm(3), nn.GELU(), nn.BatchNorm1d(3).train(), nn.Linear(3, 2)
    )
    with pytest.raises(UnsupportedLayerError) as info:
        compute_snapshot(model, nn.CrossEntropyLoss(), *_batch(), BACKPACK)
    message = str(info.value)
    assert (info.value.path, info.value.layer) == ("1", "LayerNorm")
    for named in ("LayerNorm at '1'", "GELU at '2'", "BatchNorm1d at '3'", "backend='func'"):
        assert named in message


def test_functional_op_the_converter_cannot_follow() -> None:
    model = Functional()
    counter = CountForwards(model)
    with pytest.raises(UnsupportedLayerError, match="gelu"):
        compute_snapshot(model, nn.CrossEntropyLoss(), *_batch(), BACKPACK)
    assert counter.calls == 0


def test_batchnorm_in_training_mode() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)).train()
    counter = CountForwards(model)
    with pytest.raises(BatchNormTrainingError, match=r"BatchNorm1d at '1'.*eval"):
        compute_snapshot(model, nn.CrossEntropyLoss(), *_batch(), BACKPACK)
    assert counter.calls == 0


@pytest.mark.parametrize(
    ("loss_fn", "match"),
    [
        (nn.NLLLoss(), "NLLLoss is not supported"),
        (lambda out, y: F.cross_entropy(out, y), "function is not supported"),
        (nn.CrossEntropyLoss(reduction="none"), "reduction='none'"),
    ],
)
@pytest.mark.parametrize("backend", ["auto", "func", "backpack"])
def test_unsupported_losses(loss_fn: object, match: str, backend: str) -> None:
    model = nn.Sequential(nn.Linear(4, 2))
    counter = CountForwards(model)
    with pytest.raises(UnsupportedLossError, match=match):
        compute_snapshot(model, loss_fn, *_batch(), ViViTConfig(backend=backend))  # type: ignore[arg-type]
    assert counter.calls == 0


@pytest.mark.parametrize(
    ("loss_fn", "match"),
    [
        (nn.CrossEntropyLoss(label_smoothing=0.1), "label smoothing"),
        (nn.CrossEntropyLoss(weight=torch.ones(2)), "class weights"),
    ],
)
def test_losses_only_the_func_backend_supports(loss_fn: nn.Module, match: str) -> None:
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(UnsupportedLossError, match=match):
        compute_snapshot(model, loss_fn, *_batch(), BACKPACK)
    assert compute_snapshot(model, loss_fn, *_batch()).backend == "func"


def test_mismatched_batch_sizes() -> None:
    model = nn.Sequential(nn.Linear(4, 2))
    counter = CountForwards(model)
    with pytest.raises(BatchSizeMismatchError, match="5 samples but targets have 4"):
        compute_snapshot(model, nn.CrossEntropyLoss(), torch.randn(5, 4), torch.zeros(4).long())
    assert counter.calls == 0


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (lambda: ViViTConfig(subsample=0), "subsample must be an int >= 1"),
        (lambda: ViViTConfig(subsample=[0, 4]), "index 4 is out of range"),
        (lambda: ViViTConfig(subsample=[1, 1]), "distinct"),
        (lambda: ViViTConfig(subsample=[]), "at least one"),
        (lambda: ViViTConfig(top_k=0), "top_k"),
        (lambda: ViViTConfig(mc_samples=0), "mc_samples"),
        (lambda: ViViTConfig(curvature="kfac"), "curvature"),  # type: ignore[arg-type]
        (lambda: ViViTConfig(param_groups="blocks"), "param_groups"),  # type: ignore[arg-type]
        (lambda: ViViTConfig(eigenvectors=-1), "eigenvectors"),
    ],
)
def test_bad_config(config, match: str) -> None:
    model = nn.Sequential(nn.Linear(4, 2))
    counter = CountForwards(model)
    with pytest.raises(ConfigError, match=match):
        compute_snapshot(model, nn.CrossEntropyLoss(), *_batch(4), config())
    assert counter.calls == 0


def test_foreign_parameter_in_explicit_groups() -> None:
    model = nn.Sequential(nn.Linear(4, 2))
    stranger = nn.Parameter(torch.zeros(3))
    with pytest.raises(ConfigError, match="not a trainable parameter"):
        compute_snapshot(
            model, nn.CrossEntropyLoss(), *_batch(), ViViTConfig(param_groups=[[stranger]])
        )


def test_nan_loss_is_reported_and_leaves_gradients_alone() -> None:
    model = nn.Sequential(nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="nan"):
        compute_snapshot(model, nn.CrossEntropyLoss(), *_batch())
    assert all(p.grad is None for p in model.parameters())
