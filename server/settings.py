"""Server settings: CLI flags and ``CURVSCOPE_*`` environment variables, validated at start-up.

Precedence: explicit keyword arguments (the CLI passes its flags this way) over environment
variables over the defaults below. Unsafe combinations are refused here, before anything
listens on a socket.
"""

from __future__ import annotations

import ipaddress
import json
import os
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from curvscope.server.stores.base import redact_url

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "Settings", "is_loopback_host"]

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""Largest ingest frame accepted by default (4 MiB)."""


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` only listens on the local machine (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Everything the server needs to start; see ``docs/api.md`` for the meaning of each."""

    model_config = SettingsConfigDict(
        env_prefix="CURVSCOPE_", extra="forbid", env_ignore_empty=True
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    db: str = "curvscope.sqlite"
    """A SQLite file path (a :class:`~pathlib.Path` is accepted too) or a
    ``postgresql://`` URL (:func:`~curvscope.server.stores.open_store`). Its password, if
    any, never shows in ``repr``."""
    token: SecretStr | None = None
    protect_reads: bool = False
    insecure: bool = False
    max_message_bytes: int = Field(DEFAULT_MAX_MESSAGE_BYTES, ge=1024, le=256 * 1024 * 1024)
    live_window_s: float = Field(60.0, gt=0)
    """A run is ``live`` while its last snapshot arrived less than this many seconds ago."""
    client_queue_size: int = Field(256, ge=1)
    """Messages buffered per browser client before it starts skipping ahead."""
    client_max_skipped: int = Field(1024, ge=0)
    """Messages a browser client may skip in a row before it is disconnected."""
    allowed_origins: list[str] = Field(default_factory=list)
    """Extra browser origins (``scheme://host:port``) allowed on the websockets."""
    allowed_hosts: list[str] = Field(default_factory=list)
    """Host names the server answers to besides the loopback names and a specific ``host``
    (``Host`` header check against DNS rebinding); ``*.example.org`` for subdomains, ``*``
    for any (not advised)."""
    max_points_limit: int = Field(10_000, ge=2)
    """Upper bound on ``max_points`` accepted by the snapshots endpoint."""
    retention_s: float | None = Field(None, gt=0)
    """Runs not updated for this many seconds are removed (checked hourly); ``None``: keep."""
    workers: int = Field(1, ge=1, le=64)
    """Server processes (uvicorn workers) on the one port; more than one needs PostgreSQL,
    whose feed tells every worker about every other's writes."""
    ingest_threads: int = Field(4, ge=1, le=256)
    """Threads for database writes and the parsing of large frames (never used by reads)."""
    read_threads: int = Field(4, ge=1, le=256)
    """Threads for REST and figure reads (never used by ingest)."""
    max_ingest_connections: int = Field(256, ge=1)
    """Probe connections at once; more are closed with 1013 (try again later)."""
    max_inflight_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    """Bytes of ingest frames parsed and stored at once; further frames wait their turn."""
    figure_builds: int = Field(1, ge=1, le=64)
    """Figure responses built at once (each is pure-Python CPU that the event loop, which
    acknowledges probes, shares); the others wait, and identical requests share a build."""
    figure_cache_bytes: int = Field(64 * 1024 * 1024, ge=0)
    """Encoded figure responses kept for requests asking again (per worker)."""
    max_figure_groups: int = Field(64, ge=1)
    """Groups whose figures one request builds (the rest are named, not drawn: ``group=``
    picks others)."""

    @field_validator("db", mode="before")
    @classmethod
    def _db_path_or_url(cls, value: Any) -> Any:
        """Paths (``Settings(db=tmp_path / "x.sqlite")``) as their text."""
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "db" and isinstance(value, str) else value

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        token = self.token.get_secret_value() if self.token is not None else None
        if token is not None and not token.strip():
            raise ValueError("the token must not be empty")
        if self.workers > 1 and not str(self.db).startswith(("postgresql://", "postgres://")):
            raise ValueError(
                f"--workers {self.workers} needs a PostgreSQL database (--db "
                "postgresql://user@host:port/db): an SQLite file is written by one process; "
                "run one worker on SQLite"
            )
        if self.protect_reads and token is None:
            raise ValueError("--protect-reads needs a token (--token or CURVSCOPE_TOKEN)")
        if not is_loopback_host(self.host) and token is None and not self.insecure:
            raise ValueError(
                f"refusing to listen on {self.host} without a token: anyone on the network "
                "could write into the server. Give --token (or CURVSCOPE_TOKEN), or pass "
                "--insecure if you really mean it."
            )
        return self

    def trusted_hosts(self) -> list[str]:
        """Every ``Host`` name accepted: loopback names, ``host`` unless it is a wildcard
        address, and :attr:`allowed_hosts`."""
        names = ["localhost", "127.0.0.1", "::1", "[::1]"]
        if self.host not in ("0.0.0.0", "::", ""):
            names.append(self.host)
        return list(dict.fromkeys(names + [h.lower() for h in self.allowed_hosts]))

    def to_env(self) -> dict[str, str]:
        """These settings as ``CURVSCOPE_*`` environment variables (read back by
        ``Settings()``: how server worker processes get them)."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if name == "token":
                value = self.token_value()
            env[f"CURVSCOPE_{name.upper()}"] = (
                json.dumps(value) if isinstance(value, (list, dict)) else str(value)
            )
        return env

    def token_value(self) -> str | None:
        """The configured token in clear, or ``None`` when the server is open."""
        return self.token.get_secret_value() if self.token is not None else None
