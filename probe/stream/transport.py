"""Deliver wire messages to the server without ever blocking the training loop.

:class:`Transport` owns a background sender thread. :meth:`Transport.submit` only puts the
message on a bounded in-memory queue (or, when the queue is full, writes it to the
:class:`~curvscope.probe.stream.spool.Spool`) and returns. The sender sends one message at a time
over a websocket to ``/ws/ingest`` and waits for the server's acknowledgement of that
message's key; until then the message is not considered delivered. When the server is
unreachable or the connection breaks, the pending and queued messages spill to the spool,
the sender reconnects with exponential backoff, and spooled files are sent (and deleted)
once the server is back. The server stores each key once, so resending is always safe.

:func:`open_ingest` and :func:`deliver` are the same steps for one-off use (``curvscope
upload``). Torch-free.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection, connect

from curvscope.probe.stream.spool import Message, Spool
from curvscope.server.protocol import (
    CLOSE_FORBIDDEN_ORIGIN,
    CLOSE_UNAUTHORIZED,
    CLOSE_UNSUPPORTED_SCHEMA,
    AckMessage,
    ErrorMessage,
)

__all__ = [
    "CloseReport",
    "DeliveryFailed",
    "OfflineTransport",
    "Outcome",
    "ServerRefused",
    "Transport",
    "TransportOptions",
    "deliver",
    "ingest_url",
    "open_ingest",
]

log = logging.getLogger("curvscope.probe.stream.transport")

FATAL_CODES = frozenset(
    {"unauthorized", "forbidden_origin", "unsupported_schema_version", "run_taken"}
)
"""Error codes after which resending cannot help: stop sending, keep everything spooled
(``run_taken``: the run belongs to another probe instance; upload the spool with
``--run NEW`` or ``--resume``)."""
CONFLICT_CODES = frozenset({"step_conflict"})
"""The server holds a different snapshot under the message's key: kept there, refused here."""
FATAL_CLOSE_CODES = frozenset(
    {CLOSE_UNAUTHORIZED, CLOSE_FORBIDDEN_ORIGIN, CLOSE_UNSUPPORTED_SCHEMA}
)
"""Close codes with the same meaning."""
TRANSIENT_CODES = frozenset({"store_failed", "too_many_connections"})
"""Error codes after which the same message may succeed later."""


class DeliveryFailed(ConnectionError):
    """The connection failed or timed out before the acknowledgement: resend later."""


class ServerRefused(RuntimeError):
    """The server refuses this client (bad token, foreign origin, schema): do not retry."""


class Outcome(enum.Enum):
    """How one delivery ended."""

    ACKED = "acked"
    """Stored (now or before: duplicates are acknowledged too)."""
    REJECTED = "rejected"
    """The server refused the message itself (invalid, too big); resending cannot help."""
    CONFLICT = "conflict"
    """The server holds a different snapshot under this key (``step_conflict``)."""


@dataclass(frozen=True)
class TransportOptions:
    """Tuning of the sender (seconds unless said otherwise)."""

    queue_size: int = 64
    """Messages held in memory before spilling to the spool."""
    connect_timeout: float = 5.0
    ack_timeout: float = 10.0
    """Longest wait for one acknowledgement before the connection counts as broken."""
    backoff_initial: float = 0.05
    backoff_max: float = 2.0


@dataclass(frozen=True)
class CloseReport:
    """What :meth:`Transport.close` leaves behind."""

    delivered: int
    """Messages acknowledged by the server during this transport's life."""
    rejected: int
    """Messages the server refused (kept in ``<spool>/rejected/``)."""
    spooled: int
    """Messages still waiting in the spool (send them with ``curvscope upload``)."""
    spool_dir: Path | None


def ingest_url(url: str) -> str:
    """The ``/ws/ingest`` websocket URL of a server given as ``http(s)://`` or ``ws(s)://``.

    >>> ingest_url("http://127.0.0.1:8000")
    'ws://127.0.0.1:8000/ws/ingest'
    >>> ingest_url("https://example.org/curvscope/")
    'wss://example.org/curvscope/ws/ingest'
    """
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"server URL must be http(s):// or ws(s)://host[:port], got {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/ws/ingest"):
        path += "/ws/ingest"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def open_ingest(url: str, token: str | None, timeout: float = 5.0) -> ClientConnection:
    """Open the ingest websocket (``Authorization: Bearer`` when a token is given).

    Raises:
        DeliveryFailed: the server cannot be reached.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        ws = connect(
            ingest_url(url),
            additional_headers=headers,
            open_timeout=timeout,
            close_timeout=1.0,
            max_size=None,
        )
    except InvalidURI:
        raise
    except (OSError, TimeoutError, InvalidHandshake) as err:
        raise DeliveryFailed(f"cannot connect to {url}: {err}") from err
    # The connection outlives this call (closed with ws.close()); entering it is what
    # websockets >= 17.1 asks of connections not used in a `with` block.
    return ws.__enter__()


def _matches(ack: AckMessage, message: Message) -> bool:
    return ack.kind == message.type and ack.run == message.run and ack.step == message.step


def deliver(ws: ClientConnection, message: Message, ack_timeout: float) -> Outcome:
    """Send one message and wait for the server's answer to it.

    Raises:
        DeliveryFailed: connection closed, timed out, or the server could not store it now.
        ServerRefused: the server refuses this client; resending cannot help.
    """
    deadline = time.monotonic() + ack_timeout
    try:
        with contextlib.suppress(ConnectionClosed):
            # A server that refuses the client may close before this send; its error
            # message is then still waiting to be read below.
            ws.send(message.model_dump_json())
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeliveryFailed(f"no acknowledgement within {ack_timeout} s")
            reply = json.loads(ws.recv(timeout=left))
            if not isinstance(reply, dict):
                raise ValueError(f"expected a JSON object, got {type(reply).__name__}")
            if reply.get("type") == "ack":
                if _matches(AckMessage.model_validate(reply), message):
                    return Outcome.ACKED
                continue  # a late answer to an earlier message
            error = ErrorMessage.model_validate(reply)
            if error.code in FATAL_CODES:
                raise ServerRefused(f"the server refused the connection: {error.message}")
            if error.code in TRANSIENT_CODES:
                raise DeliveryFailed(f"the server could not store it: {error.message}")
            if error.code in CONFLICT_CODES:
                log.warning(
                    "the server refused %s/%s: %s", message.run, message.step, error.message
                )
                return Outcome.CONFLICT
            log.error(
                "the server refused %s %s/%s: %s (%s)",
                message.type,
                message.run,
                message.step,
                error.message,
                error.code,
            )
            return Outcome.REJECTED
    except ConnectionClosed as err:
        if err.rcvd is not None and err.rcvd.code in FATAL_CLOSE_CODES:
            raise ServerRefused(f"the server closed the connection: {err}") from err
        raise DeliveryFailed(f"connection lost: {err}") from err
    except (OSError, TimeoutError) as err:
        raise DeliveryFailed(f"connection lost: {err}") from err
    except (ValueError, ValidationError) as err:
        raise DeliveryFailed(f"unexpected reply from the server: {err}") from err


class OfflineTransport:
    """Offline mode: every message goes straight to the spool (``curvscope upload`` later)."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def submit(self, message: Message) -> None:
        """Write the message to the spool (one small file, atomically)."""
        try:
            self.spool.write(message)
        except OSError:
            log.exception("could not spool %s %s/%s: lost", message.type, message.run, message.step)

    def close(self, timeout: float = 0.0) -> CloseReport:
        """Nothing to flush; reports the spool."""
        return CloseReport(0, 0, len(self.spool), self.spool.directory)


class Transport:
    """Background delivery of wire messages with acknowledgements and a disk spool.

    Args:
        url: the server (``http://host:port``).
        token: the server's ingest token, if it has one.
        spool: where messages wait while they cannot be delivered.
        options: queue size, timeouts and backoff.
        on_conflict: called (in the sender thread) with a snapshot the server refused
            because a different one is stored under its key; it is kept in
            ``<spool>/rejected/``.
    """

    def __init__(
        self,
        url: str,
        token: str | None,
        spool: Spool,
        options: TransportOptions | None = None,
        on_conflict: Callable[[Message], None] | None = None,
    ) -> None:
        ingest_url(url)  # fail early on a malformed URL
        self.url = url
        self.token = token
        self.spool = spool
        self.options = options or TransportOptions()
        self._queue: queue.Queue[Message] = queue.Queue(maxsize=self.options.queue_size)
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._abort = threading.Event()
        self._interrupt = threading.Event()  # ends a backoff wait: closing or aborting
        self._lock = threading.Lock()
        self._ws: ClientConnection | None = None
        self._refused = False
        self.refusal: str | None = None
        """Why the server refused this client (``None``: it did not)."""
        self._on_conflict = on_conflict
        self._warned_overflow = False
        self.delivered = 0
        self.rejected = 0
        self._thread = threading.Thread(target=self._run, name="curvscope-sender", daemon=True)
        self._thread.start()

    # -- training thread ------------------------------------------------------------------

    def submit(self, message: Message) -> None:
        """Hand a message over; returns at once (a queue put, or one small file write)."""
        if self._closing.is_set() or self._refused:
            self._spill(message)
            return
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            if not self._warned_overflow:
                self._warned_overflow = True
                log.warning("curvscope send queue full; spilling snapshots to the spool")
            self._spill(message)
        self._wake.set()

    def close(self, timeout: float = 30.0) -> CloseReport:
        """Deliver what is queued and spooled for up to ``timeout`` seconds, then stop.

        With the server away (one more connection attempt fails, ``connect_timeout``),
        it returns at once. Whatever is not delivered stays in the spool (logged with its
        directory and the ``curvscope upload`` command that sends it).
        """
        self._closing.set()
        self._interrupt.set()
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abort.set()
            self._wake.set()
            with self._lock:
                ws = self._ws
            if ws is not None:
                ws.close()  # ends a pending recv; the sender spills what it held
            self._drain_to_spool()
            self._thread.join(self.options.connect_timeout + 2.0)
        self._drain_to_spool()
        left = len(self.spool)
        report = CloseReport(self.delivered, self.rejected, left, self.spool.directory)
        if left:
            log.warning(
                "%d curvscope message(s) not delivered, kept in %s; send them with "
                "`curvscope upload %s --url %s`%s",
                left,
                report.spool_dir,
                report.spool_dir,
                self.url,
                f" (the server refused them: {self.refusal})" if self.refusal else "",
            )
        return report

    # -- both threads ---------------------------------------------------------------------

    def _spill(self, message: Message) -> None:
        try:
            self.spool.write(message)
        except OSError:
            log.exception("could not spool %s %s/%s: lost", message.type, message.run, message.step)

    def _drain_to_spool(self) -> None:
        while True:
            try:
                self._spill(self._queue.get_nowait())
            except queue.Empty:
                return

    # -- sender thread --------------------------------------------------------------------

    def _run(self) -> None:
        backoff = self.options.backoff_initial
        while not self._abort.is_set():
            try:
                next_backoff = self._round(backoff)
            except Exception:  # a bug must not kill the sender: log, back off, go on
                log.exception("curvscope sender: unexpected error")
                self._disconnect()
                self._wait(self.options.backoff_max)
                continue
            if next_backoff is None:
                break
            backoff = next_backoff
        self._disconnect()

    def _round(self, backoff: float) -> float | None:
        """One delivery attempt (or one wait); the next backoff, ``None`` once all is done."""
        files = self.spool.pending() if not self._refused else []
        if self._queue.empty() and not files:
            if self._closing.is_set():
                return None
            self._wake.wait()
            self._wake.clear()
            return backoff
        if self._refused:
            self._drain_to_spool()
            if self._closing.is_set():
                return None
            self._wake.wait()
            self._wake.clear()
            return backoff
        if self._ws is None and not self._connect():
            self._drain_to_spool()  # the server is away: keep everything on disk
            if self._closing.is_set():
                return None  # closing and the server is away: all of it is spooled
            self._wait(backoff)
            return min(2 * backoff, self.options.backoff_max)
        if files:
            self._send_file(files[0])
        else:
            self._send_queued()
        return self.options.backoff_initial

    def _wait(self, seconds: float) -> None:
        """Back off, but wake early on closing (not on mere new messages)."""
        self._interrupt.wait(seconds)

    def _connect(self) -> bool:
        try:
            ws = open_ingest(self.url, self.token, self.options.connect_timeout)
        except DeliveryFailed as err:
            log.debug("curvscope server unreachable: %s", err)
            return False
        with self._lock:
            self._ws = ws
        log.info("connected to the curvscope server at %s", self.url)
        return True

    def _disconnect(self) -> None:
        with self._lock:
            ws, self._ws = self._ws, None
        if ws is not None:
            ws.close()

    def _deliver(self, message: Message) -> Outcome | None:
        """One delivery; ``None`` when it must be retried later (connection dropped)."""
        assert self._ws is not None
        try:
            return deliver(self._ws, message, self.options.ack_timeout)
        except DeliveryFailed as err:
            log.info("curvscope delivery interrupted (%s); will resend", err)
        except ServerRefused as err:
            log.error("%s; keeping this probe's messages in its spool", err)
            self.refusal = str(err)
            self._refused = True
        self._disconnect()
        return None

    def _send_file(self, path: Path) -> None:
        message = self.spool.read(path)
        if message is None:
            return
        outcome = self._deliver(message)
        if outcome is Outcome.ACKED:
            self.spool.remove(path)
            self.delivered += 1
        elif outcome is not None:
            self.spool.reject(path)
            self.rejected += 1
            self._conflict(message, outcome)

    def _send_queued(self) -> None:
        try:
            message = self._queue.get_nowait()
        except queue.Empty:
            return
        try:
            outcome = self._deliver(message)
        except BaseException:
            self._spill(message)  # taken off the queue: never dropped, whatever went wrong
            raise
        if outcome is Outcome.ACKED:
            self.delivered += 1
        elif outcome is not None:
            self.rejected += 1
            self.spool.reject(self.spool.write(message))
            self._conflict(message, outcome)
        else:
            self._spill(message)

    def _conflict(self, message: Message, outcome: Outcome) -> None:
        if outcome is Outcome.CONFLICT and self._on_conflict is not None:
            try:
                self._on_conflict(message)
            except Exception:
                log.exception("curvscope sender: the conflict callback failed")
