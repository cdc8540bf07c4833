"""The strided-window unfold matches ``torch.nn.functional.unfold`` and BackPACK's."""

from __future__ import annotations

import pytest
import torch
from backpack.utils.conv import unfold_by_conv
from torch import nn

from curvscope.probe.vivit.conv_factors import _unfold, unfold_groups

MODULES = [
    (nn.Conv1d(4, 2, 3, stride=2, padding=3, dilation=3), (3, 4, 11)),
    (
        nn.Conv2d(3, 6, (3, 2), stride=(1, 2), padding=(2, 1), dilation=(2, 1), groups=3),
        (2, 3, 7, 6),
    ),
    (
        nn.Conv3d(
            4, 6, (3, 2, 2), stride=(2, 1, 3), padding=(1, 2, 0), dilation=(1, 2, 2), groups=2
        ),
        (2, 4, 7, 6, 7),
    ),
]


@pytest.mark.parametrize(("module", "shape"), MODULES, ids=lambda v: type(v).__name__)
def test_unfold_matches_references(module: nn.Module, shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape, dtype=torch.float64)
    module = module.double()
    ours = _unfold(module, x)
    reference = unfold_by_conv(x, module)  # BackPACK's convolution-based unfold
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-14)
    if x.dim() == 4:
        unfolded = torch.nn.functional.unfold(
            x, module.kernel_size, module.dilation, module.padding, module.stride
        )
        torch.testing.assert_close(ours, unfolded, rtol=0, atol=1e-14)
    groups = unfold_groups(module, x)
    assert groups.shape == (shape[0], module.groups, ours.shape[1] // module.groups, ours.shape[2])


@pytest.mark.parametrize(
    "conv",
    [
        lambda: nn.Conv2d(2, 3, 3, padding="same"),
        lambda: nn.Conv2d(2, 3, 4, padding="same", dilation=2),
        lambda: nn.Conv2d(2, 3, (3, 2), padding=(1, 2), padding_mode="reflect"),
        lambda: nn.Conv1d(2, 3, 3, padding=1, padding_mode="circular"),
        lambda: nn.Conv3d(2, 3, 2, padding="valid", stride=2),
    ],
)
def test_unfold_pads_like_the_convolution(conv) -> None:
    """Patches times the weight reproduce the layer, whatever its padding."""
    torch.manual_seed(0)
    module = conv().double()
    x = torch.randn(2, 2, *([6] * (module.weight.dim() - 2)), dtype=torch.float64)
    patches = unfold_groups(module, x)[:, 0]  # [N, Cin·K, L]
    out = torch.einsum("oi,nil->nol", module.weight.flatten(start_dim=1), patches)
    out = out + module.bias[None, :, None]
    assert torch.allclose(out, module(x).flatten(start_dim=2), rtol=1e-12, atol=1e-12)
