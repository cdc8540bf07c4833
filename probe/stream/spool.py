"""A durable outbox on disk: one JSON file per wire message, written atomically.

A snapshot's file is named by its key ``(run, step)``, so spooling the same snapshot twice
leaves one file. Events get unique names. Files are written to a hidden temporary name,
flushed to disk and renamed, so a crash leaves either the whole message or nothing.
Torch-free (``curvscope upload`` reads spools without torch).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

from pydantic import ValidationError

from curvscope.server.protocol import EventMessage, SnapshotMessage, parse_ingest_message

__all__ = ["Message", "Spool", "SpoolError"]

log = logging.getLogger("curvscope.probe.stream.spool")

Message = SnapshotMessage | EventMessage

_SUFFIX = ".json"
_TMP_PREFIX = ".tmp-"
REJECTED = "rejected"
"""Sub-directory for files that cannot be read back or that the server refused."""


class SpoolError(OSError):
    """The spool directory cannot be created or written."""


class Spool:
    """One-file-per-message spool in ``directory`` (created if missing).

    Safe to use from several threads of one process. ``directory=None`` creates a fresh
    temporary directory on first use and logs its name.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self._directory = Path(directory) if directory is not None else None
        self._lock = threading.Lock()
        self._counter = 0

    @property
    def directory(self) -> Path | None:
        """The directory, or ``None`` while a temporary one has not been needed yet."""
        return self._directory

    def _ensure(self) -> Path:
        with self._lock:
            if self._directory is None:
                self._directory = Path(tempfile.mkdtemp(prefix="curvscope-spool-"))
                log.warning("spooling undelivered curvscope messages to %s", self._directory)
            else:
                try:
                    self._directory.mkdir(parents=True, exist_ok=True)
                except OSError as err:
                    raise SpoolError(f"cannot create the spool {self._directory}: {err}") from err
            return self._directory

    def _name(self, message: Message) -> str:
        if isinstance(message, SnapshotMessage):
            return f"snapshot-{message.run}-{message.step:019d}{_SUFFIX}"
        with self._lock:
            self._counter += 1
            counter = self._counter
        return f"event-{message.run}-{time.time_ns():020d}-{os.getpid()}-{counter}{_SUFFIX}"

    def write(self, message: Message) -> Path:
        """Store ``message`` durably; returns its file. Overwrites the same snapshot key."""
        directory = self._ensure()
        target = directory / self._name(message)
        data = message.model_dump_json().encode("utf-8")
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=_SUFFIX, dir=directory)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def pending(self) -> list[Path]:
        """Spooled message files, events first, then snapshots by run and step."""
        directory = self._directory
        if directory is None or not directory.is_dir():
            return []
        return sorted(
            p
            for p in directory.iterdir()
            if p.is_file() and p.suffix == _SUFFIX and not p.name.startswith(_TMP_PREFIX)
        )

    def __len__(self) -> int:
        return len(self.pending())

    def read(self, path: Path) -> Message | None:
        """The message in ``path``; a file that is not a valid message is set aside
        (moved to ``rejected/``) and ``None`` returned. A file gone meanwhile gives ``None``."""
        try:
            data = json.loads(path.read_bytes())
            return parse_ingest_message(data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, ValidationError) as err:
            log.error("spooled file %s is not a valid message (%s); set aside", path, err)
            self.reject(path)
            return None

    def remove(self, path: Path) -> None:
        """Delete a delivered message's file."""
        path.unlink(missing_ok=True)

    def reject(self, path: Path) -> Path | None:
        """Move a file the server refused (or that cannot be read) to ``rejected/``."""
        target = path.parent / REJECTED / path.name
        try:
            target.parent.mkdir(exist_ok=True)
            os.replace(path, target)
        except FileNotFoundError:
            return None
        return target
