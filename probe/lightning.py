"""PyTorch Lightning integration: :class:`CurvscopeCallback`.

Usage::

    from curvscope.probe.lightning import CurvscopeCallback

    class Classifier(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
            self.loss_fn = nn.CrossEntropyLoss()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return self.loss_fn(self(x), y)  # the forward the probe hooks, the loss it reads

    callback = CurvscopeCallback(loss_fn="loss_fn", run="my-run", every=10)
    L.Trainer(max_steps=100, callbacks=[callback]).fit(Classifier(), loader)

The callback puts a :class:`~curvscope.probe.Probe` in Lightning's loop: it is created in
``on_fit_start`` (after ``configure_model``, the device placement and any DDP wrapping) on
every rank (on ranks other than 0 it is inert), is told the step of each batch
(``trainer.global_step``, the optimizer step) in ``on_train_batch_start``, and measures
around the backward pass (``on_before_backward`` / ``on_after_backward``). So
``accumulate_grad_batches=k`` (the backward is of ``loss / k``; the step's first
micro-batch is measured), ``precision="bf16-mixed"``/``"16-mixed"`` (the scheduled batch is
measured again in ``float32``) and manual optimization (``self.manual_backward(loss)``)
need nothing more. The probe is closed (pending snapshots delivered) when ``fit`` ends,
also on an exception.

Two things must hold in the user's ``training_step``:

- it calls the loss module the probe reads: pass the LightningModule's own loss module
  (``loss_fn="loss_fn"``, an attribute name, resolved on the module) or an instance that
  ``training_step`` uses (``self.loss_fn = callback.loss_fn``);
- the loss input comes out of the forward of the module the probe hooks: by default the
  LightningModule (``self(x)`` in ``training_step``); a ``training_step`` that calls a
  submodule (``self.net(x)``) needs ``model="net"`` (a dotted attribute path, the module
  itself, or ``pl_module -> module``). If the hooked forward is never called in a
  training step, the callback says so once (a warning naming the module's children).
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from curvscope.probe.collector import OutputsAdapter
from curvscope.probe.config import ViViTConfig
from curvscope.probe.loop.probe import Probe
from curvscope.probe.loop.schedules import Schedule
from curvscope.probe.loop.wire import recordable_optimizer

try:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities import rank_zero_info
except ImportError as err:  # pragma: no cover - the extra is installed in CI
    raise ImportError(
        "curvscope.probe.lightning needs PyTorch Lightning: pip install 'curvscope[lightning]'"
    ) from err

__all__ = ["CurvscopeCallback"]

log = logging.getLogger("curvscope.probe")

ModuleSpec = str | nn.Module | Callable[[Any], nn.Module] | None


class CurvscopeCallback(pl.Callback):
    """Stream ViViT curvature snapshots of a Lightning training run to a curvscope server.

    Args:
        loss_fn: the loss module ``training_step`` calls on (model outputs, targets): the
            instance itself, or the name of the LightningModule's attribute holding it
            (``"loss_fn"``). ``CrossEntropyLoss``, ``MSELoss`` or ``BCEWithLogitsLoss``.
        run: the run's name on the server.
        url: the server; ``None`` with ``probe_kwargs={"spool_dir": ...}`` is offline mode.
        token: the server's ingest token, if it has one.
        every: snapshot every k optimizer steps (``trainer.global_step``), or a schedule.
        config: what to compute (:class:`~curvscope.probe.ViViTConfig`).
        model: the module whose forward produces the loss input: ``None`` (the
            LightningModule: ``training_step`` calls ``self(x)``), a dotted attribute path
            on it (``"net"``, ``"model.backbone"``), the module itself, or a function of
            the LightningModule returning it.
        outputs: maps that module's return value to the loss input, when they differ
            (``lambda out: out.logits``); needed under ``precision="*-mixed"``, where the
            scheduled batch is measured again in ``float32``.
        probe_kwargs: more :class:`~curvscope.probe.Probe` arguments (``spool_dir``,
            ``strict``, ``transport_options``, ``monitor_batch``; ``resume=True`` to go
            on with a run another process started, e.g. when fitting from a checkpoint).
            A second ``fit`` with the same callback goes on with its run by itself.
            The probe records the learning rate and momentum of the trainer's first
            optimizer (``trainer.optimizers[0]``) unless ``optimizer`` is given here
            (``None``: record none).

    Attributes:
        probe: the :class:`~curvscope.probe.Probe` of the current (or last) ``fit``.
    """

    def __init__(
        self,
        loss_fn: nn.Module | str,
        run: str,
        url: str | None = "http://127.0.0.1:8000",
        token: str | None = None,
        every: int | Schedule = 10,
        config: ViViTConfig | None = None,
        *,
        model: ModuleSpec = None,
        outputs: OutputsAdapter | None = None,
        probe_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(loss_fn, (nn.Module, str)):
            raise TypeError(
                f"loss_fn must be a loss module or the name of the LightningModule's "
                f"attribute holding it, got {type(loss_fn).__name__}"
            )
        self._loss_spec = loss_fn
        self.run = run
        self.url = url
        self.token = token
        self.every = every
        self.config = config
        self._model_spec = model
        self.outputs = outputs
        self.probe_kwargs = dict(probe_kwargs or {})
        self.probe: Probe | None = None
        self._step: int | None = None
        self._entered = False
        self._calls = 0  # forward calls of the hooked module since the batch started
        self._count_handle: Any = None
        self._said_link = False
        self._said_unhooked = False

    @property
    def loss_fn(self) -> nn.Module:
        """The loss module the probe reads (resolved on the LightningModule once fit starts)."""
        if isinstance(self._loss_spec, str):
            if self.probe is None:
                raise AttributeError(
                    f"loss_fn={self._loss_spec!r} names an attribute of the LightningModule; "
                    "it is resolved when fit starts"
                )
            return self.probe.loss_fn
        return self._loss_spec

    @property
    def run_url(self) -> str | None:
        """The run's page on the server (``None`` offline)."""
        return None if self.url is None else f"{self.url.rstrip('/')}/runs/{self.run}"

    # -- Lightning hooks ------------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        kwargs = dict(self.probe_kwargs)
        if self.probe is not None:  # fit called again: the same run goes on
            self._close()
            kwargs.setdefault("resume", True)
        model = self._resolve_model(pl_module)
        loss_fn = self._resolve_loss(pl_module)
        optimizers = trainer.optimizers  # set up before on_fit_start
        if "optimizer" not in kwargs and optimizers and recordable_optimizer(optimizers[0]):
            kwargs["optimizer"] = optimizers[0]
        self.probe = Probe(
            model,
            loss_fn,
            self.run,
            url=self.url,
            token=self.token,
            every=self.every,
            config=self.config,
            outputs=self.outputs,
            **kwargs,
        )
        self._calls = 0
        if self.probe.active:
            self._count_handle = model.register_forward_pre_hook(_Counter(self))
        if trainer.is_global_zero and not self._said_link:
            self._said_link = True
            if self.run_url is not None:
                rank_zero_info(
                    f"curvscope: streaming curvature of run {self.run!r} to {self.run_url}"
                )
            else:
                rank_zero_info(f"curvscope: run {self.run!r} is spooled offline (url=None)")

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.probe is None or not self.probe.active:
            return
        self._exit_pending()
        self._step = trainer.global_step
        self._calls = 0
        self.probe.expect(self._step)

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor
    ) -> None:
        probe = self.probe
        if probe is None or not probe.active or self._step is None:
            return
        self._exit_pending()  # a second backward in one batch (manual optimization)
        if self._calls == 0 and not self._said_unhooked:
            self._said_unhooked = True
            self._say_unhooked(pl_module)
        probe(self._step).__enter__()
        self._entered = True

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._exit_pending()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._exit_pending()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._exit_pending(exception)
        self._close()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._close()

    # -- internals ----------------------------------------------------------------------

    def _exit_pending(self, exc: BaseException | None = None) -> None:
        if self._entered and self.probe is not None:
            self._entered = False
            if exc is None:
                self.probe.__exit__(None, None, None)
            else:
                self.probe.__exit__(type(exc), exc, exc.__traceback__)

    def _close(self) -> None:
        self._exit_pending()
        self._step = None
        if self._count_handle is not None:
            self._count_handle.remove()
            self._count_handle = None
        if self.probe is not None:
            self.probe.close()

    def _resolve_model(self, pl_module: pl.LightningModule) -> nn.Module:
        spec = self._model_spec
        if spec is None:
            model: object = pl_module
        elif isinstance(spec, str):
            try:
                model = operator.attrgetter(spec)(pl_module)
            except AttributeError as err:
                raise AttributeError(
                    f"CurvscopeCallback(model={spec!r}): the LightningModule has no such attribute"
                ) from err
        elif isinstance(spec, nn.Module):
            model = spec
        else:
            model = spec(pl_module)
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"CurvscopeCallback(model=...) must give an nn.Module, got {type(model).__name__}"
            )
        return model

    def _resolve_loss(self, pl_module: pl.LightningModule) -> nn.Module:
        spec = self._loss_spec
        if isinstance(spec, nn.Module):
            return spec
        loss_fn = getattr(pl_module, spec, None)
        if not isinstance(loss_fn, nn.Module):
            raise AttributeError(
                f"CurvscopeCallback(loss_fn={spec!r}): the LightningModule has no loss module "
                f"under that name (found {type(loss_fn).__name__})"
            )
        return loss_fn

    def _say_unhooked(self, pl_module: pl.LightningModule) -> None:
        children = [name for name, _ in pl_module.named_children()]
        which = (
            "the LightningModule's forward"
            if self._model_spec is None
            else f"the forward of model={self._model_spec!r}"
        )
        text = (
            f"CurvscopeCallback: {which} was not called in training_step, so the probe cannot "
            "observe the pass that computes the loss and measures nothing; call self(x) in "
            "training_step, or name the module that computes the loss input: "
            f"CurvscopeCallback(..., model='<attribute>') (the LightningModule's children: "
            f"{', '.join(children) or 'none'})"
        )
        if self.probe is not None and self.probe.strict:
            raise RuntimeError(text)
        log.warning(text)


class _Counter:
    """The callback's forward pre-hook: counts the hooked module's calls in a batch.

    A copy of the module (``copy.deepcopy``, an EMA model) or a pickle of it gets a hook
    that does nothing: the callback and its probe are neither copied nor pickled.
    """

    def __init__(self, callback: CurvscopeCallback) -> None:
        self._callback = callback

    def __call__(self, module: nn.Module, args: Any) -> None:
        self._callback._calls += 1

    def __deepcopy__(self, memo: dict[int, Any]) -> Callable[..., None]:
        return _no_op

    def __reduce__(self) -> tuple[Callable[[], Callable[..., None]], tuple[()]]:
        return (_no_op_hook, ())


def _no_op(*args: Any) -> None:
    """What a copied or unpickled module has in place of the callback's hook."""


def _no_op_hook() -> Callable[..., None]:
    return _no_op
