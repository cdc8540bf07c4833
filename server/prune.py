"""``curvscope prune``: retention for a server's database (SQLite or PostgreSQL).

Two rules (:meth:`curvscope.server.stores.Store.prune`), on what the server received more
than ``--older-than`` ago:

- ``--drop-runs``: remove runs whose last update is that old, whole (snapshots and
  events); idempotent, so the server can apply it on a timer (``serve --retention``);
- ``--keep-every K``: thin old snapshots of every run to each K-th step (the first and last
  step of a run always stay, events all stay). Thinning again thins again: run it once per
  retention period, by hand or from cron.

The views keep working on pruned runs (the slider and the plots over steps follow the
stored steps).
"""

from __future__ import annotations

import argparse
import re
import sys
import time

__all__ = ["add_parser", "parse_duration", "run"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``"90s"``, ``"30m"``, ``"12h"``, ``"30d"``, ``"2w"`` (or plain seconds).

    >>> parse_duration("30d")
    2592000.0
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (examples: 90s, 30m, 12h, 30d, 2w)")
    value, unit = match.groups()
    seconds = float(value) * _UNITS[unit or "s"]
    if seconds <= 0:
        raise ValueError(f"the duration must be positive, not {text!r}")
    return seconds


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``curvscope prune``."""
    parser = subparsers.add_parser(
        "prune",
        help="forget old snapshots or runs (retention)",
        description="Retention on a curvscope database: drop runs not updated for a while, "
        "or thin old snapshots to every K-th step. Safe while a server runs on it.",
    )
    parser.add_argument(
        "--db",
        default="curvscope.sqlite",
        help="SQLite file or postgresql:// URL (default ./curvscope.sqlite)",
    )
    parser.add_argument(
        "--older-than",
        required=True,
        type=parse_duration,
        metavar="DURATION",
        help="only what arrived longer ago than this (90s, 30m, 12h, 30d, 2w)",
    )
    rule = parser.add_mutually_exclusive_group(required=True)
    rule.add_argument("--drop-runs", action="store_true", help="remove old runs whole")
    rule.add_argument(
        "--keep-every", type=int, metavar="K", help="keep every K-th old snapshot of each run"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Prune and print what was deleted."""
    from curvscope.server.stores import StoreError, open_store

    if args.keep_every is not None and args.keep_every < 1:
        print("curvscope prune: --keep-every must be at least 1", file=sys.stderr)
        return 2
    try:
        store = open_store(args.db)
    except StoreError as err:
        print(f"curvscope prune: {err}", file=sys.stderr)
        return 2
    try:
        before = {r.run for r in store.list_runs()}
        deleted = store.prune(
            older_than=time.time() - args.older_than,
            keep_every=None if args.drop_runs else args.keep_every,
        )
        gone = before - {r.run for r in store.list_runs()}
    finally:
        store.close()
    print(f"curvscope prune: {deleted} snapshots deleted, {len(gone)} runs removed")
    return 0
