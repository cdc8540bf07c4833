"""The paper's noisy quadratic (ViViT §4.2, Fig. 3): constant vs. bootstrap directional damping.

Problem: ``L(θ) = θᵀ G θ`` with ``G = diag(i²)``, ``i = 1..D`` (``D = 20``), ``θ₀ = 100·1``,
minimum ``θ* = 0``. The optimiser sees the unit vectors ``e_k`` as its directions; along
``e_k`` the loss has gradient ``γ_k = 2 k² θ_k`` and curvature ``λ_k = 2 k²``.

Noise model (unbiased, constant variance, independent over samples, directions, steps):
``γ_nk = γ_k + σ_γ ε_nk`` and ``λ_nk = λ_k + σ_λ ε'_nk`` with ``ε, ε' ~ N(0, 1)``,
``n = 1..N``; defaults ``N = 8``, ``σ_γ = 10``, ``σ_λ = 10``. The constant variance means
that the low-curvature directions (small k) have the noisiest curvature: their mini-batch
mean ``λ_k ± σ_λ/√N`` can be close to zero or negative.

Methods, all fed the same noise draws per seed (common random numbers):
- ``sgd``: ``θ ← θ − lr · mean_n γ_nk`` with ``lr = 1e-3`` (stable: ``lr < 2/λ_max``);
- ``const δ=…``: damped Newton ``θ_k ← θ_k − γ_k/(λ_k + δ)`` with batch means;
- ``bootstrap``: the same step with ``δ_k`` from
  :class:`curvscope.probe.BootstrapDamping` (defaults: log grid 1e-3..1e2 with 100 values,
  100 resamples, 5 % quantile); ``δ_k = inf`` means no step along ``e_k``.

Run::

    python benchmarks/noisy_quadratic.py --seeds 100 --json out.json --html fig.html

It prints the median, quartiles and maximum of the final loss and of the final distance
``‖θ − θ*‖`` after ``--steps`` (20) steps over the seeds, per method, and how many runs
ended farther from the minimum than they started ("unstable").
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from curvscope.probe import BootstrapDamping

DIM = 20
THETA0 = 100.0
SGD_LR = 1e-3
CONSTANT_DAMPINGS = (1e-4, 1e-2, 1.0, 10.0, 100.0)


@dataclass
class Trace:
    """One method's runs: ``losses``, ``distances`` ``[T + 1, S]``; ``dampings [T, S, D]``."""

    losses: Tensor
    distances: Tensor
    dampings: Tensor | None = None


def curvature() -> Tensor:
    """``[D]`` diagonal of ``G``: ``k²``."""
    return torch.arange(1, DIM + 1, dtype=torch.float64).square()


def loss_of(theta: Tensor) -> Tensor:
    """``θᵀ G θ`` per run: ``[S, D]`` -> ``[S]``."""
    return (curvature() * theta.square()).sum(-1)


def draw_noise(seeds: int, steps: int, samples: int, seed: int) -> tuple[Tensor, Tensor]:
    """``ε, ε'`` of every step: two ``[T, S, N, D]`` standard normal tensors."""
    gen = torch.Generator().manual_seed(seed)
    shape = (steps, seeds, samples, DIM)
    return (
        torch.randn(shape, generator=gen, dtype=torch.float64),
        torch.randn(shape, generator=gen, dtype=torch.float64),
    )


def observe(theta: Tensor, eps_g: Tensor, eps_l: Tensor, sigma_g: float, sigma_l: float):
    """Noisy per-sample ``γ_nk``, ``λ_nk``: ``[S, N, D]`` each."""
    gamma = 2.0 * curvature() * theta  # [S, D]
    lam = (2.0 * curvature()).expand_as(theta)
    return gamma[:, None] + sigma_g * eps_g, lam[:, None] + sigma_l * eps_l


def run(method: str, args: argparse.Namespace, noise: tuple[Tensor, Tensor]) -> Trace:
    """All seeds of one method at once."""
    eps_g, eps_l = noise
    theta = torch.full((args.seeds, DIM), THETA0, dtype=torch.float64)
    losses, distances, dampings = [loss_of(theta)], [theta.norm(dim=-1)], []
    policy = BootstrapDamping(seed=args.seed + 1) if method == "bootstrap" else None
    for t in range(args.steps):
        gammas, lambdas = observe(theta, eps_g[t], eps_l[t], args.sigma_gamma, args.sigma_lambda)
        gamma, lam = gammas.mean(1), lambdas.mean(1)
        if method == "sgd":
            theta = theta - SGD_LR * gamma
        else:
            if policy is not None:
                chunks = zip(gammas.split(25), lambdas.split(25), strict=True)  # bounded memory
                delta = torch.cat([policy(g, lm) for g, lm in chunks])
                dampings.append(delta)
            else:
                delta = torch.full_like(gamma, float(method.split("=")[1]))
            step = torch.where(delta.isinf(), 0.0, -gamma / (lam + delta))
            theta = theta + step
        losses.append(loss_of(theta))
        distances.append(theta.norm(dim=-1))
    return Trace(
        torch.stack(losses),
        torch.stack(distances),
        torch.stack(dampings) if dampings else None,
    )


def method_names() -> list[str]:
    return ["sgd", *[f"const δ={d:g}" for d in CONSTANT_DAMPINGS], "bootstrap"]


def summary(values: Tensor) -> dict[str, float | None]:
    """Median, quartiles and maximum over the seeds (``None`` for a non-finite value)."""
    v = values.double()
    stats = {
        "median": v.nanquantile(0.5),
        "q25": v.nanquantile(0.25),
        "q75": v.nanquantile(0.75),
        "max": v.max(),
    }
    return {k: (float(x) if math.isfinite(float(x)) else None) for k, x in stats.items()}


def _fmt(x: float | None) -> str:
    return "    n/a" if x is None else f"{x:9.3g}"


def print_table(results: dict[str, dict[str, dict]], unstable: dict[str, int], seeds: int):
    head = f"{'method':<16}" + "".join(
        f"{what + ' ' + k:>17}"
        for what in ("loss", "dist")
        for k in ("median", "q25", "q75", "max")
    )
    print(head + f"{'unstable':>10}")
    for name, res in results.items():
        cells = [
            _fmt(res[key][k]).rjust(17)
            for key in ("final_loss", "final_distance")
            for k in ("median", "q25", "q75", "max")
        ]
        print(f"{name:<16}" + "".join(cells) + f"{unstable[name]:>7}/{seeds}")


def write_html(path: str, traces: dict[str, Trace]) -> None:
    """Fig. 3 of the paper as one self-contained Plotly HTML file."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative, sample_colorscale
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=(
            "loss (median, quartile band)",
            "‖θ − θ*‖ after the last step",
            "bootstrap, seed 0: relative damping δ_k/k² (gaps: δ_k = inf, no step)",
        ),
    )
    colors = qualitative.Plotly
    for i, (name, trace) in enumerate(traces.items()):
        color = colors[i % len(colors)]
        steps = list(range(trace.losses.shape[0]))
        q = torch.nanquantile(trace.losses, torch.tensor([0.25, 0.5, 0.75]).double(), dim=1)
        fig.add_trace(
            go.Scatter(
                x=steps + steps[::-1],
                y=q[2].tolist() + q[0].flip(0).tolist(),
                fill="toself",
                fillcolor=color,
                opacity=0.2,
                line={"width": 0},
                legendgroup=name,
                showlegend=False,
                hoverinfo="skip",
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=steps, y=q[1].tolist(), name=name, legendgroup=name, line={"color": color}
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Box(
                y=trace.distances[-1].tolist(),
                name=name,
                legendgroup=name,
                showlegend=False,
                marker_color=color,
                boxpoints=False,
            ),
            row=1,
            col=2,
        )
    boot = traces.get("bootstrap")
    if boot is not None and boot.dampings is not None:
        rel = boot.dampings[:, 0, :] / curvature()  # [T, D]
        shades = sample_colorscale("YlOrRd", [k / (DIM - 1) for k in range(DIM)])
        for k in range(DIM):
            ys = [None if not math.isfinite(v) else v for v in rel[:, k].tolist()]
            fig.add_trace(
                go.Scatter(
                    x=list(range(rel.shape[0])),
                    y=ys,
                    name=f"k={k + 1}",
                    line={"color": shades[k]},
                    showlegend=False,
                    hovertemplate=f"k={k + 1}: δ_k/k²=%{{y:.3g}}<extra></extra>",
                ),
                row=1,
                col=3,
            )
    initial_loss = float(loss_of(torch.full((1, DIM), THETA0, dtype=torch.float64))[0])
    fig.add_hline(y=initial_loss, line={"color": "black", "width": 1}, row=1, col=1)
    fig.add_hline(y=THETA0 * math.sqrt(DIM), line={"color": "black", "width": 1}, row=1, col=2)
    for col in (1, 2, 3):
        fig.update_yaxes(type="log", row=1, col=col)
    fig.update_xaxes(title_text="step", row=1, col=1)
    fig.update_xaxes(title_text="step", row=1, col=3)
    fig.update_layout(
        title="Noisy quadratic: constant vs. bootstrap directional damping",
        width=1500,
        height=520,
    )
    fig.write_html(path, include_plotlyjs=True, full_html=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=100, help="independent runs per method")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--samples", type=int, default=8, help="N samples per step")
    parser.add_argument("--sigma-gamma", type=float, default=10.0)
    parser.add_argument("--sigma-lambda", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise draws")
    parser.add_argument("--json", metavar="PATH", help="write the summary as JSON")
    parser.add_argument("--html", metavar="PATH", help="write a Plotly figure (Fig. 3)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    noise = draw_noise(args.seeds, args.steps, args.samples, args.seed)
    traces = {name: run(name, args, noise) for name in method_names()}
    elapsed = time.perf_counter() - start
    results = {
        name: {
            "final_distance": summary(trace.distances[-1]),
            "final_loss": summary(trace.losses[-1]),
        }
        for name, trace in traces.items()
    }
    start_distance = THETA0 * math.sqrt(DIM)
    unstable = {
        name: int((~(trace.distances[-1] <= start_distance)).sum())
        for name, trace in traces.items()
    }
    print(
        f"noisy quadratic: D={DIM}, θ₀={THETA0:g}·1, N={args.samples}, "
        f"σ_γ={args.sigma_gamma:g}, σ_λ={args.sigma_lambda:g}, {args.seeds} seeds, "
        f"{args.steps} steps, SGD lr={SGD_LR:g} ({elapsed:.1f} s)"
    )
    print_table(results, unstable, args.seeds)
    print(f"unstable = final distance > initial distance {start_distance:.1f} (or non-finite)")
    boot = traces["bootstrap"].dampings
    if boot is not None:
        share = float(boot.isinf().double().mean())
        print(f"bootstrap: δ_k = inf (no step along e_k) in {share:.0%} of (step, k, seed)")
    out = {"methods": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, allow_nan=False)
    if args.html:
        write_html(args.html, traces)
    return out


if __name__ == "__main__":
    main()
