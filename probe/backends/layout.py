"""Where the samples are in a layer's output, verified rather than assumed.

A structured site needs its output's rows grouped by sample: ``[N, T, ...]``. Models keep
the sample axis first (``[N, T, E]``), move it (``nn.MultiheadAttention`` works on
``[T, N, E]``) or fold it into another axis (``[T·N, E]``). :func:`sample_layout` tries
every arrangement the shape allows and keeps the one that passes an exact test:

the backward pass of ``u = D + Σ_k S_k`` (gradient and curvature cotangents of all samples)
and of ``ω ⊙ u`` (sample n's rows of ``F`` scaled by ``ω_n``, distinct weights) are taken
at the site. If, at the site, sample n's rows receive only sample n's cotangent (samples
independent there) and the arrangement is right, the second is ``ω_n`` times the first on
sample n's rows, up to round-off. A wrong arrangement, or samples mixed downstream of the
site (BatchNorm in training mode), breaks that relation on some rows; the site's
parameters then take the generic path, which is exact for coupled samples too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Layout", "check_weights", "sample_layout"]


@dataclass(frozen=True)
class Layout:
    """An arrangement of the ``lead`` leading axes of a site tensor as ``[N, T]``.

    ``kind`` is ``"axis"`` (axis ``axis`` is the sample axis; the other leading axes are
    positions), ``"major"`` (one leading axis of N·T rows, sample-major) or ``"minor"``
    (one leading axis of T·N rows, sample-minor).
    """

    lead: int
    kind: str
    axis: int = 0
    samples: int = 0

    def apply(self, x: Tensor, offset: int = 0) -> Tensor:
        """``x`` with leading axes at ``offset..offset+lead`` as ``[..., N, T, *rest]``."""
        lead, start = self.lead, offset
        if self.kind == "axis":
            x = x.movedim(start + self.axis, start)
            return x.reshape(*x.shape[: start + 1], -1, *x.shape[start + lead :])
        rows = x.shape[start]
        rest = x.shape[start + 1 :]
        n = self.samples
        if self.kind == "major":
            return x.reshape(*x.shape[:start], n, rows // n, *rest)
        x = x.reshape(*x.shape[:start], rows // n, n, *rest)
        return x.transpose(start, start + 1)


def _candidates(lead_shape: tuple[int, ...], n: int) -> list[Layout]:
    lead = len(lead_shape)
    out = [Layout(lead, "axis", i) for i, size in enumerate(lead_shape) if size == n]
    if lead == 1 and lead_shape[0] > n and lead_shape[0] % n == 0:
        out += [Layout(lead, kind, samples=n) for kind in ("major", "minor")]
    return out


def check_weights(n: int, like: Tensor) -> Tensor:
    """The distinct sample weights ``ω`` (``[N]``, geometric from 1 to 1000)."""
    if n == 1:
        return torch.ones(1, dtype=like.dtype, device=like.device)
    exponent = torch.arange(n, dtype=torch.float64, device=like.device) / (n - 1)
    return (1000.0**exponent).to(like.dtype)


def sample_layout(plain: Tensor, weighted: Tensor, lead: int, omega: Tensor) -> Layout | None:
    """The arrangement of ``plain``'s ``lead`` leading axes that passes the test, if any.

    Args:
        plain: ``[*lead_shape, *feature]``, the backward pass of ``u`` at the site.
        weighted: the same for ``ω ⊙ u``.
        lead: how many leading axes index rows (the rest are the layer's features).
        omega: ``[N]`` the weights of :func:`check_weights`.

    Returns:
        The first arrangement under which ``weighted = ω_n plain`` on every sample's
        rows to ``tol · (‖weighted_n‖ + ω_n ‖plain_n‖)``, ``tol = 0.3 √eps``; ``None``
        if none does (or the shape admits none).
    """
    n = omega.shape[0]
    if lead < 1:
        return None
    tol = 0.3 * torch.finfo(plain.dtype).eps ** 0.5
    for layout in _candidates(tuple(plain.shape[:lead]), n):
        p = layout.apply(plain).reshape(n, -1)
        w = layout.apply(weighted).reshape(n, -1)
        err = (w - omega[:, None] * p).norm(dim=1)
        scale = w.norm(dim=1) + omega * p.norm(dim=1)
        tiny = torch.finfo(plain.dtype).tiny / torch.finfo(plain.dtype).eps
        if bool((err <= tol * scale + tiny).all()):
            return layout
    return None
