"""curvscope's ViViT snapshot against vivit-for-pytorch on DeepOBS 3c3d (CPU).

One command (from the repository root)::

    .venv/bin/python -m benchmarks.snapshot_vs_vivit            # full table (~10 min)
    .venv/bin/python -m benchmarks.snapshot_vs_vivit --quick    # smoke run (small N)

Every configuration runs in a fresh subprocess (one warm-up, then ``--repeats`` timed
runs; the median is reported) that reports its whole-process peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``, torch import and model included). Ratios are taken
within this one run: ``ours / plain`` against the plain forward+backward step at the same
N, ``ours / vivit`` against vivit-for-pytorch's ``DirectionalDerivativesComputation``
(spectrum + γ + λ, what a full snapshot computes) on the same inputs.

vivit-for-pytorch 1.0.0 calls ``Tensor.symeig``, which torch 2 removed; its subprocess
routes that one call to ``torch.linalg.eigh`` at run time and says so. If vivit cannot be
imported or fails, the table says why and our rows are still measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

RESULT = "RESULT "


@dataclass(frozen=True)
class Config:
    """One measured configuration: ``kind`` in plain / ours / vivit-eigvalsh / vivit-dd."""

    kind: str
    n: int
    curvature: str = "exact"  # "exact" or "mc" (M = 1)
    subsample: int | None = None

    @property
    def label(self) -> str:
        if self.curvature == "mc":
            return f"MC (M=1), N={self.n}"
        if self.subsample is not None:
            return f"exact, N={self.n}, curvature on {self.subsample}"
        return f"exact, N={self.n}"


def three_c_three_d():
    """DeepOBS CIFAR-10 3c3d (D = 895,210)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 64, 5),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(64, 96, 3),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(96, 128, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Flatten(),
        nn.Linear(1152, 512),
        nn.ReLU(),
        nn.Linear(512, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )


# ---------------------------------------------------------------- child process side


def _step_plain(model, loss_fn, x, y) -> Callable[[], None]:
    def run() -> None:
        model.zero_grad()
        loss_fn(model(x), y).backward()

    return run


def _step_ours(model, loss_fn, x, y, config: Config) -> Callable[[], None]:
    from curvscope.probe import ViViTConfig, compute_snapshot

    cfg = ViViTConfig(curvature=config.curvature, mc_samples=1, subsample=config.subsample, seed=0)

    def run() -> None:
        snap = compute_snapshot(model, loss_fn, x, y, cfg)
        assert snap.groups[0].gammas.shape[0] == x.shape[0]

    return run


def _route_symeig() -> str:
    """Give torch 2 tensors the ``symeig`` method vivit 1.0.0 calls (via ``linalg.eigh``)."""
    import torch

    def symeig(self, eigenvectors: bool = False, upper: bool = True):
        uplo = "U" if upper else "L"
        if eigenvectors:
            return torch.linalg.eigh(self, UPLO=uplo)
        return torch.linalg.eigvalsh(self, UPLO=uplo), self.new_empty(0)

    torch.Tensor.symeig = symeig  # type: ignore[attr-defined]
    return "routed vivit's Tensor.symeig (removed in torch 2) to torch.linalg.eigh"


def _step_vivit(model, loss_fn, x, y, config: Config) -> Callable[[], None]:
    import torch
    from backpack import backpack, extend

    note = _route_symeig()
    print(f"vivit: {note}", file=sys.stderr)
    from vivit.linalg.eigvalsh import EigvalshComputation
    from vivit.optim.directional_derivatives import DirectionalDerivativesComputation

    model, loss_fn = extend(model), extend(loss_fn)
    params = [p for p in model.parameters() if p.requires_grad]
    sub = None if config.subsample is None else list(range(config.subsample))
    mc = 1 if config.curvature == "mc" else 0

    def criterion(evals):  # the non-trivial eigenvalues, same cutoff as ours (R·eps)
        cut = len(evals) * torch.finfo(evals.dtype).eps * evals.max()
        return [k for k in range(len(evals)) if evals[k] > cut]

    def run() -> None:
        group = {"params": params, "criterion": criterion}
        if config.kind == "vivit-eigvalsh":
            comp = EigvalshComputation(subsampling=sub, mc_samples=mc)
            exts = [comp.get_extension()]
        else:
            comp = DirectionalDerivativesComputation(
                subsampling_ggn=sub, mc_samples_ggn=mc, warn_small_eigvals=0.0
            )
            exts = comp.get_extensions()
        hook = comp.get_extension_hook([group])
        model.zero_grad()
        loss = loss_fn(model(x), y)
        with backpack(*exts, extension_hook=hook):
            loss.backward()
        comp.get_result(group)

    return run


def child(config: Config, repeats: int, warmup: int) -> dict:
    """Measure one configuration in this (fresh) process."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = three_c_three_d()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(config.n, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (config.n,), generator=gen)
    loss_fn = nn.CrossEntropyLoss()
    try:
        if config.kind == "plain":
            run = _step_plain(model, loss_fn, x, y)
        elif config.kind == "ours":
            run = _step_ours(model, loss_fn, x, y, config)
        else:
            run = _step_vivit(model, loss_fn, x, y, config)
        for _ in range(warmup):
            run()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    except Exception as err:  # report, never hide: the parent prints the reason
        first = str(err).strip().splitlines()[:1] or [""]
        return {"error": f"{type(err).__name__}: {first[0]}"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"median_s": statistics.median(times), "times": times, "peak_rss": rss}


# ---------------------------------------------------------------- parent side


def configurations(quick: bool) -> list[Config]:
    """The measured configurations (``quick``: N = 4, vivit on the exact rows only)."""
    if quick:
        ns, n_mc, sub = [4], 4, 2
    else:
        ns, n_mc, sub = [32, 64, 128], 64, 16
    rows: list[Config] = []
    for kind in ("plain", "ours", "vivit-eigvalsh", "vivit-dd"):
        rows += [Config(kind, n) for n in ns]
        if kind == "ours" or (kind != "plain" and not quick):
            rows += [Config(kind, n_mc, curvature="mc"), Config(kind, n_mc, subsample=sub)]
    if n_mc not in ns:
        rows.append(Config("plain", n_mc))
    return rows


def run_child(
    configs: list,
    repeats: int,
    warmup: int,
    timeout: float,
    *,
    module: str = "benchmarks.snapshot_vs_vivit",
    extra: Sequence[str] = (),
) -> list[dict]:
    """Measure ``configs`` (dataclasses) one after the other in one fresh subprocess.

    The subprocess is ``python -m module --child JSON --repeats R --warmup W *extra``; it
    prints one ``RESULT`` line per configuration.
    """
    cmd = [sys.executable, "-m", module, "--child"]
    cmd += [json.dumps([asdict(c) for c in configs])]
    cmd += ["--repeats", str(repeats), "--warmup", str(warmup), *extra]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [{"error": f"timed out after {timeout:.0f} s"}] * len(configs)
    notes = sorted({ln for ln in proc.stderr.splitlines() if ln.startswith("vivit: ")})
    for line in notes:
        print(f"  {line}")
    lines = proc.stdout.splitlines()
    results = [json.loads(ln[len(RESULT) :]) for ln in lines if ln.startswith(RESULT)]
    if len(results) == len(configs):
        return results
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    missing = {"error": f"exit code {proc.returncode}: {tail[0]}"}
    return results + [missing] * (len(configs) - len(results))


def machine_line() -> str:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (
        f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}, "
        f"load average {load}"
    )


def _fmt_s(res: dict | None) -> str:
    return "n/a" if not res or "error" in res else f"{res['median_s']:.3f}"


def _fmt_gib(res: dict | None) -> str:
    return "n/a" if not res or "error" in res else f"{res['peak_rss'] / 2**30:.2f}"


def _ratio(a: dict | None, b: dict | None, key: str) -> str:
    if not a or not b or "error" in a or "error" in b:
        return "n/a"
    return f"{a[key] / b[key]:.2f}"


def table(results: dict[Config, dict]) -> str:
    head = (
        "| configuration | plain step s | ours s | ours / plain | ours RSS GiB "
        "| vivit Eigvalsh s | vivit DirDeriv s | vivit DirDeriv RSS GiB "
        "| ours / DirDeriv time | ours / DirDeriv RSS |"
    )
    lines = [head, "|" + "---|" * 10]
    for cfg, res in results.items():
        if cfg.kind != "ours":
            continue
        plain = results.get(Config("plain", cfg.n))
        eig = results.get(Config("vivit-eigvalsh", cfg.n, cfg.curvature, cfg.subsample))
        dd = results.get(Config("vivit-dd", cfg.n, cfg.curvature, cfg.subsample))
        lines.append(
            f"| {cfg.label} | {_fmt_s(plain)} | {_fmt_s(res)} "
            f"| {_ratio(res, plain, 'median_s')} | {_fmt_gib(res)} | {_fmt_s(eig)} "
            f"| {_fmt_s(dd)} | {_fmt_gib(dd)} | {_ratio(res, dd, 'median_s')} "
            f"| {_ratio(res, dd, 'peak_rss')} |"
        )
    plains = [f"N={c.n}: {_fmt_gib(r)} GiB" for c, r in results.items() if c.kind == "plain"]
    lines.append("")
    lines.append("plain step peak RSS: " + ", ".join(plains))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small N, 1 repeat, no warm-up")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900.0, help="per configuration, s")
    parser.add_argument("--no-vivit", action="store_true", help="measure curvscope only")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        for fields in json.loads(args.child):
            result = child(Config(**fields), args.repeats, args.warmup)
            print(RESULT + json.dumps(result), flush=True)
        return 0
    repeats, warmup = (1, 0) if args.quick else (max(1, args.repeats), args.warmup)
    print(machine_line())
    where = "all in one process" if args.quick else "each configuration in a fresh process"
    print(
        f"3c3d on random CIFAR-shaped data, seed 0; median of {repeats} run(s) after "
        f"{warmup} warm-up, {where}"
    )
    configs = configurations(args.quick)
    if args.no_vivit:
        configs = [c for c in configs if not c.kind.startswith("vivit")]
    else:
        try:
            import vivit  # noqa: F401
        except ImportError as err:
            print(
                f"vivit-for-pytorch cannot run ({err}); install the 'bench' extra. "
                "Measuring curvscope only."
            )
            configs = [c for c in configs if not c.kind.startswith("vivit")]
    # --quick: one process for all (fast smoke run; its RSS column is the running peak)
    batches = [configs] if args.quick else [[c] for c in configs]
    results: dict[Config, dict] = {}
    for batch in batches:
        for cfg, res in zip(batch, run_child(batch, repeats, warmup, args.timeout), strict=True):
            results[cfg] = res
            shown = res.get("error") or (
                f"{res['median_s']:.3f} s, peak RSS {res['peak_rss'] / 2**30:.2f} GiB"
            )
            print(f"  {cfg.kind:15s} {cfg.label:38s} {shown}", flush=True)
    print()
    print(table(results))
    errors = [(c, r["error"]) for c, r in results.items() if "error" in r]
    for cfg, err in errors:
        print(f"{cfg.kind} ({cfg.label}) did not run: {err}")
    ours_failed = any(c.kind in ("plain", "ours") for c, _ in errors)
    return 1 if ours_failed else 0


if __name__ == "__main__":
    sys.exit(main())
