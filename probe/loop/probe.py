"""The training-loop integration: :class:`Probe`.

Usage::

    probe = Probe(model, loss_fn, run="cifar-3c3d", url="http://127.0.0.1:8000", every=10)
    for step, (x, y) in enumerate(loader):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        with probe(step):
            loss.backward()
        optimizer.step()
    probe.close()

**In-loop mode** (default) measures the user's own batch and forward pass. The backends
observe the forward pass (BackPACK's IO hooks, the ``func`` backend's tracer), which runs
before ``probe(step)`` is entered, so the probe predicts: a forward pre-hook on the model
attaches the :class:`~curvscope.probe.collector.ViViTCollector` hooks when the *next* step
(the last step plus the last stride; any step before the first call) is scheduled. Inside
``with probe(step)`` the GGN factors are folded into Gram matrices (BackPACK: during the
user's ``loss.backward()``; ``func``: in its own backward passes over the same graph, just
before it); the snapshot is built on exit. Unscheduled steps run no curvature code at all:
two Python hooks (the pre-hook and a forward hook on the loss) check a flag. The user's
``p.grad``, buffers and RNG stream are those of a run without the probe, bit for bit.

**Held-out mode** (``monitor_batch=(X, y)``) runs :func:`~curvscope.probe.compute_snapshot`
on that fixed batch on exit from a scheduled ``probe(step)``, with the model in eval mode
(restored after), the RNG state forked, and the user's gradients restored.

Failures inside the probe are logged (``logging``, logger ``curvscope.probe``) and sent to
the server as run events (level ``error``); they never reach the training loop unless
``strict=True``. What can be checked up front raises at construction.
"""

from __future__ import annotations

import atexit
import math
import os
import re
import time
import warnings
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn

from curvscope.probe.collector import Inputs, OutputsAdapter, in_snapshot_pass
from curvscope.probe.config import ViViTConfig
from curvscope.probe.errors import ConfigError, NonFiniteLossError
from curvscope.probe.loop.measurement import HeldOut, InLoop
from curvscope.probe.loop.reporting import Level, Reporter
from curvscope.probe.loop.schedules import Schedule, as_schedule
from curvscope.probe.loop.steps import StepNumbering, StepPredictor
from curvscope.probe.loop.wire import Mode, encode_snapshot
from curvscope.probe.stream.spool import Spool
from curvscope.probe.stream.transport import (
    CloseReport,
    OfflineTransport,
    Transport,
    TransportOptions,
)
from curvscope.server.protocol import MAX_RUN_NAME_LENGTH, RUN_NAME_PATTERN

__all__ = ["Probe"]


class Probe:
    """Measure ViViT snapshots inside a training loop and stream them to a server.

    Args:
        model: the network being trained: any model of differentiable torch operations
            (``config.backend``; ``"auto"`` uses BackPACK where it can measure the pass).
        loss_fn: the loss module the loop calls (``CrossEntropyLoss``, ``MSELoss``,
            ``BCEWithLogitsLoss``); in-loop mode needs the loop to call this very instance.
        run: the run's name on the server (letters, digits, ``.``, ``_``, ``-``).
        url: the server (``http://host:port``); ``None`` with ``spool_dir`` = offline mode.
        token: the server's ingest token, if it has one.
        every: an int k (every k-th step, from step 0) or a schedule ``step -> bool``
            (:func:`~curvscope.probe.loop.schedules.linear`,
            :func:`~curvscope.probe.loop.schedules.logarithmic`).
        config: what to compute.
        monitor_batch: ``(X, y)``: held-out mode on this fixed batch.
        spool_dir: where undelivered messages wait (default: a temporary directory,
            created when first needed and named in the log).
        strict: let errors inside the probe propagate (for debugging) instead of logging
            and reporting them.
        outputs: adapter from the model's return value to the loss input, for the
            held-out batch (in-loop mode measures whatever the loop passes to ``loss_fn``).
        transport_options: queue size, timeouts and backoff of the sender.

    Raises:
        CurvscopeError: an unsupported layer or loss, a bad config, run name or batch.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        run: str,
        url: str | None = "http://127.0.0.1:8000",
        token: str | None = None,
        every: int | Schedule = 10,
        config: ViViTConfig | None = None,
        monitor_batch: tuple[Inputs, Tensor] | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        strict: bool = False,
        *,
        outputs: OutputsAdapter | None = None,
        transport_options: TransportOptions | None = None,
    ) -> None:
        if len(run) > MAX_RUN_NAME_LENGTH or not re.fullmatch(RUN_NAME_PATTERN, run):
            raise ConfigError(
                f"run name {run!r} is not valid: 1-{MAX_RUN_NAME_LENGTH} letters, digits, "
                "'.', '_' or '-', starting with a letter or digit"
            )
        if url is None and spool_dir is None:
            raise ConfigError("url=None is offline mode and needs a spool_dir to write to")
        self.model = model
        self.loss_fn = loss_fn
        self.run = run
        self.config = config or ViViTConfig()
        self.schedule = as_schedule(every)
        self.strict = strict
        self._measure_in: InLoop | HeldOut = (
            InLoop(model, loss_fn, self.config)
            if monitor_batch is None
            else HeldOut(model, loss_fn, self.config, monitor_batch, outputs)
        )
        self.mode: Mode = self._measure_in.mode  # type: ignore[assignment]

        spool = Spool(spool_dir)
        self._sink: Transport | OfflineTransport = (
            OfflineTransport(spool)
            if url is None
            else Transport(url, token, spool, transport_options)
        )
        self._reporter = Reporter(run, self._sink, strict)

        self._steps = StepPredictor(self.schedule)
        self._numbering = StepNumbering()
        self._numbering_last_user: int | None = None
        self._renumbered = False
        self._short_said = False
        self._user_step: int | None = None
        self._step: int | None = None
        self._scheduled = False
        # Per-step state: hooks attached for this step's forward, the loss it saw.
        self._armed = False
        self._arm_failed = False
        self._hooks: ExitStack | None = None
        self._backward: ExitStack | None = None
        self._loss: Tensor | None = None
        self._batch_size = 0
        self._loss_value = math.nan
        self._closed = False
        self._report_close: CloseReport | None = None

        self._handles = [
            model.register_forward_pre_hook(self._before_forward),
            loss_fn.register_forward_hook(self._after_loss),
        ]
        # A backend whose hooks must be in place before the forward starts (BackPACK on a
        # model that is itself one layer) is attached one step ahead, not in the pre-hook.
        self._ahead = isinstance(self._measure_in, InLoop) and self._measure_in.early_hooks
        if self._ahead:
            self._arm()
        atexit.register(self._at_exit)

    @property
    def backend(self) -> str:
        """The curvature backend of the last snapshot (before one: the one chosen up front)."""
        return self._measure_in.backend_name

    # -- the user's loop --------------------------------------------------------------

    def __call__(self, step: int) -> Probe:
        """``with probe(step): loss.backward()`` -- measure this step if it is scheduled.

        Steps are the loop's; when they go back (a count restarted per epoch), the probe
        numbers on from its last step (said once, as a warning event) and sends the loop's
        own step along as ``user_step``: no snapshot is merged into another.
        """
        probe_step, restarted = self._numbering(step)
        if restarted and not self._renumbered:
            self._renumbered = True
            self._report(
                probe_step,
                "warning",
                f"the loop's step went back from {self._numbering_last_user} to {step} (a count "
                f"restarted per epoch?): the probe numbers steps on from here (step {step} "
                f"is probe step {probe_step}; the loop's step travels as user_step)",
            )
        self._numbering_last_user = step
        self._user_step = step
        self._step = probe_step
        return self

    def __enter__(self) -> Probe:
        step = self._step
        if step is None:
            raise RuntimeError("use the probe as `with probe(step):`")
        self._scheduled = not self._closed and self._steps.is_scheduled(step)
        if self._scheduled and isinstance(self._measure_in, InLoop):
            try:
                self._begin_backward(step)
            except Exception as err:
                self._scheduled = False
                self._fail(step, err)
        if self._hooks is not None and self._backward is None:
            # Hooked forward, plain backward: PyTorch warns about BackPACK's full backward
            # hook on the first layer (its input needs no gradient); nothing is wrong.
            stack = ExitStack()
            stack.enter_context(warnings.catch_warnings())
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            self._backward = stack
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        step = self._step
        assert step is not None
        self._step = None
        try:
            if self._backward is not None:
                backward, self._backward = self._backward, None
                backward.__exit__(exc_type, exc, tb)
            self._disarm()
            if self._scheduled and exc is None:
                self._measure(step)
            elif self._scheduled:
                self._report(step, "error", f"the backward pass raised {exc!r}; no snapshot")
        except Exception as err:
            self._fail(step, err)
        finally:
            self._advance(step)

    def close(self, timeout: float = 30.0) -> CloseReport:
        """Detach from the model, deliver what is pending for up to ``timeout`` seconds.

        Returns what was delivered and what is still spooled (also logged). Idempotent.
        """
        if self._report_close is not None:
            return self._report_close
        self._closed = True
        self._disarm()
        for handle in self._handles:
            handle.remove()
        atexit.unregister(self._at_exit)
        self._report_close = self._sink.close(timeout)
        return self._report_close

    @property
    def spool_dir(self) -> Path | None:
        """The spool directory (``None`` until a temporary one was needed)."""
        return self._sink.spool.directory

    # -- hooks (run inside the user's forward) ------------------------------------------

    def _before_forward(self, module: nn.Module, args: Any) -> None:
        # A one-layer model armed here would miss its own backward hook (see _ahead).
        if self._ahead or self._armed or self._closed or self._standing_aside():
            return
        if self._steps.next_scheduled():
            self._arm()

    def _after_loss(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._armed and not self._standing_aside() and isinstance(output, Tensor):
            self._loss = output.detach()
            first = args[0] if args else None
            batched = isinstance(first, Tensor) and first.dim() > 0
            self._batch_size = int(first.shape[0]) if batched else 0  # 0: refused at backward

    def _standing_aside(self) -> bool:
        """No gradients, or a snapshot's own pass (held-out, or a user's compute_snapshot)."""
        return in_snapshot_pass() or not torch.is_grad_enabled()

    # -- internals --------------------------------------------------------------------

    def _advance(self, step: int) -> None:
        self._steps.advance(step)
        self._scheduled = False
        self._arm_failed = False
        self._loss = None
        if self._ahead and not self._closed and self._steps.next_scheduled():
            self._arm()

    def _arm(self) -> None:
        """Prepare for a scheduled step's forward (loss capture; in-loop: the backend's hooks)."""
        try:
            if isinstance(self._measure_in, InLoop):
                stack = ExitStack()
                stack.enter_context(self._measure_in.hooks())
                self._hooks = stack
            self._armed = True
        except Exception as err:
            self._arm_failed = True  # reported here; the step itself is skipped quietly
            self._fail(self._steps.last, err)

    def _disarm(self) -> None:
        self._armed = False
        if self._hooks is not None:
            hooks, self._hooks = self._hooks, None
            hooks.close()

    def _begin_backward(self, step: int) -> None:
        """In-loop: collect the factors of the user's ``loss.backward()``."""
        assert isinstance(self._measure_in, InLoop)
        if self._hooks is None:
            self._scheduled = False
            if self._arm_failed:
                return
            self._report(
                step,
                "warning",
                f"step {step} is scheduled but the probe expected step "
                f"{self._steps.expected} next, so its hooks were not in place during the "
                "forward pass; no snapshot",
            )
            return
        if self._loss is None:
            raise RuntimeError(
                "the loss module given to the probe was not called in this step's forward "
                "pass; in-loop mode needs the loop to use that very loss instance"
            )
        self._loss_value = float(self._loss)
        sub = self.config.subsample
        if isinstance(sub, int) and 0 < self._batch_size < sub and not self._short_said:
            self._short_said = True
            self._report(
                step,
                "warning",
                f"subsample={sub} on a batch of {self._batch_size} samples: the curvature of "
                "such (short) batches uses all of their samples",
            )
        stack = ExitStack()
        stack.enter_context(self._measure_in.backward(self._loss_value, self._batch_size))
        self._backward = stack

    def _measure(self, step: int) -> None:
        wall_time = time.time()
        if isinstance(self._measure_in, InLoop):
            snapshot = self._measure_in.snapshot(self._loss_value)
            loss = self._loss_value
        else:
            train_loss = float(self._loss) if self._loss is not None else None
            if train_loss is not None and not math.isfinite(train_loss):
                raise NonFiniteLossError(f"the training loss is {train_loss}; no snapshot")
            self._quiet = True  # our own hooks stand aside during the monitor pass
            try:
                snapshot = self._measure_in.snapshot()
            finally:
                loss = snapshot.loss if train_loss is None else train_loss
        message = encode_snapshot(
            snapshot,
            run=self.run,
            step=step,
            config=self.config,
            mode=self.mode,
            loss=loss,
            wall_time=wall_time,
            user_step=None if self._user_step == step else self._user_step,
        )
        self._sink.submit(message)

    def _fail(self, step: int | None, err: Exception) -> None:
        self._reporter.fail(step, err)

    def _report(self, step: int | None, level: Level, text: str) -> None:
        self._reporter.report(step, level, text)

    def _at_exit(self) -> None:
        self.close(timeout=10.0)
