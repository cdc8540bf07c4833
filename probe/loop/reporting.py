"""The probe's failure policy: log and report as run events, or raise when strict."""

from __future__ import annotations

import logging
from typing import Literal, Protocol

from curvscope.probe.loop.wire import encode_event
from curvscope.server.protocol import EventMessage, SnapshotMessage

__all__ = ["Level", "Reporter"]

log = logging.getLogger("curvscope.probe")

Level = Literal["info", "warning", "error"]


class _Sink(Protocol):
    def submit(self, message: SnapshotMessage | EventMessage) -> None: ...


class Reporter:
    """Report what went wrong inside the probe without disturbing the training loop.

    Args:
        run: the run the events belong to.
        sink: where the events go (the transport).
        strict: raise failures instead of reporting them (for debugging).
    """

    def __init__(
        self,
        run: str,
        sink: _Sink,
        strict: bool,
        *,
        instance: str | None = None,
        resume: bool = False,
    ) -> None:
        self.run = run
        self.sink = sink
        self.strict = strict
        self.instance = instance
        self.resume = resume

    def fail(self, step: int | None, err: Exception) -> None:
        """A failure at ``step`` (``None``: setup): logged and reported, or raised if strict."""
        if self.strict:
            raise err
        where = f"step {step}" if step is not None else "setup"
        log.error("curvscope probe failed at %s: %r", where, err, exc_info=err)
        self.report(step, "error", f"probe failed at {where}: {type(err).__name__}: {err}")

    def report(self, step: int | None, level: Level, text: str) -> None:
        """Send ``text`` as a run event (warnings are logged too); never raises."""
        if level != "error":
            log.warning("curvscope probe: %s", text)
        try:
            self.sink.submit(
                encode_event(
                    self.run,
                    text,
                    step=step,
                    level=level,
                    instance=self.instance,
                    resume=self.resume,
                )
            )
        except Exception:  # reporting must never be what breaks training
            log.exception("could not report a curvscope event")
