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

**Loops people write** (docs/loops.md):

- *a scaled loss* (``(loss / k).backward()`` under gradient accumulation, a loss scaler's
  ``scaler.scale(loss).backward()``): the gradient reaching the loss module's output says
  by how much; the snapshot is of the loss module's output itself (γ, ‖g‖² and the
  curvature alike). A step number repeated for k micro-batches is measured once, on its
  first micro-batch.
- *AMP* (``torch.autocast``) and ``float16``/``bfloat16`` weights: a scheduled step's batch
  is measured again after the user's backward, in ``float32`` outside autocast
  (:func:`~curvscope.probe.compute_snapshot`): one more forward and backward pass, with
  dropout masks drawn anew from a forked RNG.
- *torch.distributed*: only rank 0 measures and streams (its local batch); on the other
  ranks the probe is inert (``probe.active`` is ``False``).
- ``probe.expect(step)`` before the forward pass tells the probe the step exactly (the
  trainer integrations do); otherwise it predicts the next step from the last stride.

**The Hessian** (``config.hessian_top_k > 0``): every ``config.hessian_every``-th snapshot
(the first, then every m-th one the probe makes) also carries each group's Hessian
spectrum (:func:`~curvscope.probe.hessian.hessian_spectrum`). Held-out mode computes it on
the held-out batch; in-loop mode keeps a reference to the forward's inputs and the loss
call's targets on such steps and runs Lanczos on that batch after the user's backward
(model outputs reach the loss through ``outputs=`` when they are not the loss input
itself). A failure there is reported and the snapshot goes without the Hessian.
"""

from __future__ import annotations

import atexit
import math
import os
import re
import time
import uuid
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn

from curvscope.probe.collector import Inputs, OutputsAdapter, in_snapshot_pass
from curvscope.probe.compute import attach_hessian
from curvscope.probe.config import ViViTConfig
from curvscope.probe.errors import ConfigError, NonFiniteLossError
from curvscope.probe.loop.measurement import HeldOut, InLoop
from curvscope.probe.loop.reporting import Level, Reporter
from curvscope.probe.loop.schedules import Schedule, as_schedule
from curvscope.probe.loop.steps import StepNumbering, StepPredictor
from curvscope.probe.loop.wire import (
    Mode,
    WireError,
    encode_optimizer,
    encode_snapshot,
    learning_rates,
)
from curvscope.probe.precision import LOW_PRECISION, autocast_active, is_low_precision
from curvscope.probe.snapshot import Snapshot
from curvscope.probe.stream.spool import Spool
from curvscope.probe.stream.transport import (
    CloseReport,
    OfflineTransport,
    Transport,
    TransportOptions,
)
from curvscope.server.protocol import (
    MAX_RUN_NAME_LENGTH,
    RUN_NAME_PATTERN,
    EventMessage,
    OptimizerPayload,
    SnapshotMessage,
)

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
        outputs: adapter from the model's return value to the loss input: for the held-out
            batch, and in-loop when a step is measured again in ``float32`` (AMP, half
            weights); otherwise in-loop mode measures whatever the loop passes to
            ``loss_fn``.
        transport_options: queue size, timeouts and backoff of the sender.
        resume: continue the server's run of this name although another process (another
            probe instance) started it. Without it, a run name the server already has from
            another instance is refused (logged; this probe's messages stay in its spool:
            ``curvscope upload SPOOL --run NEW`` or ``--resume``). Steps the run already
            has with other numbers are kept as stored and reported (``step_conflict``).
        optimizer: the training optimizer (``torch.optim.SGD``, ``Adam``, ..., or a wrapper
            such as accelerate's): each snapshot then carries its learning rate (the
            scheduler's current one), and for SGD its momentum
            (:class:`~curvscope.server.protocol.OptimizerPayload`), read from the first
            parameter group (a warning event says once when the groups' rates differ). The
            dashboard draws the edge-of-stability threshold 2(1+β)/η from them.

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
        resume: bool = False,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        if len(run) > MAX_RUN_NAME_LENGTH or not re.fullmatch(RUN_NAME_PATTERN, run):
            raise ConfigError(
                f"run name {run!r} is not valid: 1-{MAX_RUN_NAME_LENGTH} letters, digits, "
                "'.', '_' or '-', starting with a letter or digit"
            )
        if url is None and spool_dir is None:
            raise ConfigError("url=None is offline mode and needs a spool_dir to write to")
        if optimizer is not None:
            try:
                learning_rates(optimizer)
            except (AttributeError, KeyError, TypeError, ValueError) as err:
                raise ConfigError(
                    f"optimizer={type(optimizer).__name__!r} is not a torch optimizer with "
                    f"param_groups holding an 'lr' ({err!r})"
                ) from None
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module  # its forward runs inside the wrapper's
        self.model = model
        self.loss_fn = loss_fn
        self.run = run
        self.config = config or ViViTConfig()
        self.schedule = as_schedule(every)
        self.strict = strict
        self.outputs = outputs
        self.optimizer = optimizer
        self._optimizer_said: set[str] = set()  # the optimizer warnings given (once each)
        self.active = _rank() == 0
        """Whether this probe measures: ``False`` on ranks other than 0 of torch.distributed."""
        self._closed = not self.active
        self._report_close: CloseReport | None = None if self.active else CloseReport(0, 0, 0, None)
        if not self.active:
            return
        self._measure_in: InLoop | HeldOut = (
            InLoop(model, loss_fn, self.config)
            if monitor_batch is None
            else HeldOut(model, loss_fn, self.config, monitor_batch, outputs)
        )
        self.mode: Mode = self._measure_in.mode  # type: ignore[assignment]

        self.instance = uuid.uuid4().hex
        """This probe's identity on the server: a run belongs to one instance at a time."""
        self.resume = resume
        spool = Spool(spool_dir)
        self._sink: Transport | OfflineTransport = (
            OfflineTransport(spool)
            if url is None
            else Transport(url, token, spool, transport_options, on_conflict=self._conflict)
        )
        self._reporter = Reporter(run, self._sink, strict, instance=self.instance, resume=resume)

        self._steps = StepPredictor(self.schedule)
        self._expected: int | None = None  # the next forward's step, when the loop said it
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
        # The gradient the user's backward pass carried to the loss's output: s for s·loss.
        self._listening = False
        self._grad_scale: float | None = None
        self._scale_said = False
        # A step measured again in float32 (AMP, half weights): the forward's inputs, the
        # model's return value, the loss call's targets.
        self._recompute: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self._model_out: Any = None
        self._targets: Any = None
        self._adapter_missing = False
        self._inner_autocast = False
        self._precision_said = False
        # Snapshots made so far (the Hessian: every hessian_every-th), and a step's batch
        # kept for it in-loop: the forward's inputs, the loss call's targets.
        self._snapshots = 0
        self._hessian_inputs: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self._hessian_targets: Any = None
        self._hessian_adapter_missing = False

        self._handles = [
            model.register_forward_pre_hook(_Hook(self._before_forward), with_kwargs=True),
            model.register_forward_hook(_Hook(self._after_forward)),
            loss_fn.register_forward_hook(_Hook(self._after_loss), with_kwargs=True),
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

    def expect(self, step: int) -> None:
        """Say that the model's next forward pass belongs to the loop's step ``step``.

        Optional: without it the probe predicts the next step from the last stride. Call
        it before the forward (trainer integrations do, from their batch-start hook).
        """
        if self._closed:
            return
        self._expected = self._numbering.peek(step)
        if self._ahead:  # hooks attached one step ahead on the prediction: follow the loop
            due = self._steps.is_scheduled(self._expected)
            if due and not self._armed:
                self._arm()
            elif not due and self._armed:
                self._disarm()

    def __call__(self, step: int) -> Probe:
        """``with probe(step): loss.backward()`` -- measure this step if it is scheduled.

        Steps are the loop's; when they go back (a count restarted per epoch), the probe
        numbers on from its last step (said once, as a warning event) and sends the loop's
        own step along as ``user_step``: no snapshot is merged into another.
        """
        if not self.active:
            return self
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
        if not self.active:
            return self
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
        if not self.active:
            return
        step = self._step
        assert step is not None
        self._step = None
        self._listening = False
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
        if self._report_close is not None:  # closed before, or inactive
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
        return self._sink.spool.directory if self.active else None

    # -- hooks (run inside the user's forward) ------------------------------------------

    def _before_forward(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        if self._closed or self._standing_aside():
            return
        # A one-layer model armed here would miss its own backward hook (see _ahead).
        if not self._armed and not self._ahead:
            expected = self._expected
            due = (
                self._steps.next_scheduled()
                if expected is None
                else self._steps.is_scheduled(expected)
            )
            if due:
                self._arm()
        if self._armed and isinstance(self._measure_in, InLoop) and self._hessian_due():
            self._hessian_inputs = (tuple(args), dict(kwargs))
        if (
            self._armed
            and isinstance(self._measure_in, InLoop)
            and (autocast_active() or is_low_precision(self.model, self.loss_fn))
        ):
            # Half precision cannot carry the snapshot: measure the batch again in float32
            # after the user's backward; the backend's observers are not needed now.
            if self._hooks is not None:
                hooks, self._hooks = self._hooks, None
                hooks.close()
            self._recompute = (tuple(args), dict(kwargs))

    def _after_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        kept = self._recompute is not None or self._hessian_inputs is not None
        if kept and self._model_out is None:
            self._model_out = output

    def _after_loss(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        if self._armed and not self._standing_aside() and isinstance(output, Tensor):
            self._loss = output.detach()
            first = args[0] if args else kwargs.get("input")
            batched = isinstance(first, Tensor) and first.dim() > 0
            self._batch_size = int(first.shape[0]) if batched else 0  # 0: refused at backward
            if output.requires_grad:
                output.register_hook(self._on_loss_grad)
            target = args[1] if len(args) > 1 else kwargs.get("target")
            if self._hessian_inputs is not None:
                self._hessian_targets = target
                self._hessian_adapter_missing = self.outputs is None and not _same(
                    first, self._model_out
                )
            if self._recompute is not None:
                self._targets = target
                self._adapter_missing = self.outputs is None and first is not self._model_out
            elif isinstance(first, Tensor) and first.dtype in LOW_PRECISION:
                self._inner_autocast = True

    def _on_loss_grad(self, grad: Tensor) -> None:
        """The user's backward pass reached the loss: ``grad`` is ``s`` of ``s·loss``."""
        if self._listening and self._grad_scale is None and grad.numel() == 1:
            self._grad_scale = float(grad)

    def _standing_aside(self) -> bool:
        """No gradients, or a snapshot's own pass (held-out, or a user's compute_snapshot)."""
        return in_snapshot_pass() or not torch.is_grad_enabled()

    # -- internals --------------------------------------------------------------------

    def _advance(self, step: int) -> None:
        self._steps.advance(step)
        self._expected = None
        self._scheduled = False
        self._arm_failed = False
        self._loss = None
        self._grad_scale = None
        self._recompute = self._model_out = self._targets = None
        self._adapter_missing = self._inner_autocast = False
        self._hessian_inputs = self._hessian_targets = None
        self._hessian_adapter_missing = False
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
        if self._hooks is None and self._recompute is None:
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
        if self._inner_autocast:
            raise ConfigError(
                "the loss got float16/bfloat16 outputs although the loop did not run the "
                "forward under autocast: the model's forward enters autocast itself (e.g. "
                "accelerate's mixed precision). Run the forward under torch.autocast in the "
                "loop instead (the probe then measures the step again in float32), or use "
                "curvscope.probe.huggingface with the Trainer"
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
        if self._recompute is None:
            stack = ExitStack()
            stack.enter_context(self._measure_in.backward(self._loss_value, self._batch_size))
            self._backward = stack
        elif not math.isfinite(self._loss_value):
            raise NonFiniteLossError(f"the loss is {self._loss_value}; no snapshot")
        self._listening = True  # the user's backward pass comes next

    def _measure(self, step: int) -> None:
        wall_time = time.time()
        if isinstance(self._measure_in, InLoop) and self._recompute is not None:
            snapshot = self._measure_again(step)
            loss = snapshot.loss  # float32, as the rest of the snapshot
        elif isinstance(self._measure_in, InLoop):
            scale = self._unscaled(step)
            if scale is None:
                self._measure_in.drop()
                return
            snapshot = self._measure_in.snapshot(self._loss_value, scale)
            loss = self._loss_value
        else:
            train_loss = float(self._loss) if self._loss is not None else None
            if train_loss is not None and not math.isfinite(train_loss):
                raise NonFiniteLossError(f"the training loss is {train_loss}; no snapshot")
            snapshot = self._measure_in.snapshot(hessian=self._hessian_due())
            loss = snapshot.loss if train_loss is None else train_loss
        if self._hessian_inputs is not None:
            try:
                self._attach_hessian(snapshot)
            except Exception as err:  # the snapshot goes without it
                self._fail(step, err)
        self._snapshots += 1
        message = encode_snapshot(
            snapshot,
            run=self.run,
            step=step,
            config=self.config,
            mode=self.mode,
            loss=loss,
            wall_time=wall_time,
            user_step=None if self._user_step == step else self._user_step,
            instance=self.instance,
            resume=self.resume,
            optimizer=self._optimizer_state(step),
        )
        self._sink.submit(message)

    def _optimizer_state(self, step: int) -> OptimizerPayload | None:
        """The optimizer's state for this step's snapshot (``None`` without an optimizer, or
        when it cannot travel: said once, the snapshot goes without it)."""
        if self.optimizer is None:
            return None
        try:
            rates = learning_rates(self.optimizer)
            state = encode_optimizer(self.optimizer)
        except (WireError, KeyError, TypeError, ValueError) as err:
            self._say_once(step, "state", f"the optimizer's state is not recorded: {err}")
            return None
        if len(set(rates)) > 1:
            shown = ", ".join(f"{r:g}" for r in rates[:8]) + (", ..." if len(rates) > 8 else "")
            self._say_once(
                step,
                "groups",
                f"the optimizer's parameter groups have different learning rates ({shown}): "
                f"snapshots record the first group's (lr={rates[0]:g}), and the dashboard's "
                "stability threshold is that group's",
            )
        return state

    def _say_once(self, step: int, what: str, text: str) -> None:
        if what not in self._optimizer_said:
            self._optimizer_said.add(what)
            self._report(step, "warning", text)

    def _unscaled(self, step: int) -> float | None:
        """``s`` of the backpropagated ``s·loss`` (said once); ``None``: no snapshot."""
        scale = 1.0 if self._grad_scale is None else self._grad_scale
        if scale == 0.0 or not math.isfinite(scale):
            self._report(
                step,
                "warning",
                f"the backward pass carried a gradient of {scale} to the loss (a loss "
                "scaler's overflow step?): no snapshot",
            )
            return None
        if scale != 1.0 and not self._scale_said:
            self._scale_said = True
            self._report(
                step,
                "info",
                f"the backward pass is of {scale:g} × the loss (gradient accumulation, a loss "
                "scaler): snapshots are of the loss module's output itself",
            )
        return scale

    def _hessian_due(self) -> bool:
        """Whether the next snapshot carries the Hessian (every ``hessian_every``-th one)."""
        config = self.config
        return config.hessian_top_k > 0 and self._snapshots % config.hessian_every == 0

    def _attach_hessian(self, snapshot: Snapshot) -> None:
        """In-loop: the Hessian of the step's own batch, per group of ``snapshot``."""
        assert self._hessian_inputs is not None
        if self._hessian_adapter_missing:
            raise ConfigError(
                "the Hessian is computed from the model's inputs, and the loss got something "
                "other than the model's return value: pass Probe(..., outputs=lambda out: ...)"
            )
        inputs = _as_inputs(
            *self._hessian_inputs, "the probe computes the Hessian from the model's inputs"
        )
        attach_hessian(
            snapshot,
            self.model,
            self.loss_fn,
            inputs,
            self._hessian_targets,
            self.config,
            outputs=self.outputs,
        )

    def _measure_again(self, step: int) -> Snapshot:
        """A step under autocast or with half weights, measured in float32 (said once)."""
        assert isinstance(self._measure_in, InLoop) and self._recompute is not None
        if self._adapter_missing:
            raise ConfigError(
                "under autocast (or with float16/bfloat16 weights) the probe measures the "
                "batch again in float32 and must know how the model's return value becomes "
                "the loss input: pass Probe(..., outputs=lambda out: ...)"
            )
        why = (
            "under autocast the probe measures the batch again in float32, from the model's inputs"
        )
        inputs = _as_inputs(*self._recompute, why)
        if not self._precision_said:
            self._precision_said = True
            self._report(
                step,
                "info",
                "the loop runs under autocast or with float16/bfloat16 weights: each "
                "scheduled batch is measured again in float32 outside autocast (one more "
                "forward and backward pass; dropout masks drawn anew)",
            )
        return self._measure_in.again(inputs, self._targets, self.outputs)

    def _conflict(self, message: SnapshotMessage | EventMessage) -> None:
        """The server holds other numbers at this snapshot's step (sender thread)."""
        self._report(
            message.step,
            "warning",
            f"the server already has a different snapshot of run {message.run!r} at step "
            f"{message.step} (steps repeated by a resumed run or another process?): it keeps "
            f"the stored one; this one is in {self._sink.spool.directory}/rejected",
        )

    def _fail(self, step: int | None, err: Exception) -> None:
        self._reporter.fail(step, err)

    def _report(self, step: int | None, level: Level, text: str) -> None:
        self._reporter.report(step, level, text)

    def _at_exit(self) -> None:
        self.close(timeout=10.0)


def _same(loss_input: Any, model_out: Any) -> bool:
    """Whether the loss got the model's return value (full backward hooks, BackPACK's, put
    an alias of the same storage in its place)."""
    if loss_input is model_out:
        return True
    return (
        isinstance(loss_input, Tensor)
        and isinstance(model_out, Tensor)
        and loss_input.shape == model_out.shape
        and loss_input.data_ptr() == model_out.data_ptr()
    )


def _as_inputs(args: tuple[Any, ...], kwargs: dict[str, Any], why: str) -> Inputs:
    """The forward's arguments as ``compute_snapshot``'s ``inputs``."""
    if args and kwargs:
        raise ConfigError(
            f"{why}: positional and keyword inputs together are not supported; call the "
            "model with either"
        )
    return kwargs if kwargs else (args[0] if len(args) == 1 else args)


def _rank() -> int:
    """This process's rank under torch.distributed (0 without it)."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _Hook:
    """A module hook calling into the probe. A copy of the model (``copy.deepcopy``, an EMA
    model) or a pickle of it (``torch.save(model)``) gets a hook that does nothing instead:
    the probe (its threads, its locks) is neither copied nor pickled."""

    def __init__(self, hook: Callable[..., None]) -> None:
        self._hook = hook

    def __call__(self, *args: Any) -> None:
        self._hook(*args)

    def __deepcopy__(self, memo: dict[int, Any]) -> Callable[..., None]:
        return _detached

    def __reduce__(self) -> tuple[Callable[[], Callable[..., None]], tuple[()]]:
        return (_detached_hook, ())


def _detached(*args: Any) -> None:
    """What a copied or unpickled model has in place of the probe's hooks."""


def _detached_hook() -> Callable[..., None]:
    return _detached
