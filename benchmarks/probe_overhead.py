"""Overhead of the training-loop Probe per step, vs. the same loop without a probe.

One training step = zero_grad, forward, loss, backward, optimizer step (SGD), on CPU
(or the GPU when one is there). Variants, timed interleaved in the same run:

- ``no probe``: the plain loop (the baseline);
- ``unscheduled``: a Probe that measures no step in the timed window (its hooks only
  check a flag; no BackPACK work) -- the target is a ratio <= 1.02;
- ``in-loop scheduled``: a Probe measuring every step from the user's own backward;
- ``held-out scheduled``: a Probe measuring a fixed monitor batch of the same size.

Snapshots go to a temporary spool (offline mode), so the numbers are the training
thread's work only; sending is the background thread's. Each variant block is timed next
to a no-probe block; the ratio column is the median of those per-repeat ratios.

Usage: ``python benchmarks/probe_overhead.py [--quick] [--repeats 15] [--steps 50]
[--scheduled-steps 3] [--batch 128] [--width 256] [--depth 2]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from torch import nn

from curvscope.probe import Probe, ViViTConfig

NEVER_IN_WINDOW = 10**12
"""Schedule period for the unscheduled variant: step 0 only (excluded from timing)."""


def _model(width: int, depth: int, classes: int, features: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(features, width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def _stepper(
    model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor, probe: Probe | None
) -> Callable[[int], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step(i: int) -> None:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        if probe is None:
            loss.backward()
        else:
            with probe(i):
                loss.backward()
        opt.step()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per repeat")
    parser.add_argument(
        "--scheduled-steps", type=int, default=3, help="timed steps per repeat, scheduled variants"
    )
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=2)
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.steps, args.batch, args.width, args.depth = 3, 5, 16, 32, 1
        args.scheduled_steps = 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    features, classes = 64, 10
    x = torch.randn(args.batch, features, device=device)
    y = torch.randint(0, classes, (args.batch,), device=device)
    config = ViViTConfig(curvature="mc", mc_samples=1, seed=0)  # Gram of N x N, as in practice

    spool = tempfile.TemporaryDirectory(prefix="curvscope-bench-")
    variants: dict[str, tuple[Callable[[int], None], Probe | None]] = {}
    for name, every, monitor in [
        ("no probe", None, None),
        ("unscheduled", NEVER_IN_WINDOW, None),
        ("in-loop scheduled", 1, None),
        ("held-out scheduled", 1, (x, y)),
    ]:
        model = _model(args.width, args.depth, classes, features).to(device)
        loss_fn = nn.CrossEntropyLoss()
        probe = None
        if every is not None:
            probe = Probe(
                model,
                loss_fn,
                run=name.replace(" ", "-"),
                url=None,
                every=every,
                config=config,
                monitor_batch=monitor,
                spool_dir=spool.name,
            )
        step = _stepper(model, loss_fn, x, y, probe)
        for i in range(3):  # warm-up; step 0 is the only scheduled step of "unscheduled"
            step(i)
        variants[name] = (step, probe)

    # Each variant's block is timed right after a no-probe block; their ratio is one
    # sample, so load from other processes (drift) mostly cancels. Medians over repeats.
    times: dict[str, list[float]] = {name: [] for name in variants}
    ratios: dict[str, list[float]] = {name: [] for name in variants}
    counter = 3
    baseline = variants["no probe"][0]

    def block(step: Callable[[int], None], count: int) -> float:
        nonlocal counter
        _sync(device)
        start = time.perf_counter()
        for _ in range(count):
            step(counter)
            counter += 1
        _sync(device)
        return (time.perf_counter() - start) / count

    for _ in range(args.repeats):
        for name, (step, _) in variants.items():
            count = args.scheduled_steps if "scheduled" in name.split() else args.steps
            base_time = block(baseline, args.steps)
            own = base_time if name == "no probe" else block(step, count)
            times[name].append(own)
            ratios[name].append(own / base_time)
        counter += 1  # a gap in the steps: the in-loop prediction must cope
    # The probe's own work on an unscheduled step, without the training step around it
    # (immune to the noise of a shared machine): the context manager and the three hooks.
    probe = variants["unscheduled"][1]
    assert probe is not None
    reps = 20_000
    start = time.perf_counter()
    for _ in range(reps):
        probe._before_forward(probe.model, (x,), {})
        probe._after_forward(probe.model, (x,), x)
        probe._after_loss(probe.loss_fn, (x, y), {}, x)
        with probe(counter):
            pass
        counter += 1
    bookkeeping = (time.perf_counter() - start) / reps
    for _, probe in variants.values():
        if probe is not None:
            probe.close()
    spool.cleanup()

    print(
        f"device {device}, MLP width {args.width} depth {args.depth}, batch {args.batch}, "
        f"{args.repeats} repeats x {args.steps} steps ({args.scheduled_steps} when scheduled); "
        "medians; ratio = median of (variant block / adjacent no-probe block)"
    )
    print(f"{'variant':<20} {'ms/step':>10} {'ratio':>8}")
    for name in variants:
        median = statistics.median(times[name])
        print(f"{name:<20} {1e3 * median:>10.3f} {statistics.median(ratios[name]):>8.3f}")
    base = statistics.median(times["no probe"])
    print(
        f"unscheduled-step bookkeeping alone: {1e6 * bookkeeping:.1f} us per step "
        f"= {bookkeeping / base:.2%} of a no-probe step"
    )
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
