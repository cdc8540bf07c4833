"""``curvscope demo``: train a small CNN on scikit-learn's 8x8 digits and watch it live.

The digits ship inside scikit-learn (nothing is downloaded). The probe runs in-loop by
default (``--held-out`` switches to a fixed monitor batch) and streams to a server that
the demo starts on 127.0.0.1 (a ``curvscope serve`` subprocess: the probe side never
imports the server's web stack), or to ``--url URL [--token TOKEN]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DemoOptions", "add_parser", "digits_cnn", "load_digits", "run_demo"]


@dataclass(frozen=True)
class DemoOptions:
    """Everything ``curvscope demo`` can be told."""

    steps: int = 400
    every: int = 10
    batch_size: int = 64
    subsample: int | None = 16
    curvature: str = "exact"
    held_out: bool = False
    lr: float = 0.1
    seed: int = 0
    run: str | None = None
    url: str | None = None
    token: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    db: str = "curvscope.sqlite"
    serve: bool = True
    progress: bool = True


def digits_cnn():  # -> nn.Module (torch is imported lazily, see module docstring)
    """A small conv/pool/linear network for ``[N, 1, 8, 8]`` digits (BackPACK-supported)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 2 * 2, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def load_digits(seed: int = 0):
    """scikit-learn's digits as ``(x_train [N,1,8,8], y_train, x_test, y_test)`` tensors."""
    import torch
    from sklearn.datasets import load_digits as sk_digits

    data = sk_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    split = int(0.8 * len(x))
    return x[:split], y[:split], x[split:], y[split:]


def _healthy(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def _local_server(opts: DemoOptions, keep_running: bool) -> Iterator[str]:
    """Start ``curvscope serve`` on ``opts.host:opts.port`` (unless one already answers)."""
    url = f"http://{opts.host}:{opts.port}"
    if _healthy(url):
        print(f"Using the curvscope server already running at {url}", flush=True)
        yield url
        return
    cmd = [
        sys.executable,
        "-m",
        "curvscope.server.cli",
        "serve",
        "--host",
        opts.host,
        "--port",
        str(opts.port),
        "--db",
        opts.db,
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd)
    try:
        deadline = time.monotonic() + 60.0
        while not _healthy(url):
            if proc.poll() is not None:
                raise SystemExit(f"curvscope serve exited with code {proc.returncode}")
            if time.monotonic() > deadline:
                raise SystemExit("curvscope serve did not become healthy within 60 s")
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.1)
        yield url
        if keep_running:
            print(
                f"Training done. The dashboard stays at {url} -- press Ctrl-C to stop.", flush=True
            )
            with suppress(KeyboardInterrupt):
                proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _progress(step: int, total: int, loss: float, acc: float, width: int = 30) -> None:
    """A progress bar on a terminal; a line every 10 % of the steps otherwise (logs, CI)."""
    figures = f"step {step + 1}/{total}  loss {loss:.3f}  acc {acc:.1%}"
    if sys.stderr.isatty():
        done = int(width * (step + 1) / total)
        end = "\n" if step + 1 == total else ""
        print(f"\r[{'#' * done}{'.' * (width - done)}] {figures}", end=end, file=sys.stderr)
    elif (step + 1) % max(1, total // 10) == 0 or step + 1 == total:
        print(figures, file=sys.stderr)


def train(opts: DemoOptions, url: str | None) -> dict[str, float]:
    """Train the digits CNN with the probe attached; returns final loss/accuracy figures."""
    import torch
    from torch import nn

    from curvscope.probe import Probe, ViViTConfig

    torch.manual_seed(opts.seed)
    x_train, y_train, x_test, y_test = load_digits(opts.seed)
    model = digits_cnn()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=opts.lr, momentum=0.9)
    run = opts.run or f"digits-{time.strftime('%Y%m%d-%H%M%S')}"
    config = ViViTConfig(
        curvature=opts.curvature,  # type: ignore[arg-type]
        subsample=opts.subsample,
        gradient_spectrum=True,
        step_trust=True,
    )
    monitor = (x_test[: opts.batch_size], y_test[: opts.batch_size]) if opts.held_out else None
    probe = Probe(
        model,
        loss_fn,
        run=run,
        url=url,
        token=opts.token,
        every=opts.every,
        config=config,
        monitor_batch=monitor,
        optimizer=optimizer,
    )
    print(
        f"Run {run!r}: {opts.steps} steps, a snapshot every {opts.every} steps "
        f"({'held-out batch' if opts.held_out else 'in-loop'}, {opts.curvature} curvature"
        f"{f' on {opts.subsample} samples' if opts.subsample else ''})",
        flush=True,
    )
    gen = torch.Generator().manual_seed(opts.seed)
    loss_value, acc = float("nan"), 0.0
    for step in range(opts.steps):
        idx = torch.randint(0, len(x_train), (opts.batch_size,), generator=gen)
        x, y = x_train[idx], y_train[idx]
        optimizer.zero_grad()
        out = model(x)
        loss = loss_fn(out, y)
        with probe(step):
            loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        acc = float((out.argmax(1) == y).float().mean())
        if opts.progress:
            _progress(step, opts.steps, loss_value, acc)
    with torch.no_grad():
        test_acc = float((model(x_test).argmax(1) == y_test).float().mean())
    report = probe.close(timeout=30.0)
    print(f"Test accuracy {test_acc:.1%}. Probe: {report}", flush=True)
    return {"loss": loss_value, "train_acc": acc, "test_acc": test_acc}


def run_demo(opts: DemoOptions) -> int:
    """Print the dashboard URL, start a server if needed, train, keep serving if asked."""
    if opts.url is not None:
        url = opts.url.rstrip("/")
        print(f"Dashboard: {url}/", flush=True)
        train(opts, url)
        return 0
    url = f"http://{opts.host}:{opts.port}"
    print(f"Dashboard: {url}/  (open it in your browser)", flush=True)
    with _local_server(opts, keep_running=opts.serve) as url:
        train(opts, url)
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``curvscope demo``."""
    d = DemoOptions()
    p = subparsers.add_parser(
        "demo",
        help="train a small CNN on the 8x8 digits and watch its curvature live",
        description=__doc__,
    )
    p.add_argument("--steps", type=int, default=d.steps, help=f"training steps ({d.steps})")
    p.add_argument("--every", type=int, default=d.every, help="snapshot every k steps (10)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument(
        "--subsample",
        type=int,
        default=d.subsample,
        help="curvature from the first k samples of the batch (16; 0 = all)",
    )
    p.add_argument("--curvature", choices=["exact", "mc"], default=d.curvature)
    p.add_argument("--held-out", action="store_true", help="snapshots on a fixed test batch")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--run", help="run name (default digits-<timestamp>)")
    p.add_argument("--url", help="stream to this existing server instead of starting one")
    p.add_argument("--token", help="the server's token (default: $CURVSCOPE_TOKEN)")
    p.add_argument("--host", default=d.host, help="where the demo's own server listens")
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--db", default=d.db, help="the demo server's SQLite file")
    p.add_argument(
        "--no-serve",
        action="store_true",
        help="stop when training ends instead of serving until Ctrl-C",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("CURVSCOPE_TOKEN") or None
    opts = DemoOptions(
        steps=args.steps,
        every=args.every,
        batch_size=args.batch_size,
        subsample=args.subsample or None,
        curvature=args.curvature,
        held_out=args.held_out,
        lr=args.lr,
        seed=args.seed,
        run=args.run,
        url=args.url,
        token=token,
        host=args.host,
        port=args.port,
        db=str(Path(args.db)),
        serve=not args.no_serve,
        progress=not args.no_progress,
    )
    return run_demo(opts)
