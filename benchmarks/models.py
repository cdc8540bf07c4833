"""Models the benchmarks measure (no curvscope imports: plain ``torch.nn``).

- :func:`three_c_three_d` -- DeepOBS CIFAR-10 3c3d (re-exported from
  :mod:`benchmarks.snapshot_vs_vivit`, where it is defined).
- :class:`TinyGPT` -- a nanoGPT-style decoder: token and position embeddings, pre-LayerNorm
  blocks of causal self-attention (one ``nn.Linear(d, 3d)`` q/k/v projection,
  ``F.scaled_dot_product_attention(is_causal=True)``, ``nn.Linear(d, d)`` output
  projection) and a GELU MLP, a final LayerNorm and an untied ``nn.Linear(d, V)`` head.
  Returns logits ``[N, T, V]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.snapshot_vs_vivit import three_c_three_d

__all__ = ["CausalSelfAttention", "GPTBlock", "TinyGPT", "three_c_three_d"]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, nanoGPT's ``CausalSelfAttention``."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        if d % heads:
            raise ValueError(f"width {d} is not a multiple of {heads} heads")
        self.heads = heads
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (z.view(n, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [N, H, T, d/H]
        return self.c_proj(y.transpose(1, 2).contiguous().view(n, t, d))


class GPTBlock(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, heads)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    """A small GPT: ``[N, T]`` token indices to logits ``[N, T, vocab]``.

    The defaults (vocabulary 512, context 64, width 160, 3 blocks of 4 heads) have
    1,102,752 parameters.
    """

    def __init__(
        self, vocab: int = 512, context: int = 64, d: int = 160, layers: int = 3, heads: int = 4
    ) -> None:
        super().__init__()
        self.context = context
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(context, d)
        self.blocks = nn.ModuleList(GPTBlock(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)  # untied from wte

    def forward(self, idx: Tensor) -> Tensor:
        t = idx.shape[1]
        if t > self.context:
            raise ValueError(f"sequence of {t} tokens is longer than the context {self.context}")
        pos = torch.arange(t, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)  # [N, T, d] + [T, d]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))
