"""Start the real ``curvscope serve`` process on a free localhost port (for any test suite).

Usage::

    from tests.helpers.server_process import running_server

    with running_server(tmp_path / "db.sqlite", token="t0ken") as server:
        httpx.get(server.url("/api/runs"), headers=server.auth_headers())
        server.ws_url("/ws/ingest")            # ws://127.0.0.1:PORT/ws/ingest
        server.kill()                          # SIGKILL
        server.restart()                       # same port and database

The process runs ``sys.executable -m curvscope.server.cli serve``; readiness is a poll of
``/api/health`` with a deadline (no sleeps); its output goes to ``server.log_path``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

__all__ = ["TEST_TOKEN", "ServerProcess", "free_port", "running_server", "start_server"]

TEST_TOKEN = "s3cret-token-for-tests"
"""A token for tests that configure one."""


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A running ``curvscope serve``; see the module docstring."""

    db: Path
    port: int
    token: str | None = None
    extra_args: Sequence[str] = ()
    env: dict[str, str] | None = None
    log_path: Path | None = None
    startup_timeout: float = 30.0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log_file: object = field(default=None, repr=False)

    host: str = "127.0.0.1"

    def url(self, path: str = "") -> str:
        """``http://127.0.0.1:PORT`` + path."""
        return f"http://{self.host}:{self.port}{path}"

    def ws_url(self, path: str) -> str:
        """``ws://127.0.0.1:PORT`` + path."""
        return f"ws://{self.host}:{self.port}{path}"

    def auth_headers(self) -> dict[str, str]:
        """The Bearer header for the configured token (empty without one)."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def command(self) -> list[str]:
        """The argv the server is started with."""
        argv = [sys.executable, "-m", "curvscope.server.cli", "serve"]
        argv += ["--host", self.host, "--port", str(self.port), "--db", str(self.db)]
        argv += ["--log-level", "warning", *self.extra_args]
        return argv

    def start(self) -> ServerProcess:
        """Start the process and wait until ``/api/health`` answers (or raise)."""
        env = dict(os.environ if self.env is None else self.env)
        if self.token is not None:
            env["CURVSCOPE_TOKEN"] = self.token  # not on the command line
        if self.log_path is None:
            self.log_path = self.db.with_suffix(".server.log")
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command(), stdout=self._log_file, stderr=subprocess.STDOUT, env=env
        )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Poll ``/api/health`` until it answers 200, the process dies, or the deadline."""
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"curvscope serve exited with {self.proc.returncode}:\n{self.log()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.url("/api/health")).status_code == 200:
                        return
                _pause(self.proc, 0.05)
        self.stop()
        raise TimeoutError(
            f"curvscope serve not ready after {self.startup_timeout} s:\n{self.log()}"
        )

    def log(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def kill(self) -> None:
        """SIGKILL the process and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (then SIGKILL after ``timeout``) and close the log."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log_file is not None:
            self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None

    def restart(self) -> ServerProcess:
        """Stop (if running) and start again on the same port and database."""
        self.stop()
        return self.start()


def _pause(proc: subprocess.Popen[bytes], seconds: float) -> None:
    """Wait a poll interval, returning early if the process exits."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=seconds)


def start_server(
    db: Path,
    *,
    token: str | None = None,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    attempts: int = 3,
) -> ServerProcess:
    """Start a server on a free port (retrying if another process grabbed the port)."""
    last: Exception | None = None
    for _ in range(attempts):
        server = ServerProcess(db=db, port=free_port(), token=token, extra_args=extra_args, env=env)
        try:
            return server.start()
        except RuntimeError as exc:  # e.g. the port was taken between free_port and bind
            last = exc
            if "address already in use" not in str(exc).lower():
                raise
    raise RuntimeError(f"could not start curvscope serve: {last}")


@contextlib.contextmanager
def running_server(
    db: Path,
    *,
    token: str | None = None,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Iterator[ServerProcess]:
    """Context manager around :func:`start_server` that always stops the process."""
    server = start_server(db, token=token, extra_args=extra_args, env=env)
    try:
        yield server
    finally:
        server.stop()
