"""Time to the top Hessian eigenvalue: curvscope's Lanczos against PyHessian's power iteration.

One command (from the repository root)::

    .venv/bin/python -m benchmarks.hessian_lanczos               # 3c3d, N = 32 (CPU: ~5 min)
    .venv/bin/python -m benchmarks.hessian_lanczos --model mlp   # an MLP on CIFAR-shaped data
    .venv/bin/python -m benchmarks.hessian_lanczos --quick       # smoke run (tiny MLP)

The task: the largest eigenvalue of the Hessian of the batch loss (all parameters,
``CrossEntropyLoss``, random CIFAR-shaped data, seed 0, ``float32`` on the CPU) to a
relative accuracy of 1e-3. Rows:

- ``lanczos``: :func:`curvscope.probe.hessian.extreme_eigenpairs` (``k = 1``,
  ``which="largest"``, ``tol=1e-3``: stops when the Ritz residual is below ``1e-3 · θ``,
  which bounds the error by the same), products from
  :class:`~curvscope.probe.hessian.GroupHessian` (``method="auto"``: double backward, as
  PyHessian's);
- ``lanczos-for``: the same with forward-over-reverse products (``torch.func``);
- ``power``: PyHessian's ``hessian.eigenvalues()`` loop, reimplemented line by line on
  *the same* products as ``lanczos`` (normalised power iteration from a Gaussian vector,
  Rayleigh quotient, stop when it changes by less than ``1e-3`` relatively, at most 100
  iterations; the value before the last is returned, as PyHessian does);
- ``pyhessian``: the PyHessian 0.1 package itself (``pip install pyhessian``, MIT; it runs on
  torch 2), ``hessian(model, loss, data=(x, y), cuda=False).eigenvalues(top_n=1)``: its
  own double-backward products (it calls ``model.eval()``, a no-op for these models, and
  leaves gradients that hold the graph in ``p.grad``, cleared between runs). Skipped if
  not installed.

Columns: products made, median wall time over ``--repeats`` runs (after ``--warmup``; each
run from its own random start, seeds 0, 1, ...), the time relative to ``lanczos``, the
values returned, their largest relative error against a reference ``λ_max`` (``float64``
Lanczos to ``tol=1e-10``), the products after which the estimate first came within 1e-3 of
the reference (an oracle stopping rule, from a recorded run with seed 0), and the process's
peak RSS (``getrusage``; each row in a fresh process, torch and the model included) with
its growth over the RSS before the first run. ``--quick`` runs every row in one process
(its RSS is the running peak), one warm-up and one timed run each, on one thread.

On a busy machine, ``--threads 1`` gives steadier times (two threads that wait on each
other stretch every product several-fold).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.snapshot_vs_vivit import RESULT, machine_line, run_child

MODULE = "benchmarks.hessian_lanczos"
TOL = 1e-3
MAX_ITER = 100  # PyHessian's default
KINDS = ["lanczos", "lanczos-for", "power", "pyhessian"]
LABELS = {
    "lanczos": "curvscope Lanczos (auto: double backward)",
    "lanczos-for": "curvscope Lanczos (forward-over-reverse)",
    "power": "PyHessian loop, same products",
    "pyhessian": "PyHessian 0.1 package",
}


@dataclass(frozen=True)
class Config:
    """One measured row: ``kind`` (or ``"reference"``) on ``model`` with ``n`` samples."""

    kind: str
    model: str
    n: int
    reference: float | None = None  # λ_max, for the errors and the oracle column


# ---------------------------------------------------------------- problems


def build(model_name: str, n: int, dtype=None):
    """``(model, loss_fn, x, y)``; ``model_name`` in ``3c3d``, ``mlp``, ``tiny``."""
    import torch
    from torch import nn

    from benchmarks.models import three_c_three_d

    torch.manual_seed(0)
    if model_name == "3c3d":
        model, shape = three_c_three_d(), (3, 32, 32)
    elif model_name == "mlp":
        model = nn.Sequential(
            nn.Flatten(), nn.Linear(3072, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
            nn.Linear(256, 10),
        )  # fmt: skip
        shape = (3, 32, 32)
    elif model_name == "tiny":
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.Tanh(), nn.Linear(32, 10))
        shape = (3, 8, 8)
    else:
        raise ValueError(f"unknown model {model_name!r}")
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, *shape, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    if dtype is not None:
        model, x = model.to(dtype), x.to(dtype)
    return model, nn.CrossEntropyLoss(), x, y


# ---------------------------------------------------------------- the methods


def power_iteration(
    matvec: Callable, dim: int, *, dtype, seed: int, tol: float = TOL, max_iter: int = MAX_ITER
) -> tuple[float, int, list[float]]:
    """PyHessian's ``eigenvalues(top_n=1)`` loop: ``(value, products, Rayleigh quotients)``."""
    import torch

    torch.manual_seed(seed)
    v = torch.randn(dim, dtype=dtype)
    v = v / (v.norm() + 1e-6)  # PyHessian's normalization() adds 1e-6
    eigenvalue, history = None, []
    for _ in range(max_iter):
        hv = matvec(v)
        tmp = float(hv @ v)
        history.append(tmp)
        v = hv / (hv.norm() + 1e-6)
        if eigenvalue is None:
            eigenvalue = tmp
        elif abs(eigenvalue - tmp) / (abs(eigenvalue) + 1e-6) < tol:
            break
        else:
            eigenvalue = tmp
    assert eigenvalue is not None
    return eigenvalue, len(history), history


def _lanczos_history(matvec: Callable, dim: int, dtype, reference: float, cap: int) -> int | None:
    """Products until the largest Ritz value (seed 0) is within ``TOL`` of ``reference``."""
    import torch

    from curvscope.probe.hessian import BlockLanczos

    start = torch.randn(dim, 1, generator=torch.Generator().manual_seed(0), dtype=dtype)
    proc = BlockLanczos(matvec, dim, start, generator=torch.Generator().manual_seed(1))
    while not proc.exhausted and proc.size < cap:
        proc.step()
        theta, _, _ = proc.ritz()
        if abs(float(theta[-1]) - reference) <= TOL * abs(reference):
            return proc.size
    return None


def _first_within(history: list[float], reference: float) -> int | None:
    for i, value in enumerate(history):
        if abs(value - reference) <= TOL * abs(reference):
            return i + 1
    return None


def _runner(config: Config, model, loss_fn, x, y) -> tuple[Callable[[int], tuple], Callable]:
    """``run(seed) -> (value, products)`` and ``oracle() -> products to 1e-3 or None``."""
    import torch

    from curvscope.probe.hessian import GroupHessian, extreme_eigenpairs

    params = [p for p in model.parameters() if p.requires_grad]
    dim = sum(p.numel() for p in params)
    method = "forward-over-reverse" if config.kind == "lanczos-for" else "auto"

    def operator() -> GroupHessian:
        return GroupHessian(model, loss_fn, x, y, params, method=method)  # type: ignore[arg-type]

    if config.kind in ("lanczos", "lanczos-for"):

        def run(seed: int) -> tuple:
            op = operator()
            gen = torch.Generator().manual_seed(seed)
            eig = extreme_eigenpairs(
                op.matvec, dim, 1, which="largest", tol=TOL, generator=gen, dtype=x.dtype
            )
            return float(eig.eigvals[0]), op.matvecs

        def oracle() -> int | None:
            assert config.reference is not None
            return _lanczos_history(operator().matvec, dim, x.dtype, config.reference, MAX_ITER)

        return run, oracle

    if config.kind == "power":

        def run(seed: int) -> tuple:
            op = operator()
            value, count, _ = power_iteration(op.matvec, dim, dtype=x.dtype, seed=seed)
            return value, count

        def oracle() -> int | None:
            assert config.reference is not None
            op = operator()
            history = power_iteration(op.matvec, dim, dtype=x.dtype, seed=0, tol=0.0)[2]
            return _first_within(history, config.reference)

        return run, oracle

    # the package's module (its __init__ shadows the name with the class)
    ph = importlib.import_module("pyhessian.hessian")

    counter = {"n": 0}
    if not hasattr(ph, "_original_hvp"):
        ph._original_hvp = ph.hessian_vector_product  # type: ignore[attr-defined]

    def counting(*args, **kwargs):
        counter["n"] += 1
        return ph._original_hvp(*args, **kwargs)  # type: ignore[attr-defined]

    ph.hessian_vector_product = counting

    def run(seed: int) -> tuple:
        counter["n"] = 0
        torch.manual_seed(seed)
        try:
            values, _ = ph.hessian(model, loss_fn, data=(x, y), cuda=False).eigenvalues(
                maxIter=MAX_ITER, tol=TOL, top_n=1
            )
        finally:
            for p in model.parameters():  # its backward(create_graph=True) leaves these
                p.grad = None
        return float(values[0]), counter["n"]

    return run, lambda: None


def reference_eigenvalue(config: Config) -> dict:
    """λ_max of the ``float64`` model by Lanczos to ``tol=1e-10``."""
    import torch

    from curvscope.probe.hessian import GroupHessian, extreme_eigenpairs

    model, loss_fn, x, y = build(config.model, config.n, torch.float64)
    params = list(model.parameters())
    op = GroupHessian(model, loss_fn, x, y, params)
    start = time.perf_counter()
    eig = extreme_eigenpairs(
        op.matvec,
        op.dim,
        1,
        which="largest",
        tol=1e-10,
        max_steps=200,
        generator=torch.Generator().manual_seed(123),
        dtype=torch.float64,
    )
    return {
        "value": float(eig.eigvals[0]),
        "converged": eig.converged,
        "matvecs": op.matvecs,
        "seconds": time.perf_counter() - start,
        "dim": op.dim,
        "method": op.method,
    }


# ---------------------------------------------------------------- child process side


def child(config: Config, repeats: int, warmup: int) -> dict:
    """Measure one configuration in this process."""
    if config.kind == "reference":
        try:
            return reference_eigenvalue(config)
        except Exception as err:
            return {"error": f"{type(err).__name__}: {str(err).splitlines()[0]}"}
    try:
        model, loss_fn, x, y = build(config.model, config.n)
        base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        run, oracle = _runner(config, model, loss_fn, x, y)
        for i in range(warmup):
            run(1000 + i)
        times, values, counts = [], [], []
        for seed in range(repeats):
            start = time.perf_counter()
            value, count = run(seed)
            times.append(time.perf_counter() - start)
            values.append(value)
            counts.append(count)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        to_tol = oracle() if config.reference is not None else None
    except Exception as err:  # report, never hide: the parent prints the reason
        first = str(err).strip().splitlines()[:1] or [""]
        return {"error": f"{type(err).__name__}: {first[0]}"}
    return {
        "median_s": statistics.median(times),
        "times": times,
        "values": values,
        "matvecs": counts,
        "oracle": to_tol,
        "peak_rss": peak,
        "base_rss": base_rss,
    }


# ---------------------------------------------------------------- parent side


def _row(kind: str, res: dict, ours: dict | None, reference: float | None) -> str:
    label = LABELS[kind]
    if "error" in res:
        return f"| {kind} | {label} | {res['error']} | | | | | | | |"
    counts = res["matvecs"]
    hvps = str(counts[0]) if len(set(counts)) == 1 else f"{min(counts)}-{max(counts)}"
    ratio = "n/a"
    if ours and "error" not in ours:
        ratio = f"{res['median_s'] / ours['median_s']:.2f}"
    error = "n/a"
    if reference is not None:
        error = f"{max(abs(v - reference) / abs(reference) for v in res['values']):.1e}"
    oracle = "n/a" if res.get("oracle") is None else str(res["oracle"])
    values = f"{min(res['values']):.6g}"
    if max(res["values"]) != min(res["values"]):
        values += f" to {max(res['values']):.6g}"
    gib = 2**30
    return (
        f"| {kind} | {label} | {hvps} | {res['median_s']:.3f} | {ratio} | {values} | {error} "
        f"| {oracle} | {res['peak_rss'] / gib:.2f} "
        f"| {(res['peak_rss'] - res['base_rss']) / gib:.3f} |"
    )


def table(results: dict[str, dict], reference: float | None) -> str:
    head = (
        "| row | method | HVPs | median s | time / lanczos | λ returned | max rel. error "
        "| HVPs to 1e-3 (oracle) | peak RSS GiB | RSS growth GiB |"
    )
    lines = [head, "|" + "---|" * 10]
    ours = results.get("lanczos")
    for kind in KINDS:
        if kind in results:
            lines.append(_row(kind, results[kind], ours, reference))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny MLP, 1 run, one process")
    parser.add_argument("--model", choices=["3c3d", "mlp"], default="3c3d")
    parser.add_argument("--n", type=int, default=32, help="batch size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads in every child")
    parser.add_argument("--timeout", type=float, default=1200.0, help="per row, s")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        reference = None  # a reference measured earlier in this process serves later rows
        for fields in json.loads(args.child):
            config = Config(**fields)
            if config.reference is None and reference is not None:
                config = dataclasses.replace(config, reference=reference)
            result = child(config, args.repeats, args.warmup)
            if config.kind == "reference":
                reference = result.get("value")
            print(RESULT + json.dumps(result))
            sys.stdout.flush()
        return 0
    model, n = ("tiny", 16) if args.quick else (args.model, args.n)
    repeats, warmup = (1, 1) if args.quick else (max(1, args.repeats), args.warmup)
    if args.quick and not args.threads:
        args.threads = 1
    extra = ["--threads", str(args.threads)] if args.threads else []
    print(machine_line())
    where = "all rows in one process" if args.quick else "each row in a fresh process"
    print(
        f"model {model}, N={n}, CrossEntropyLoss, float32, CPU; top-1 eigenvalue to relative "
        f"accuracy {TOL:g}; median of {repeats} run(s) after {warmup} warm-up, {where}"
        + (f", {args.threads} thread(s)" if args.threads else "")
    )
    kinds = list(KINDS)
    try:
        import pyhessian  # noqa: F401
    except ImportError as err:
        print(f"pyhessian cannot be imported ({err}): `pip install pyhessian`; row skipped")
        kinds.remove("pyhessian")
    ref_config = Config("reference", model, n)
    if args.quick:  # one process: the reference row hands its value on to the others
        configs = [ref_config, *(Config(kind, model, n) for kind in kinds)]
        measured = run_child(configs, repeats, warmup, args.timeout, module=MODULE, extra=extra)
        ref, rows = measured[0], measured[1:]
    else:
        (ref,) = run_child([ref_config], 1, 0, args.timeout, module=MODULE, extra=extra)
        rows = []
        for kind in kinds:
            config = Config(kind, model, n, ref.get("value"))
            rows += run_child([config], repeats, warmup, args.timeout, module=MODULE, extra=extra)
    reference = ref.get("value")
    if reference is None:
        print(f"reference: failed ({ref.get('error')})")
    else:
        print(
            f"reference λ_max = {reference:.8g} (float64 Lanczos, tol 1e-10, {ref['matvecs']} "
            f"HVPs by {ref['method']}, {ref['seconds']:.1f} s, P = {ref['dim']:,}, "
            f"converged: {ref['converged']})"
        )
    print(table(dict(zip(kinds, rows, strict=True)), reference))
    return 0


if __name__ == "__main__":
    sys.exit(main())
