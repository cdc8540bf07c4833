"""The gradient-noise spectrum (``gradient_spectrum=True``) and gradient sub-sampling on 3c3d.

One command (from the repository root)::

    .venv/bin/python -m benchmarks.gradient_noise              # N = 64, 3 repeats
    .venv/bin/python -m benchmarks.gradient_noise --quick      # smoke run (N = 8, 1 process)

Rows (DeepOBS 3c3d, random CIFAR-shaped data, exact curvature; each configuration in a fresh
subprocess, one warm-up, the median of ``--repeats`` runs, the process's peak RSS; ratios
within this one run):

1. ``compute_snapshot`` with ``gradient_spectrum=True`` against the same snapshot without
   it: what the noise spectrum adds to the one backward pass;
2. the same against vivit-for-pytorch's route to the same eigenvalues: BackPACK's
   ``BatchGrad`` with vivit's ``GramBatchGrad`` and ``CenteredGramBatchGrad`` hooks (one
   backward pass that computes only the gradient Grams), then ``eigvalsh`` — so our row
   computes the whole GGN snapshot *and* the noise spectrum, vivit's only the noise;
3. ``subsample_grad=16`` against the full-batch snapshot (``Vᵀ g_n`` of 16 samples), both
   with the curvature of 16 samples (``subsample=16``: then ``Vᵀ g_n``, ``N·R·P``, costs as
   much as the Gram, ``R²·P``);
4. the same on a small GPT (:class:`benchmarks.models.TinyGPT`, N = 16, T = 64, the ``func``
   backend, MC curvature with M = 1): ``subsample_grad=4`` against all 16 samples.

The largest relative difference between our covariance eigenvalues and vivit's (float32)
is printed below the table.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from dataclasses import dataclass

from benchmarks.snapshot_vs_vivit import (
    RESULT,
    _fmt_gib,
    _fmt_s,
    _ratio,
    machine_line,
    run_child,
    three_c_three_d,
)

MODULE = "benchmarks.gradient_noise"


@dataclass(frozen=True)
class Config:
    """One measured configuration: ``kind`` on a batch of ``n``."""

    kind: str
    n: int


def _batch(n: int):
    import torch

    torch.manual_seed(0)
    model = three_c_three_d()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return model, x, y


def _gpt(kind: str, quick: bool):
    """TinyGPT on random tokens (``func`` backend, MC curvature): one snapshot per call."""
    import torch
    from torch import nn

    from benchmarks.models import TinyGPT
    from curvscope.probe import ViViTConfig, compute_snapshot

    torch.manual_seed(0)
    n, t = (4, 16) if quick else (16, 64)
    model = TinyGPT(context=t)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 512, (n, t), generator=gen)
    sub = 1 if quick else 4
    config = ViViTConfig(
        backend="func", curvature="mc", seed=0, subsample_grad=sub if kind == "gpt-sub" else None
    )

    def run() -> torch.Tensor:
        compute_snapshot(
            model, nn.CrossEntropyLoss(), x, x, config, outputs=lambda out: out.transpose(1, 2)
        )
        return torch.zeros(0)

    return run


def _run(kind: str, model, x, y):
    """A callable doing one measured computation; it returns the covariance eigenvalues."""
    import torch
    from torch import nn

    from curvscope.probe import ViViTConfig, compute_snapshot

    loss_fn = nn.CrossEntropyLoss()
    n = x.shape[0]
    if kind.startswith("gpt"):
        return _gpt(kind, quick=n < 16)
    if kind == "vivit-gram":
        from backpack import backpack, extend
        from backpack.extensions import BatchGrad
        from vivit.extensions.firstorder.batch_grad.gram_batch_grad import (
            CenteredGramBatchGrad,
            GramBatchGrad,
        )

        extend(model)
        extend(loss_fn)

        def vivit() -> torch.Tensor:
            uncentred, centred = GramBatchGrad(), CenteredGramBatchGrad()

            def hooks(module: nn.Module) -> None:
                uncentred(module)
                centred(module)

            model.zero_grad()
            with backpack(BatchGrad(), extension_hook=hooks):
                loss_fn(model(x), y).backward()
            moment = torch.linalg.eigvalsh(uncentred.get_result() * n)
            cov = torch.linalg.eigvalsh(centred.get_result() * (n * n / (n - 1)))
            del moment
            return cov.flip(0)

        return vivit
    configs = {
        "ours": ViViTConfig(backend="backpack"),
        "ours-noise": ViViTConfig(backend="backpack", gradient_spectrum=True),
        "ours-c16": ViViTConfig(backend="backpack", subsample=16),
        "ours-c16-g16": ViViTConfig(backend="backpack", subsample=16, subsample_grad=16),
    }
    config = configs[kind]

    def ours() -> torch.Tensor:
        snap = compute_snapshot(model, loss_fn, x, y, config)
        eig = snap.groups[0].gradient_eigvals
        return torch.zeros(0) if eig is None else eig

    return ours


def child(config: Config, repeats: int, warmup: int) -> dict:
    """Measure one configuration in this (fresh) process."""
    model, x, y = _batch(config.n)
    try:
        run = _run(config.kind, model, x, y)
        for _ in range(warmup):
            run()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            eigvals = run()
            times.append(time.perf_counter() - start)
    except Exception as err:  # report, never hide
        first = str(err).strip().splitlines()[:1] or [""]
        return {"error": f"{type(err).__name__}: {first[0]}"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "median_s": statistics.median(times),
        "peak_rss": rss,
        "eigvals": [float(v) for v in eigvals],
    }


ROWS = [
    ("1", "noise spectrum on top of the snapshot", "ours-noise", "ours"),
    ("2", "snapshot + noise vs vivit's gradient Grams only", "ours-noise", "vivit-gram"),
    ("3", "subsample=16: subsample_grad=16", "ours-c16-g16", "ours-c16"),
    ("4", "TinyGPT, func backend: subsample_grad=4 of 16", "gpt-sub", "gpt"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 8, 1 repeat, no warm-up")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        for fields in json.loads(args.child):
            print(RESULT + json.dumps(child(Config(**fields), args.repeats, args.warmup)))
        return 0
    n = 8 if args.quick else args.n
    repeats, warmup = (1, 0) if args.quick else (max(1, args.repeats), args.warmup)
    print(machine_line())
    print(f"3c3d, exact curvature, N={n}; median of {repeats} run(s) after {warmup} warm-up")
    kinds = ["ours", "ours-noise", "ours-c16", "ours-c16-g16", "vivit-gram", "gpt", "gpt-sub"]
    # --quick: one process for all (a smoke run; its RSS column is the running peak)
    batches = [kinds] if args.quick else [[kind] for kind in kinds]
    results = {}
    for batch in batches:
        configs = [Config(kind, n) for kind in batch]
        for kind, res in zip(
            batch, run_child(configs, repeats, warmup, args.timeout, module=MODULE), strict=True
        ):
            results[kind] = res
    print()
    print(
        "| row | what | ours | baseline | time ours | time baseline | ratio | peak RSS ours "
        "| peak RSS baseline | RSS ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key, label, ours, base in ROWS:
        a, b = results[ours], results[base]
        print(
            f"| {key} | {label} | {ours} | {base} | {_fmt_s(a)} | {_fmt_s(b)} | "
            f"{_ratio(a, b, 'median_s')} | {_fmt_gib(a)} | {_fmt_gib(b)} | "
            f"{_ratio(a, b, 'peak_rss')} |"
        )
    ours_eig, vivit_eig = results["ours-noise"].get("eigvals"), results["vivit-gram"].get("eigvals")
    if ours_eig and vivit_eig:
        k = len(ours_eig)
        top = max(abs(v) for v in vivit_eig)
        err = max(abs(a - b) for a, b in zip(ours_eig, vivit_eig[:k], strict=True)) / top
        print(f"\ncovariance eigenvalues: {k} of ours, max |ours - vivit| / λ_max = {err:.1e}")
    for kind, res in results.items():
        if "error" in res:
            print(f"{kind}: {res['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
