"""Small test problems (model, loss, batch, config), BackPACK style: each is a factory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from curvscope.probe import ViViTConfig


class Residual(nn.Module):
    """``x + block(x)`` followed by a head: needs BackPACK's converter (the ``+``)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 4)
        self.block = nn.Sequential(nn.Tanh(), nn.Linear(4, 4))
        self.head = nn.Sequential(nn.Sigmoid(), nn.Linear(4, 3))

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        return self.head(h + self.block(h))


@dataclass
class Setting:
    name: str
    make_model: Callable[[], nn.Module]
    loss_fn: nn.Module
    make_batch: Callable[[torch.Generator], tuple[Tensor, Tensor]]
    config: ViViTConfig = field(default_factory=ViViTConfig)
    groups: Callable[[nn.Module], list[list[nn.Parameter]]] | None = None


def _classes(n: int, d: int | tuple[int, ...], c: int) -> Callable:
    shape = (d,) if isinstance(d, int) else d

    def make(gen: torch.Generator) -> tuple[Tensor, Tensor]:
        return torch.randn(n, *shape, generator=gen), torch.randint(0, c, (n,), generator=gen)

    return make


def _regression(n: int, d: int | tuple[int, ...], out: tuple[int, ...]) -> Callable:
    shape = (d,) if isinstance(d, int) else d

    def make(gen: torch.Generator) -> tuple[Tensor, Tensor]:
        return torch.randn(n, *shape, generator=gen), torch.randn(n, *out, generator=gen)

    return make


def _binary(n: int, d: int, c: int) -> Callable:
    def make(gen: torch.Generator) -> tuple[Tensor, Tensor]:
        x = torch.randn(n, d, generator=gen)
        return x, torch.randint(0, 2, (n, c), generator=gen).to(torch.get_default_dtype())

    return make


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 3))


def mlp_scalar() -> nn.Module:
    """One output (BackPACK's BCEWithLogitsLoss supports scalar predictions only)."""
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 1))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 2, 2, stride=1, dilation=1),
        nn.Flatten(),
        nn.Linear(2 * 2 * 2, 3),
    )


def bn_eval() -> nn.Module:
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 3))
    model[1].running_mean.normal_()
    model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def sequence_linear() -> nn.Module:
    """Linear layers on ``[N, T, I]`` inputs (extra dimension T = 3), flattened at the end."""
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2), nn.Flatten())


SETTINGS: list[Setting] = [
    Setting("mlp-ce-mean", mlp, nn.CrossEntropyLoss(), _classes(6, 5, 3)),
    Setting("mlp-ce-sum", mlp, nn.CrossEntropyLoss(reduction="sum"), _classes(5, 5, 3)),
    Setting("mlp-mse-mean", mlp, nn.MSELoss(), _regression(6, 5, (3,))),
    Setting("mlp-mse-sum", mlp, nn.MSELoss(reduction="sum"), _regression(4, 5, (3,))),
    Setting("mlp-bce-mean", mlp_scalar, nn.BCEWithLogitsLoss(), _binary(6, 5, 1)),
    Setting("mlp-bce-sum", mlp_scalar, nn.BCEWithLogitsLoss(reduction="sum"), _binary(5, 5, 1)),
    Setting("cnn-ce-mean", cnn, nn.CrossEntropyLoss(), _classes(4, (2, 6, 6), 3)),
    Setting("bn-eval-ce", bn_eval, nn.CrossEntropyLoss(), _classes(6, 5, 3)),
    Setting("residual-ce", Residual, nn.CrossEntropyLoss(), _classes(5, 5, 3)),
    Setting("sequence-mse", sequence_linear, nn.MSELoss(), _regression(5, (3, 4), (6,))),
    Setting(
        "subsample-int", mlp, nn.CrossEntropyLoss(), _classes(7, 5, 3), ViViTConfig(subsample=3)
    ),
    Setting(
        "subsample-list-sum",
        mlp,
        nn.MSELoss(reduction="sum"),
        _regression(6, 5, (3,)),
        ViViTConfig(subsample=[4, 1, 5]),
    ),
    Setting(
        "subsample-cnn",
        cnn,
        nn.CrossEntropyLoss(),
        _classes(5, (2, 6, 6), 3),
        ViViTConfig(subsample=[0, 3]),
    ),
    Setting(
        "layer-groups",
        mlp,
        nn.CrossEntropyLoss(),
        _classes(6, 5, 3),
        ViViTConfig(param_groups="layer"),
    ),
    Setting(
        "explicit-groups",
        mlp,
        nn.CrossEntropyLoss(),
        _classes(6, 5, 3),
        groups=lambda m: [[m[0].weight, m[4].bias], [m[2].weight, m[2].bias]],
    ),
    Setting("top-k", mlp, nn.CrossEntropyLoss(), _classes(6, 5, 3), ViViTConfig(top_k=3)),
    Setting(
        "eigenvectors",
        cnn,
        nn.CrossEntropyLoss(),
        _classes(4, (2, 6, 6), 3),
        ViViTConfig(eigenvectors=4),
    ),
]
