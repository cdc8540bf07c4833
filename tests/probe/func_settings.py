"""Models people train, as small float64 test problems for the ``func`` backend.

Each :class:`FuncSetting` builds a model, a loss, a batch (inputs may be a tuple or a dict)
and optionally an ``outputs=`` adapter; :func:`~tests.probe.reference.dense_vivit_full`
is the ground truth for all of them (full-batch Jacobian, torch's own loss).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from curvscope.probe import ViViTConfig


@dataclass
class FuncSetting:
    name: str
    make_model: Callable[[], nn.Module]
    make_loss: Callable[[], nn.Module]
    make_batch: Callable[[torch.Generator], tuple[Any, Tensor]]
    config: ViViTConfig = field(default_factory=ViViTConfig)
    outputs: Callable[[Any], Tensor] | None = None


class NormMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(5, 6), nn.LayerNorm(6), nn.GELU(), nn.Linear(6, 4), nn.SiLU(), nn.Linear(4, 3)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Encoder(nn.Module):
    """Embedding + TransformerEncoder (sequence-first layout) + mean pooling + head."""

    def __init__(self, batch_first: bool = False, vocab: int = 7, d: int = 8) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(
            d, 2, 12, dropout=0.0, batch_first=batch_first, activation="gelu"
        )
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.embed(tokens)  # [N, T, d]
        if not self.batch_first:
            h = h.transpose(0, 1)
        h = self.encoder(h)
        return self.head(h.mean(1 if self.batch_first else 0))


class Recurrent(nn.Module):
    def __init__(self, cell: type[nn.Module]) -> None:
        super().__init__()
        self.rnn = cell(3, 4, batch_first=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class FunctionalCNN(nn.Module):
    """``F.relu``, ``.view``, ``AdaptiveAvgPool2d``, a residual addition and ``.mean``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1, groups=3)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv(x))
        h = h + torch.tanh(self.conv2(h))
        h = self.pool(h)
        h = h.view(h.shape[0], -1)
        return self.fc(h) + h.mean(1, keepdim=True)


def bn_train() -> nn.Module:
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 5),
        nn.BatchNorm1d(5),
        nn.Tanh(),
        nn.Linear(5, 3),
    )
    return model.train()


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(2, 3)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return self.a(x) * torch.sigmoid(self.b(z))


class TinyLM(nn.Module):
    """Keyword inputs and a ModelOutput-like return value with tied embedding weights."""

    def __init__(self, vocab: int = 6, d: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(5, d) * 0.5)
        self.mix = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> SimpleNamespace:
        h = self.embed(input_ids) + self.pos[: input_ids.shape[1]]
        h = torch.tanh(self.mix(h)) * attention_mask.unsqueeze(-1)
        logits = F.linear(self.norm(h), self.embed.weight)  # tied
        return SimpleNamespace(logits=logits)


class Positions(nn.Module):
    """nanoGPT's positions ``wpe(arange(T))`` and a raw ``[T, E]`` parameter, both broadcast."""

    def __init__(self, vocab: int = 6, d: int = 4, t: int = 3) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(t, d)
        self.pos = nn.Parameter(torch.randn(t, d) * 0.5)
        self.shift = nn.Parameter(torch.randn(1, 1, d) * 0.5)
        self.head = nn.Linear(d, vocab)

    def forward(self, idx: Tensor) -> Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        x = torch.tanh(x + self.pos) + self.shift
        return self.head(x)  # [N, T, V]


def _classes(n: int, shape: tuple[int, ...], c: int) -> Callable:
    def make(gen: torch.Generator) -> tuple[Tensor, Tensor]:
        return torch.randn(n, *shape, generator=gen), torch.randint(0, c, (n,), generator=gen)

    return make


def _tokens(n: int, t: int, vocab: int, c: int) -> Callable:
    def make(gen: torch.Generator) -> tuple[Tensor, Tensor]:
        x = torch.randint(0, vocab, (n, t), generator=gen)
        return x, torch.randint(0, c, (n,), generator=gen)

    return make


def _lm_batch(gen: torch.Generator) -> tuple[dict[str, Tensor], Tensor]:
    ids = torch.randint(1, 6, (3, 5), generator=gen)
    ids[0, 3:] = 0  # padding
    mask = (ids != 0).to(torch.float64)
    labels = torch.randint(0, 6, (3, 5), generator=gen)
    labels[0, 3:] = -100
    return {"input_ids": ids, "attention_mask": mask}, labels


def _positions(n: int, c: int, t: int, ignore: bool = False) -> Callable:
    """Per-position classification: inputs ``[N, 4, T]``, targets ``[N, T]``."""

    def make(gen: torch.Generator) -> tuple[Tensor, Tensor]:
        x = torch.randn(n, t, 4, generator=gen)
        y = torch.randint(0, c, (n, t), generator=gen)
        if ignore:
            y[0, 1] = -100
            y[2, :2] = -100
        return x, y

    return make


def per_position() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))


def _soft(gen: torch.Generator) -> tuple[Tensor, Tensor]:
    x = torch.randn(5, 5, generator=gen)
    return x, torch.softmax(torch.randn(5, 3, generator=gen), dim=1)


def _multilabel(gen: torch.Generator) -> tuple[Tensor, Tensor]:
    x = torch.randn(5, 5, generator=gen)
    return x, torch.randint(0, 2, (5, 3), generator=gen).to(torch.float64)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


def _transpose(out: Tensor) -> Tensor:
    return out.transpose(1, 2)


FUNC_SETTINGS: list[FuncSetting] = [
    FuncSetting("layernorm-gelu-silu", NormMLP, nn.CrossEntropyLoss, _classes(6, (5,), 3)),
    FuncSetting("transformer-seq-first", Encoder, nn.CrossEntropyLoss, _tokens(4, 3, 7, 3)),
    FuncSetting("transformer-T-equals-N", Encoder, nn.CrossEntropyLoss, _tokens(3, 3, 7, 3)),
    FuncSetting(
        "transformer-batch-first",
        lambda: Encoder(batch_first=True),
        nn.CrossEntropyLoss,
        _tokens(4, 3, 7, 3),
    ),
    FuncSetting("lstm", lambda: Recurrent(nn.LSTM), nn.CrossEntropyLoss, _classes(4, (3, 3), 3)),
    FuncSetting(
        "gru",
        lambda: Recurrent(nn.GRU),
        nn.MSELoss,
        lambda g: (torch.randn(4, 3, 3, generator=g), torch.randn(4, 3, generator=g)),
    ),
    FuncSetting("functional-cnn", FunctionalCNN, nn.CrossEntropyLoss, _classes(4, (2, 5, 5), 3)),
    FuncSetting("batchnorm-train", bn_train, nn.CrossEntropyLoss, _classes(5, (2, 6, 6), 3)),
    FuncSetting(
        "batchnorm-train-subsample",
        bn_train,
        nn.CrossEntropyLoss,
        _classes(5, (2, 6, 6), 3),
        ViViTConfig(subsample=[3, 1], eigenvectors=2),
    ),
    FuncSetting(
        "batchnorm-train-layer-groups",
        bn_train,
        lambda: nn.CrossEntropyLoss(reduction="sum"),
        _classes(4, (2, 6, 6), 3),
        ViViTConfig(param_groups="layer"),
    ),
    FuncSetting(
        "tokens-ignore-index",
        per_position,
        nn.CrossEntropyLoss,
        _positions(3, 3, 4, ignore=True),
        outputs=_transpose,
    ),
    FuncSetting(
        "tokens-ignore-subsample",
        per_position,
        nn.CrossEntropyLoss,
        _positions(4, 3, 3, ignore=True),
        ViViTConfig(subsample=[2, 0]),
        outputs=_transpose,
    ),
    FuncSetting(
        "class-weights",
        mlp,
        lambda: nn.CrossEntropyLoss(weight=torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)),
        _classes(6, (5,), 3),
    ),
    FuncSetting(
        "label-smoothing",
        mlp,
        lambda: nn.CrossEntropyLoss(label_smoothing=0.2),
        _classes(6, (5,), 3),
    ),
    FuncSetting(
        "weights-smoothing-tokens",
        per_position,
        lambda: nn.CrossEntropyLoss(
            weight=torch.tensor([0.3, 1.5, 1.0], dtype=torch.float64), label_smoothing=0.1
        ),
        _positions(3, 3, 3, ignore=True),
        outputs=_transpose,
    ),
    FuncSetting("soft-targets", mlp, nn.CrossEntropyLoss, _soft),
    FuncSetting(
        "bce-multilabel-weights",
        mlp,
        lambda: nn.BCEWithLogitsLoss(
            weight=torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64),
            pos_weight=torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64),
        ),
        _multilabel,
    ),
    FuncSetting(
        "mse-sequence-sum",
        per_position,
        lambda: nn.MSELoss(reduction="sum"),
        lambda g: (torch.randn(3, 4, 4, generator=g), torch.randn(3, 4, 3, generator=g)),
    ),
    FuncSetting(
        "tuple-inputs",
        TwoInputs,
        nn.CrossEntropyLoss,
        lambda g: (
            (torch.randn(5, 4, generator=g), torch.randn(5, 2, generator=g)),
            torch.randint(0, 3, (5,), generator=g),
        ),
    ),
    FuncSetting(
        "dict-inputs-tied-adapter",
        TinyLM,
        nn.CrossEntropyLoss,
        _lm_batch,
        outputs=lambda out: out.logits.transpose(1, 2),
    ),
    FuncSetting(
        "broadcast-positions",
        Positions,
        nn.CrossEntropyLoss,
        lambda g: (
            torch.randint(0, 6, (3, 3), generator=g),
            torch.randint(0, 6, (3, 3), generator=g),
        ),
        outputs=_transpose,
    ),
    FuncSetting(
        "mlp-top-k-eigenvectors",
        mlp,
        nn.CrossEntropyLoss,
        _classes(6, (5,), 3),
        ViViTConfig(top_k=3, eigenvectors=2),
    ),
]
