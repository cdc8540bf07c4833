"""``curvscope upload DIR``: send spooled (or offline-mode) messages to a server.

Each file is sent and deleted once the server acknowledges it (``--keep`` keeps it). The
server stores each snapshot key ``(run, step)`` once, so uploading the same directory
again, or a directory a live probe already partly delivered, stores nothing twice.
Torch-free: it reads the files with the wire schema only.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from curvscope.probe.stream.spool import Spool
from curvscope.probe.stream.transport import (
    DeliveryFailed,
    Outcome,
    ServerRefused,
    deliver,
    open_ingest,
)
from curvscope.server.protocol import RUN_NAME_PATTERN

__all__ = ["UploadReport", "add_parser", "upload"]


@dataclass(frozen=True)
class UploadReport:
    """What one upload did."""

    acked: int
    """Files the server acknowledged (stored now or already before)."""
    rejected: int
    """Files the server refused (moved to ``DIR/rejected/``)."""
    left: int
    """Files still in the directory because the connection failed."""
    error: str | None = None


def upload(
    directory: str | os.PathLike[str],
    url: str,
    token: str | None = None,
    *,
    keep: bool = False,
    timeout: float = 10.0,
    run: str | None = None,
    resume: bool = False,
) -> UploadReport:
    """Send every message file in ``directory`` to the server at ``url``.

    Args:
        directory: a spool directory (``Probe(spool_dir=...)``).
        url: the server, ``http://host:port``.
        token: the server's ingest token, if it has one.
        keep: keep the files after the server acknowledged them.
        timeout: connect and acknowledgement timeout, seconds.
        run: send every message under this run name instead of its own (the server
            refused the original name: ``run_taken``).
        resume: continue runs another probe instance started (as ``Probe(resume=True)``).

    Raises:
        ValueError: ``run`` is not a valid run name.
    """
    if run is not None and not re.fullmatch(RUN_NAME_PATTERN, run):
        raise ValueError(f"run name {run!r} is not valid (letters, digits, '.', '_', '-')")
    update: dict[str, object] = {}
    if run is not None:
        update["run"] = run
    if resume:
        update["resume"] = True
    spool = Spool(directory)
    files = spool.pending()
    acked = rejected = 0
    error = None
    if files:
        try:
            ws = open_ingest(url, token, timeout)
        except DeliveryFailed as err:
            return UploadReport(0, 0, len(files), str(err))
        with ws:
            for path in files:
                message = spool.read(path)
                if message is None:
                    rejected += 1
                    continue
                if update:
                    message = message.model_copy(update=update)
                try:
                    outcome = deliver(ws, message, timeout)
                except (DeliveryFailed, ServerRefused) as err:
                    error = str(err)
                    break
                if outcome is Outcome.ACKED:
                    acked += 1
                    if not keep:
                        spool.remove(path)
                else:
                    rejected += 1
                    spool.reject(path)
    left = len(files) - acked - rejected if keep else len(spool)
    return UploadReport(acked, rejected, left, error)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``curvscope upload`` (see :mod:`curvscope.server.cli`)."""
    parser = subparsers.add_parser(
        "upload",
        help="upload spooled snapshots to a server",
        description="Send the snapshot and event files of a spool directory (offline mode, "
        "or what a probe could not deliver) to a curvscope server. Already stored "
        "snapshots are acknowledged again and stored once.",
    )
    parser.add_argument("directory", type=Path, help="the spool directory")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server")
    parser.add_argument(
        "--token",
        default=None,
        help="the server's ingest token (default: $CURVSCOPE_TOKEN; flags show in ps)",
    )
    parser.add_argument("--keep", action="store_true", help="keep files after delivery")
    parser.add_argument(
        "--run",
        default=None,
        help="send everything under this run name (the server said the original name "
        "belongs to another probe; default: each message's own run)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue runs that another probe instance started (as Probe(resume=True))",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Upload, print a one-line summary; exit 0 only if every file was delivered."""
    if not args.directory.is_dir():
        print(f"curvscope upload: {args.directory} is not a directory", file=sys.stderr)
        return 2
    token = args.token if args.token is not None else os.environ.get("CURVSCOPE_TOKEN")
    try:
        report = upload(
            args.directory,
            args.url,
            token,
            keep=args.keep,
            timeout=args.timeout,
            run=args.run,
            resume=args.resume,
        )
    except ValueError as err:
        print(f"curvscope upload: {err}", file=sys.stderr)
        return 2
    print(
        f"curvscope upload: {report.acked} delivered, {report.rejected} refused, "
        f"{report.left} left in {args.directory}"
    )
    if report.error:
        print(f"curvscope upload: {report.error}", file=sys.stderr)
    return 0 if report.rejected == 0 and report.left == 0 and report.error is None else 1
