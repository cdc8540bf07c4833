"""Structured, own-expanded and BackPACK-expanded factors agree (float64).

Every factor form of every supported layer is checked against BackPACK's generic
expansion (``factor_form("backpack")``: ``SqrtGGN*`` + ``BatchGrad``-style per-sample
gradients), and ``compute_snapshot`` with each form forced against the dense reference.
"""

from __future__ import annotations

import pytest
import torch
from backpack import backpack
from torch import Tensor, nn

from curvscope.probe import ViViTConfig, compute_snapshot
from curvscope.probe.backends.backpack_extension import FactorExtension, attach_hooks, factor_form
from curvscope.probe.vivit import factors
from curvscope.probe.vivit.factors import (
    ExpandedFactor,
    Factor,
    OuterProductFactor,
    prefer_structured,
)
from tests.probe.reference import dense_vivit
from tests.probe.test_compute import _check_group

RTOL = 1e-11
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


class Case:
    def __init__(self, name: str, make_model, in_shape: tuple[int, ...], n: int = 4) -> None:
        self.name, self.make_model, self.in_shape, self.n = name, make_model, in_shape, n


def _head(features: int) -> list[nn.Module]:
    return [nn.Flatten(), nn.Linear(features, 3)]


CASES = [
    Case("linear", lambda: nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)), (5,)),
    Case(
        "linear-extra-dims",
        lambda: nn.Sequential(
            nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2, bias=False), nn.Flatten()
        ),
        (3, 4),
    ),
    Case(
        "conv1d-groups-stride-dilation",
        lambda: nn.Sequential(
            nn.Conv1d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2), nn.Tanh(), *_head(6 * 4)
        ),
        (4, 8),
    ),
    Case(
        "conv2d-groups-padding",
        lambda: nn.Sequential(
            nn.Conv2d(3, 6, (3, 2), stride=(1, 2), padding=1, groups=3),
            nn.ReLU(),
            nn.Conv2d(6, 4, 2, dilation=2, bias=False),
            *_head(4 * 3 * 1),
        ),
        (3, 5, 5),
    ),
    Case(
        "conv3d",
        lambda: nn.Sequential(
            nn.Conv3d(2, 4, 2, stride=(1, 2, 1), padding=(0, 1, 0), groups=2),
            nn.Sigmoid(),
            *_head(4 * 2 * 2 * 2),
        ),
        (2, 3, 3, 3),
        n=3,
    ),
]


def _problem(case: Case, seed: int = 0):
    torch.manual_seed(seed)
    model = case.make_model().double()
    x = torch.randn(case.n, *case.in_shape, dtype=torch.float64)
    out_dim = model(x).shape[1]
    y = torch.randint(0, out_dim, (case.n,))
    return model, nn.CrossEntropyLoss(), x, y


def _factors(model, loss_fn, x, y, form, curvature="exact", subsampling=None) -> dict:
    """Run one BackPACK backward with ``form`` forced; return ``{param name: Factor}``."""
    names = {id(p): name for name, p in model.named_parameters()}
    out: dict[str, Factor] = {}
    ext = FactorExtension(
        curvature,
        2,
        subsampling,
        sink=lambda p, f: out.__setitem__(names[id(p)], f),
        accepts=lambda p: True,
    )
    torch.manual_seed(1)  # same MC samples for every form
    with attach_hooks(model, loss_fn), factor_form(form):
        loss = loss_fn(model(x), y)
        with backpack(ext.backpack_extension):
            loss.backward()
    model.zero_grad()
    assert set(out) == set(names.values())
    return out


def _close(a: Tensor, b: Tensor) -> None:
    a, b = a.detach(), b.detach()
    assert a.shape == b.shape
    scale = max(float(b.abs().max()), 1e-300)
    assert float((a - b).abs().max()) <= RTOL * scale


def _agree(ours: Factor, ref: Factor, r: int) -> None:
    _close(ours.gram(), ref.gram())
    _close(ours.vt_grads(), ref.vt_grads())
    _close(ours.grad(), ref.grad())
    coeffs = torch.randn(r, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    _close(ours.lift(coeffs), ref.lift(coeffs))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize(
    ("curvature", "subsampling"), [("exact", None), ("exact", [2, 0]), ("mc", [1])]
)
def test_forms_agree_with_backpack(case: Case, curvature: str, subsampling) -> None:
    model, loss_fn, x, y = _problem(case)
    ref = _factors(model, loss_fn, x, y, "backpack", curvature, subsampling)
    r = ref[next(iter(ref))].gram().shape[0]
    expected_kind = {"structured": OuterProductFactor, "expanded": ExpandedFactor}
    for form in ("structured", "expanded"):
        ours = _factors(model, loss_fn, x, y, form, curvature, subsampling)
        for name, factor in ours.items():
            layer = dict(model.named_modules())[name.rsplit(".", 1)[0]]
            own_expansion = not isinstance(layer, nn.Linear) or form == "structured"
            if name.endswith("weight") and own_expansion:
                assert isinstance(factor, expected_kind[form]), name
            _agree(factor, ref[name], r)
        # the gradient is the batch gradient autograd computes
        loss_fn(model(x), y).backward()
        for name, p in model.named_parameters():
            _close(ours[name].grad(), p.grad)
        model.zero_grad()


def test_chunked_pairs_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny chunks (one sample and position at a time) change nothing."""
    case = CASES[3]
    model, loss_fn, x, y = _problem(case)
    whole = _factors(model, loss_fn, x, y, "structured")
    monkeypatch.setattr(factors, "CHUNK_ELEMENTS", 1)
    chunked = _factors(model, loss_fn, x, y, "structured")
    for name, factor in chunked.items():
        _agree(factor, whole[name], whole[name].gram().shape[0])


@pytest.mark.parametrize("form", ["structured", "expanded", "auto"])
@pytest.mark.parametrize("case", CASES[1:4], ids=[c.name for c in CASES[1:4]])
def test_snapshot_matches_dense_reference(case: Case, form: str) -> None:
    model, loss_fn, x, y = _problem(case)
    with factor_form(form):
        snap = compute_snapshot(model, loss_fn, x, y, ViViTConfig(subsample=[0, 2, 3]))
    group = snap.groups[0]
    ref = dense_vivit(model, loss_fn, x, y, group.params, [0, 2, 3])
    _check_group(group, ref, x.shape[0], 3)


def test_cost_model_picks_the_cheaper_form() -> None:
    # 3c3d at N = 64 (R = 640): linear layers structured; all three convolutions expanded
    # (28x28, 12x12 and 6x6 positions; the 6x6 one measured slower structured)
    assert prefer_structured(640, 1, 64, 512, 1152)
    assert not prefer_structured(640, 28 * 28, 64, 64, 75)
    assert not prefer_structured(640, 12 * 12, 64, 96, 576)
    assert not prefer_structured(640, 6 * 6, 64, 128, 864)
    # a wide convolution on a 2x2 map: V would be 640 x 590k, the structured form is small
    assert prefer_structured(640, 2 * 2, 64, 256, 256 * 9)
    # depthwise conv: tiny blocks, many positions -> expanded
    assert not prefer_structured(640, 32 * 32, 64, 1, 9, groups=32)


def test_unknown_form_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown factor form"), factor_form("dense"):  # type: ignore[arg-type]
        pass
