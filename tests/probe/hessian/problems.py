"""Small test problems for the Hessian code, BackPACK style: each is a factory (float64)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tests.probe.settings import cnn


class TwoInputs(nn.Module):
    """``(x, z) -> {"logits": ...}``: tuple or dict inputs, and an outputs adapter."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(2, 3)

    def forward(self, x: Tensor, z: Tensor) -> dict[str, Tensor]:
        return {"logits": torch.tanh(self.a(x)) * self.b(z)}


class TinyAttention(nn.Module):
    """One causal self-attention head through ``scaled_dot_product_attention``."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(3, 6)
        self.head = nn.Linear(2, 2)

    def forward(self, x: Tensor) -> Tensor:  # [N, T, 3] -> [N, 2, T]
        q, k, v = self.qkv(x).split(2, dim=-1)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.head(y).transpose(1, 2)


@dataclass
class Problem:
    """A model, loss and batch; ``group`` picks a parameter group (default: all)."""

    name: str
    make_model: Callable[[], nn.Module]
    loss_fn: nn.Module
    make_batch: Callable[[torch.Generator], tuple[Any, Tensor]]
    group: Callable[[nn.Module], list[nn.Parameter]] | None = None
    outputs: Callable[[Any], Tensor] | None = None
    indefinite: bool = False  # the Hessian has clearly negative eigenvalues
    coupled: bool = False  # BatchNorm in training mode (see reference.dense_hessian)

    def build(self, seed: int = 0) -> tuple[nn.Module, Any, Tensor, list[nn.Parameter]]:
        torch.manual_seed(seed)
        model = self.make_model().double()
        inputs, targets = self.make_batch(torch.Generator().manual_seed(seed))
        params = self.group(model) if self.group else list(model.parameters())
        return model, inputs, targets, params


def _classes(n: int, shape: tuple[int, ...], c: int) -> Callable:
    def make(gen: torch.Generator) -> tuple[Tensor, Tensor]:
        x = torch.randn(n, *shape, generator=gen, dtype=torch.float64)
        return x, torch.randint(0, c, (n,), generator=gen)

    return make


def _regression(n: int, d: int, out: int, scale: float = 1.0) -> Callable:
    def make(gen: torch.Generator) -> tuple[Tensor, Tensor]:
        x = torch.randn(n, d, generator=gen, dtype=torch.float64)
        return x, scale * torch.randn(n, out, generator=gen, dtype=torch.float64)

    return make


def mlp_tanh() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))


def mlp_relu() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 2))


def far_from_minimum() -> nn.Module:
    """Large weights: cross-entropy far from a minimum has negative curvature."""
    model = mlp_tanh()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    return model


def mlp_sigmoid() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 2))


def bn_train() -> nn.Module:
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 3))
    model[1].running_mean.normal_()
    model[1].running_var.uniform_(0.5, 2.0)
    return model.train()


def _two_inputs(gen: torch.Generator) -> tuple[tuple[Tensor, Tensor], Tensor]:
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    z = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    return (x, z), torch.randint(0, 3, (6,), generator=gen)


def _two_inputs_dict(gen: torch.Generator) -> tuple[dict[str, Tensor], Tensor]:
    (x, z), y = _two_inputs(gen)
    return {"x": x, "z": z}, y


def _sequences(gen: torch.Generator) -> tuple[Tensor, Tensor]:
    x = torch.randn(3, 4, 3, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, 2, (3, 4), generator=gen)


def _logits(out: dict[str, Tensor]) -> Tensor:
    return out["logits"]


PROBLEMS: list[Problem] = [
    Problem("mlp-tanh-ce", mlp_tanh, nn.CrossEntropyLoss(), _classes(8, (5,), 3)),
    Problem("mlp-relu-mse", mlp_relu, nn.MSELoss(), _regression(8, 5, 2)),
    Problem("cnn-ce", cnn, nn.CrossEntropyLoss(), _classes(4, (2, 6, 6), 3)),
    Problem(
        "ce-far-from-minimum",
        far_from_minimum,
        nn.CrossEntropyLoss(),
        _classes(8, (5,), 3),
        indefinite=True,
    ),
    Problem(
        "mse-sigmoid",
        mlp_sigmoid,
        nn.MSELoss(),
        _regression(8, 3, 2, scale=5.0),
        indefinite=True,
    ),
    Problem(
        "group-first-layer",
        mlp_tanh,
        nn.CrossEntropyLoss(),
        _classes(8, (5,), 3),
        group=lambda m: [m[0].weight, m[0].bias],
    ),
    Problem(
        "group-mixed",
        mlp_tanh,
        nn.CrossEntropyLoss(reduction="sum"),
        _classes(8, (5,), 3),
        group=lambda m: [m[2].bias, m[0].weight],
    ),
    Problem(
        "group-last-layer-mse",  # I_3 ⊗ A Aᵀ: each eigenvalue 3 times, rank 12 of 21
        mlp_tanh,
        nn.MSELoss(),
        _regression(4, 5, 3),
        group=lambda m: [m[2].weight, m[2].bias],
    ),
    Problem("bn-train-ce", bn_train, nn.CrossEntropyLoss(), _classes(8, (5,), 3), coupled=True),
    Problem("tuple-inputs", TwoInputs, nn.CrossEntropyLoss(), _two_inputs, outputs=_logits),
    Problem("dict-inputs", TwoInputs, nn.CrossEntropyLoss(), _two_inputs_dict, outputs=_logits),
    Problem("attention", TinyAttention, nn.CrossEntropyLoss(), _sequences),
]
"""Every problem; ``name`` is the pytest id."""

BY_NAME = {p.name: p for p in PROBLEMS}
