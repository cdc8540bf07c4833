"""The ``func`` curvature backend against BackPACK, a plain step and the naive torch.func route.

One command (from the repository root)::

    .venv/bin/python -m benchmarks.func_backend              # full table (CPU: ~10-20 min)
    .venv/bin/python -m benchmarks.func_backend --quick      # smoke run (tiny sizes, 1 thread)
    .venv/bin/python -m benchmarks.func_backend --rounds 2   # busy machine: every process twice
    .venv/bin/python -m benchmarks.func_backend --device cuda --repeats 5

Rows (conventions of :mod:`benchmarks.snapshot_vs_vivit`: every configuration in a fresh
subprocess, one warm-up, the median of ``--repeats`` timed runs, the process's peak RSS
from ``getrusage``, ratios within this one run):

1. DeepOBS 3c3d, exact curvature, N = 64: ``compute_snapshot`` with ``backend="func"``
   against ``backend="backpack"`` (targets: time ≤ 2×, peak RSS ≤ 1.5×).
2. A small GPT (:class:`benchmarks.models.TinyGPT`, 1.1 M parameters), N = 16, T = 64,
   V = 512, ``CrossEntropyLoss`` on ``out.transpose(1, 2)``, one parameter group:
   a. MC, M = 1, against a plain training step (forward, backward, SGD step)
      (targets: ≤ 6× the time, ≤ 2× the peak RSS);
   b. MC, M = 8, against the naive route: the explicit ``V`` ``[N·M, D]`` from
      ``torch.func`` (per-sample ``functional_call``, ``vmap`` over samples of ``vjp``
      with the M sampled output cotangents), dense Gram ``V Vᵀ`` and ``torch.linalg.eigh``
      (targets: time ≤ 1×, peak RSS ≤ 0.5×);
   c. exact curvature must be refused up front: its message is printed, not timed.
3. ``torchvision.models.resnet18(num_classes=10)`` in training mode (BatchNorm on batch
   statistics), 32×32 random inputs, N = 32, in the training loop: ``Probe(url=None,
   spool_dir=tmp, every=1)``; the ``with probe(step): loss.backward()`` block against the
   same block without a probe, exact curvature on 8 samples and MC with M = 1 (no targets).

The time ratio is also given in CPU time (``time.process_time``, all threads): a busy
machine stretches wall time, and both when torch's threads wait on each other. The output
names the commit measured and warns when ``probe/`` changed during the run. With
``--device cuda`` the memory ratio is taken on the CUDA allocator's peak
(``torch.cuda.max_memory_allocated``); the RSS columns stay the host's. A configuration
that fails or runs past ``--timeout`` is shown as such, and the others are still measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.snapshot_vs_vivit import RESULT, _fmt_gib, _fmt_s, _ratio, machine_line, run_child

MODULE = "benchmarks.func_backend"


@dataclass(frozen=True)
class Config:
    """One measured configuration (``kind``) at full or ``quick`` (smoke-test) sizes."""

    kind: str
    quick: bool = False


@dataclass(frozen=True)
class Row:
    """One table row: ``ours`` against ``baseline``, with optional targets (ratios)."""

    key: str
    label: str
    ours: str
    baseline: str
    baseline_label: str
    max_time: float | None = None
    max_mem: float | None = None


ROWS = [
    Row("1", "3c3d, exact, N={n_3c3d}", "3c3d-func", "3c3d-backpack", "backpack snapshot", 2, 1.5),
    Row("2a", "GPT, MC M=1, N={n_gpt}, T={t}", "gpt-mc1", "gpt-step", "plain step", 6, 2),
    Row("2b", "GPT, MC M=8, N={n_gpt}, T={t}", "gpt-mc8", "gpt-naive8", "naive torch.func", 1, 0.5),
    Row(
        "3a",
        "ResNet-18 train mode, in-loop, exact on {sub_resnet} of N={n_resnet}",
        "resnet-exact",
        "resnet-plain",
        "backward, no probe",
    ),
    Row(
        "3b",
        "ResNet-18 train mode, in-loop, MC M=1, N={n_resnet}",
        "resnet-mc1",
        "resnet-plain",
        "backward, no probe",
    ),
]
KINDS = [
    "3c3d-backpack",
    "3c3d-func",
    "gpt-step",
    "gpt-mc1",
    "gpt-naive8",
    "gpt-mc8",
    "gpt-exact",
    "resnet-plain",
    "resnet-exact",
    "resnet-mc1",
]


def sizes(quick: bool) -> dict:
    """Batch and model sizes (``quick``: tiny, for the smoke test)."""
    if quick:
        return {
            "n_3c3d": 4,
            "gpt": {"vocab": 512, "context": 16, "d": 32, "layers": 1, "heads": 2},
            "n_gpt": 4,  # exact: 4·16·512 = 32,768 Gram rows, still refused
            "n_resnet": 2,
            "sub_resnet": 1,
            "image": 16,
        }
    return {
        "n_3c3d": 64,
        "gpt": {"vocab": 512, "context": 64, "d": 160, "layers": 3, "heads": 4},
        "n_gpt": 16,
        "n_resnet": 32,
        "sub_resnet": 8,
        "image": 32,
    }


# ---------------------------------------------------------------- child process side

Runner = Callable[[], "tuple[float, float] | None"]
"""One timed call; returns (wall, CPU) seconds of its timed part, or None: the whole call."""


class _Backends:
    """Remember the curvature backend the probe builds last (for its ``report``)."""

    last = None

    @classmethod
    def install(cls) -> None:
        """Wrap the collector's ``make_backend`` (once per process); forget the last one."""
        import curvscope.probe.collector as collector

        cls.last = None
        make = collector.make_backend
        if getattr(make, "recording", False):
            return

        def recording(*args, **kwargs):
            cls.last = make(*args, **kwargs)
            return cls.last

        recording.recording = True  # type: ignore[attr-defined]
        collector.make_backend = recording

    @classmethod
    def summary(cls) -> dict:
        backend = cls.last
        if backend is None:
            return {}
        return {"backend": backend.name, "generic": dict(getattr(backend, "report", {}))}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gpt_batch(s: dict, device):
    import torch

    from benchmarks.models import TinyGPT

    torch.manual_seed(0)
    model = TinyGPT(**s["gpt"]).to(device)
    gen = torch.Generator().manual_seed(0)
    shape = (s["n_gpt"], s["gpt"]["context"])
    x = torch.randint(0, s["gpt"]["vocab"], shape, generator=gen).to(device)
    y = torch.randint(0, s["gpt"]["vocab"], shape, generator=gen).to(device)
    return model, x, y


def _to_loss_input(out):
    return out.transpose(1, 2)  # [N, T, V] -> [N, V, T]


def _snapshot(model, loss_fn, x, y, cfg, outputs=None, extra: dict | None = None) -> Runner:
    from curvscope.probe import compute_snapshot

    def run() -> None:
        snap = compute_snapshot(model, loss_fn, x, y, cfg, outputs=outputs)
        assert snap.groups[0].gammas.shape[0] == x.shape[0]
        if extra is not None:
            extra["trace"] = float(snap.groups[0].eigvals.sum())
            extra["rank"] = int(snap.groups[0].eigvals.shape[0])

    return run


def _plain_step(model, loss_fn, x, y) -> Runner:
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def run() -> None:
        opt.zero_grad()
        loss_fn(_to_loss_input(model(x)), y).backward()
        opt.step()

    return run


def naive_route(model, x, mc_samples: int, generator):
    """Eigenvalues of the MC Gram from the explicit ``V`` ``[N·M, D]`` (torch.func).

    Per sample n and draw m: labels ``ŷ_t ~ softmax(f_t)`` per position (inverse CDF of
    uniforms drawn up front, so that ``vmap`` needs no randomness), the output cotangent
    ``√(1/(N·T)) (softmax(f_t) − e_ŷ_t)`` at every position t, pulled back by the sample's
    ``vjp``: column (n, m) of ``V``, all positions summed. The columns are scaled by
    ``1/√M`` (``E[V Vᵀ]``'s eigenvalues are the GGN's, the probe's and BackPACK's
    ``SqrtGGNMC`` convention; the cost is the same). Returns the Gram's eigenvalues.
    """
    import torch
    from torch.func import functional_call, vjp, vmap

    n, t = x.shape
    names = [name for name, _ in model.named_parameters()]
    params = {name: p.detach() for name, p in model.named_parameters()}
    uniforms = torch.rand(n, mc_samples, t, 1, generator=generator, device=x.device)
    scale = math.sqrt(1.0 / (n * t * mc_samples))

    def columns(xi, ui):
        def f(p):
            return functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)  # [T, V]

        logits, pull = vjp(f, params)
        probs = torch.softmax(logits.detach(), dim=-1)
        classes = probs.shape[-1]
        draws = (probs.cumsum(-1).unsqueeze(0) < ui).sum(-1).clamp(max=classes - 1)  # [M, T]
        onehot = torch.nn.functional.one_hot(draws, classes).to(probs.dtype)
        cotangents = scale * (probs.unsqueeze(0) - onehot)  # [M, T, V]
        return vmap(pull)(cotangents)[0]  # {name: [M, *shape]}

    cols = vmap(columns)(x, uniforms)  # {name: [N, M, *shape]}
    v = torch.cat([cols[name].reshape(n * mc_samples, -1) for name in names], dim=1)
    del cols
    return torch.linalg.eigh(v @ v.T).eigenvalues


def _naive(model, x, mc_samples: int, extra: dict) -> Runner:
    import torch

    generator = torch.Generator(device=x.device).manual_seed(0)

    def run() -> None:
        evals = naive_route(model, x, mc_samples, generator)
        extra["trace"] = float(evals.sum())

    return run


def _resnet(s: dict, device, cfg, spool: str | None) -> tuple[Runner, Callable[[], int]]:
    import torch
    import torchvision
    from torch import nn

    from curvscope.probe import Probe

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).to(device).train()
    gen = torch.Generator().manual_seed(0)
    n, side = s["n_resnet"], s["image"]
    x = torch.rand(n, 3, side, side, generator=gen).to(device)
    y = torch.randint(0, 10, (n,), generator=gen).to(device)
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    probe = None
    if cfg is not None:
        probe = Probe(
            model, loss_fn, run="bench", url=None, spool_dir=spool, every=1, config=cfg, strict=True
        )
    step = 0

    def run() -> tuple[float, float]:
        nonlocal step
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        _sync(device)
        wall, cpu = time.perf_counter(), time.process_time()
        with probe(step) if probe is not None else contextlib.nullcontext():
            loss.backward()
        _sync(device)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        opt.step()
        step += 1
        return wall, cpu

    def snapshots() -> int:
        if probe is None:
            return 0
        return probe.close().spooled  # offline: every snapshot stays in the spool

    return run, snapshots


def child(config: Config, repeats: int, warmup: int, device_name: str) -> dict:
    """Measure one configuration in this (fresh) process."""
    import torch
    from torch import nn

    from benchmarks.models import three_c_three_d
    from curvscope.probe import ViViTConfig
    from curvscope.probe.errors import CurvscopeError

    device = torch.device(device_name)
    s = sizes(config.quick)
    kind = config.kind
    backends = _Backends
    backends.install()
    extra: dict = {}
    snapshots: Callable[[], int] | None = None
    spool = tempfile.TemporaryDirectory(prefix="curvscope-bench-")
    loss_fn = nn.CrossEntropyLoss()
    try:
        if kind.startswith("3c3d"):
            torch.manual_seed(0)
            model = three_c_three_d().to(device)
            gen = torch.Generator().manual_seed(0)
            x = torch.rand(s["n_3c3d"], 3, 32, 32, generator=gen).to(device)
            y = torch.randint(0, 10, (s["n_3c3d"],), generator=gen).to(device)
            cfg = ViViTConfig(seed=0, backend=kind.split("-")[1])  # type: ignore[arg-type]
            run = _snapshot(model, loss_fn, x, y, cfg)
        elif kind.startswith("gpt"):
            model, x, y = _gpt_batch(s, device)
            if kind == "gpt-exact":
                cfg = ViViTConfig(seed=0, backend="func")
                from curvscope.probe import compute_snapshot

                start = time.perf_counter()
                try:
                    compute_snapshot(model, loss_fn, x, y, cfg, outputs=_to_loss_input)
                except CurvscopeError as err:
                    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                    return {
                        "refused": f"{type(err).__name__}: {err}",
                        "after_s": time.perf_counter() - start,
                        "peak_rss": rss,
                    }
                return {"error": "exact curvature was NOT refused: a snapshot was computed"}
            if kind == "gpt-step":
                run = _plain_step(model, loss_fn, x, y)
            elif kind == "gpt-naive8":
                run = _naive(model, x, 8, extra)
            else:
                m = 1 if kind == "gpt-mc1" else 8
                cfg = ViViTConfig(curvature="mc", mc_samples=m, seed=0, backend="func")
                run = _snapshot(model, loss_fn, x, y, cfg, _to_loss_input, extra)
        else:
            cfg = None
            if kind == "resnet-exact":
                cfg = ViViTConfig(subsample=s["sub_resnet"], seed=0)
            elif kind == "resnet-mc1":
                cfg = ViViTConfig(curvature="mc", mc_samples=1, seed=0)
            run, snapshots = _resnet(s, device, cfg, spool.name)
        for _ in range(warmup):
            run()
        times, cpu_times, steps = [], [], []
        for _ in range(repeats):
            _sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            part = run()
            _sync(device)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            steps.append(wall)
            if part is not None:
                wall, cpu = part
            times.append(wall)
            cpu_times.append(cpu)
        if snapshots is not None and kind != "resnet-plain":
            count = snapshots()
            if count != warmup + repeats:
                raise RuntimeError(f"{count} snapshots spooled for {warmup + repeats} steps")
    except Exception as err:  # report, never hide: the parent prints the reason
        first = str(err).strip().splitlines()[:1] or [""]
        return {"error": f"{type(err).__name__}: {first[0]}"}
    finally:
        spool.cleanup()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss
    return {
        "median_s": statistics.median(times),
        "times": times,
        "cpu_s": statistics.median(cpu_times),
        "step_s": statistics.median(steps),
        "peak_rss": rss,
        "peak_mem": peak,
        **extra,
        **backends.summary(),
        "code": code_line(),
    }


# ---------------------------------------------------------------- parent side


def _met(row: Row, ours: dict | None, base: dict | None) -> str:
    if row.max_time is None and row.max_mem is None:
        return "—"
    if not ours or not base or "error" in ours or "error" in base:
        return "n/a"
    time_ok = ours["median_s"] / base["median_s"] <= (row.max_time or math.inf)
    mem_ok = ours["peak_mem"] / base["peak_mem"] <= (row.max_mem or math.inf)
    return f"time {'yes' if time_ok else 'NO'}, memory {'yes' if mem_ok else 'NO'}"


def _target(row: Row) -> str:
    if row.max_time is None:
        return "— (report only)"
    return f"time ≤ {row.max_time:g}×, memory ≤ {row.max_mem:g}×"


def table(results: dict[str, dict], device: str, quick: bool = False) -> str:
    """The Markdown table of :data:`ROWS`, and the notes under it."""
    s = sizes(quick)
    names = {**s, "t": s["gpt"]["context"]}
    mem = "RSS" if device == "cpu" else "CUDA peak"
    head = (
        "| row | configuration | baseline | baseline s | ours s | ours / baseline time "
        f"| ours / baseline CPU time | baseline RSS GiB | ours RSS GiB | ours / baseline {mem} "
        "| target | met |"
    )
    lines = [head, "|" + "---|" * 12]
    for row in ROWS:
        ours, base = results.get(row.ours), results.get(row.baseline)
        lines.append(
            f"| {row.key} | {row.label.format(**names)} | {row.baseline_label} | {_fmt_s(base)} "
            f"| {_fmt_s(ours)} | {_ratio(ours, base, 'median_s')} | {_ratio(ours, base, 'cpu_s')} "
            f"| {_fmt_gib(base)} | {_fmt_gib(ours)} | {_ratio(ours, base, 'peak_mem')} "
            f"| {_target(row)} | {_met(row, ours, base)} |"
        )
    lines.append("")
    refusal = results.get("gpt-exact", {})
    if "refused" in refusal:
        lines.append(
            f"2c. GPT, exact curvature: refused after {refusal['after_s']:.2f} s "
            f"(peak RSS {refusal['peak_rss'] / 2**30:.2f} GiB): {refusal['refused']}"
        )
    else:
        lines.append(f"2c. GPT, exact curvature: FAILED: {refusal.get('error', 'not measured')}")
    lines += _notes(results, device)
    return "\n".join(lines)


def _notes(results: dict[str, dict], device: str) -> list[str]:
    out = []
    plain = results.get("resnet-plain", {})
    for kind in ("resnet-exact", "resnet-mc1"):
        res = results.get(kind, {})
        if "error" not in res and "error" not in plain and res and plain:
            out.append(
                f"3. {kind}: whole training step (forward, backward, SGD) "
                f"{res['step_s']:.3f} s = {res['step_s'] / plain['step_s']:.2f}× a plain step "
                f"({plain['step_s']:.3f} s)"
            )
    mc8, naive = results.get("gpt-mc8", {}), results.get("gpt-naive8", {})
    if "trace" in mc8 and "trace" in naive:
        out.append(
            f"sanity (2b): GGN trace estimates, ours {mc8['trace']:.4g} "
            f"({mc8.get('rank', '?')} eigenvalues), naive {naive['trace']:.4g} (different draws)"
        )
    for kind in ("3c3d-func", "gpt-mc1", "resnet-exact", "resnet-mc1"):
        res = results.get(kind, {})
        if "backend" not in res:
            continue
        generic = res["generic"]
        if not generic:
            out.append(f"{kind}: backend {res['backend']}, no parameter on the generic path")
            continue
        reasons = "; ".join(f"{why} ({k})" for why, k in Counter(generic.values()).most_common())
        names = ", ".join(list(generic)[:3]) + (", ..." if len(generic) > 3 else "")
        out.append(
            f"{kind}: backend {res['backend']}, {len(generic)} parameter tensor(s) on the "
            f"generic path ({names}): {reasons}"
        )
    if device == "cuda":
        peaks = [f"{k}: {r['peak_mem'] / 2**30:.2f}" for k, r in results.items() if "peak_mem" in r]
        out.append("CUDA allocator peak GiB: " + ", ".join(peaks))
    return out


def code_line() -> str:
    """The measured code: the commit, and whether probe/ has uncommitted changes."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        try:
            proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        except OSError:
            return ""
        return proc.stdout.strip() if proc.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "probe")
    return f"code: commit {commit}" + (", probe/ with uncommitted changes" if dirty else "")


def combine(rounds: list[dict]) -> dict:
    """One configuration's results over ``--rounds``: medians of the rounds' medians."""
    good = [r for r in rounds if "error" not in r]
    if not good:
        return rounds[-1]
    if "refused" in good[0] or len(good) == 1:
        return good[-1]
    out = dict(good[-1])
    for key in ("median_s", "cpu_s", "step_s", "peak_rss", "peak_mem"):
        out[key] = statistics.median(r[key] for r in good)
    out["times"] = [t for r in good for t in r["times"]]
    return out


def _shown(res: dict) -> str:
    if "error" in res:
        return res["error"]
    if "refused" in res:
        return f"refused after {res['after_s']:.2f} s"
    runs = ", ".join(f"{t:.3f}" for t in res["times"])
    return (
        f"{res['median_s']:.3f} s (runs: {runs}; CPU {res['cpu_s']:.3f} s), "
        f"peak RSS {res['peak_rss'] / 2**30:.2f} GiB"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat, no warm-up")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every configuration this many times, in alternating order (a fresh "
        "process each time); the table gives the medians (for a busy shared machine)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch.set_num_threads in every child (default: torch's; --quick: 1, so that a "
        "busy machine does not stall the smoke run on thread synchronisation)",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="per configuration, s")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        for fields in json.loads(args.child):
            result = child(Config(**fields), args.repeats, args.warmup, args.device)
            print(RESULT + json.dumps(result), flush=True)
        return 0
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("--device cuda: no CUDA device is available")
            return 2
    repeats, warmup = (1, 0) if args.quick else (max(1, args.repeats), args.warmup)
    if args.quick and not args.threads:
        args.threads = 1
    rounds = 1 if args.quick else max(1, args.rounds)
    print(machine_line())
    print(code_line())
    where = "all in one process" if args.quick else "each configuration in a fresh process"
    threads = f", {args.threads} thread(s) per child" if args.threads else ""
    print(
        f"device {args.device}, seed 0; median of {repeats} run(s) after {warmup} warm-up, "
        f"{where}{threads}{' (quick: tiny sizes)' if args.quick else ''}"
        + (f"; {rounds} rounds, median over rounds" if rounds > 1 else "")
    )
    configs = [Config(kind, args.quick) for kind in KINDS]
    extra = ["--device", args.device]
    if args.threads:
        extra += ["--threads", str(args.threads)]
    measured: dict[str, list[dict]] = {c.kind: [] for c in configs}
    for index in range(rounds):
        ordered = configs if index % 2 == 0 else configs[::-1]
        # --quick: one process for all (fast smoke run; its RSS column is the running peak)
        batches = [ordered] if args.quick else [[c] for c in ordered]
        if rounds > 1:
            print(f" round {index + 1} of {rounds}")
        for batch in batches:
            results = run_child(batch, repeats, warmup, args.timeout, module=MODULE, extra=extra)
            for cfg, res in zip(batch, results, strict=True):
                measured[cfg.kind].append(res)
                print(f"  {cfg.kind:14s} {_shown(res)}", flush=True)
    combined = {kind: combine(rs) for kind, rs in measured.items()}
    print()
    print(table(combined, args.device, args.quick))
    seen = {r["code"] for rs in measured.values() for r in rs if "code" in r} | {code_line()}
    if len(seen) > 1:  # someone committed or edited probe/ while this ran
        print("WARNING: the code changed during the run: " + "; ".join(sorted(seen)))
    errors = [(kind, r["error"]) for kind, r in combined.items() if "error" in r]
    for kind, err in errors:
        print(f"{kind} did not run: {err}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
