"""The ``curvscope`` command: ``serve | report | upload | demo``.

Subcommands live in separate modules, listed in :data:`COMMANDS`, and a module is imported
only when its subcommand runs (``curvscope serve`` never imports torch). A subcommand
module exposes::

    def add_parser(subparsers) -> argparse.ArgumentParser:
        parser = subparsers.add_parser("name", help=...)
        parser.add_argument(...)
        parser.set_defaults(func=run)   # run(args: argparse.Namespace) -> int
        return parser

A module that is missing, or whose dependencies are, gives a one-line message and exit
code 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from pydantic import ValidationError

__all__ = ["COMMANDS", "Command", "add_parser", "main"]


@dataclass(frozen=True)
class Command:
    """A subcommand: where it lives and its one-line help."""

    module: str
    help: str
    extra: str | None = None
    """The pip extra that brings its dependencies (for the error message)."""


COMMANDS: dict[str, Command] = {
    "serve": Command("curvscope.server.cli", "run the curvscope server", "server"),
    "report": Command("curvscope.server.report", "write a standalone HTML report", "server"),
    "prune": Command("curvscope.server.prune", "forget old snapshots or runs", "server"),
    "upload": Command(
        "curvscope.probe.stream.upload", "upload spooled snapshots to a server", "probe"
    ),
    "demo": Command("curvscope.probe.demo", "train a small model and watch it live", "demo"),
}
"""Subcommand name -> module exposing ``add_parser(subparsers)``."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``curvscope serve``."""
    parser = subparsers.add_parser(
        "serve",
        help=COMMANDS["serve"].help,
        description="Run the curvscope server. Flags override CURVSCOPE_* environment "
        "variables (CURVSCOPE_HOST, CURVSCOPE_PORT, CURVSCOPE_DB, CURVSCOPE_TOKEN, ...).",
    )
    parser.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (default 8000)")
    parser.add_argument(
        "--db",
        help="SQLite file (default ./curvscope.sqlite) or postgresql://user@host:port/db URL "
        "(also CURVSCOPE_DB)",
    )
    parser.add_argument(
        "--token",
        help="token required to ingest and delete (prefer CURVSCOPE_TOKEN: flags show in ps; "
        "default: none, which needs a loopback --host or --insecure)",
    )
    parser.add_argument(
        "--protect-reads",
        action="store_true",
        default=None,
        help="require the token for reads (REST and browser websockets) too (default: off)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow listening on a non-loopback address without a token (default: off)",
    )
    parser.add_argument(
        "--max-message-bytes", type=int, help="largest ingest frame in bytes (default 4 MiB)"
    )
    parser.add_argument(
        "--retention",
        metavar="DURATION",
        help="remove runs not updated for this long (90s, 30m, 12h, 30d, 2w; checked "
        "hourly; `curvscope prune` thins instead; default: keep everything)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="server processes on the port (default 1; more need a postgresql:// --db)",
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        dest="allowed_hosts",
        metavar="NAME",
        help="a host name clients use to reach the server (repeatable; loopback names and "
        "--host are always allowed; requests naming another host are refused: DNS "
        "rebinding guard; default: none besides those)",
    )
    parser.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    parser.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    """Validate the settings, then run uvicorn until interrupted."""
    from curvscope.server.settings import Settings

    flags = {
        "host": args.host,
        "port": args.port,
        "db": args.db,
        "token": args.token,
        "protect_reads": args.protect_reads,
        "insecure": args.insecure,
        "max_message_bytes": args.max_message_bytes,
        "allowed_hosts": args.allowed_hosts,
        "workers": args.workers,
        "retention_s": _duration(args.retention),
    }
    try:
        settings = Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        for err in exc.errors(include_url=False, include_input=False):
            where = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            print(f"curvscope serve: {where + ': ' if where else ''}{msg}", file=sys.stderr)
        return 2

    busy = _port_in_use(settings.host, settings.port)
    if busy:
        print(f"curvscope serve: {busy}", file=sys.stderr)
        return 1

    import uvicorn

    from curvscope.server.app import create_app

    if settings.workers > 1:
        # Each worker process builds its own app from the environment (the settings were
        # validated here; the token travels in the environment, never on a command line).
        os.environ.update(settings.to_env())
        app: Any = "curvscope.server.app:create_app"
    else:
        app = create_app(settings)
    uvicorn.run(
        app,
        factory=settings.workers > 1,
        workers=settings.workers,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        # The app answers oversized frames itself (error message + CLOSE_MESSAGE_TOO_BIG);
        # the transport limit only stops frames far beyond that.
        ws_max_size=2 * settings.max_message_bytes + 65536,
        timeout_graceful_shutdown=5,
    )
    return 0


def _port_in_use(host: str, port: int) -> str | None:
    """A message if ``host:port`` cannot be bound because something already listens there.

    Binds a socket the way uvicorn does (``SO_REUSEADDR``, so a port in TIME_WAIT after a
    previous server still counts as free) and closes it at once; other bind errors are left
    to uvicorn to report.
    """
    import errno
    import socket

    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return None
    for family, kind, proto, _, address in infos[:1]:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return (
                        f"port {port} on {host} is already in use (another curvscope "
                        "serve?); pick another with --port"
                    )
    return None


def _duration(text: str | None) -> float | None:
    from curvscope.server.prune import parse_duration

    return None if text is None else parse_duration(text)


def _load(name: str) -> ModuleType | str:
    """The subcommand's module, or an error message."""
    command = COMMANDS[name]
    try:
        return importlib.import_module(command.module)
    except ModuleNotFoundError as exc:
        missing = exc.name or "?"
        if command.module == missing or command.module.startswith(missing + "."):
            return (
                f"curvscope {name}: not available in this installation "
                f"({command.module} is missing)"
            )
        hint = f"; install curvscope[{command.extra}]" if command.extra else ""
        return f"curvscope {name}: needs the Python package {missing!r}{hint}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``curvscope`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="curvscope", description="Live curvature monitor.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, command in COMMANDS.items():
        if name != chosen:
            subparsers.add_parser(name, help=command.help, add_help=False)
            continue
        module = _load(name)
        if isinstance(module, str):
            print(module, file=sys.stderr)
            return 2
        module.add_parser(subparsers)
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
