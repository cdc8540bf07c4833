"""Hugging Face Trainer integration: :class:`CurvscopeTrainer` (and its mixin).

Usage::

    from curvscope.probe.huggingface import CurvscopeTrainer

    trainer = CurvscopeTrainer(
        model=model,
        args=TrainingArguments(output_dir="out", max_steps=1000),
        train_dataset=dataset,
        curvscope_run="gpt2-small",
        curvscope_every=50,
        curvscope_config=ViViTConfig(curvature="mc", mc_samples=1),
    )
    trainer.train()

``CurvscopeTrainerMixin`` adds the same to another ``Trainer`` subclass
(``class MyTrainer(CurvscopeTrainerMixin, SFTTrainer)``).

**Where it measures.** Trainer callbacks never see the loss tensor, so the probe sits in
``training_step``: it is told the step (``self.state.global_step``, the optimizer step)
before the forward pass and measures around the Trainer's own backward. With
``gradient_accumulation_steps=k`` the k micro-batches of an optimizer step share its step
number; the first one is measured. The probe is created at the first training step (on
every process; only rank 0 measures and streams) and closed when ``train()`` returns.

**Which loss.** The probe needs the loss to come out of a loss module it can read, so on
the steps it may measure (``curvscope_every``) the trainer computes the loss itself on the
model's logits: ``CrossEntropyLoss(ignore_index=-100)`` on ``logits[:, :-1]`` (as
``[N, V, T-1]``) against ``labels[:, 1:]`` for causal language models, on ``[N, C, T]`` for
per-token labels (masked LM, token classification), on ``[N, C]`` for sequence
classification (``MSELoss`` for ``num_labels=1``, ``BCEWithLogitsLoss`` for multi-label),
with the Trainer's ``label_smoothing_factor``. The Trainer's own loss is still computed
(the model gets ``labels`` as usual), and the loss that is backpropagated is the probe's
times ``r = hf_loss / probe_loss``: the value and the gradient are the Trainer's (up to
rounding), whatever its normalisation. That normalisation, in transformers 4.46 and later:
with ``num_items_in_batch`` (models whose ``forward`` takes ``**kwargs``, such as GPT-2) a
causal LM's loss is the sum of the micro-batch's token losses over the number N of labels
the Trainer counted in *all* k micro-batches (the target tokens ``labels[:, 1:]`` when it
recognises the model's loss as causal; all non-ignored labels otherwise, e.g. a GPT-2
built from a config in transformers 5.x: one more per sequence), ``r = n_i / N``, and the
Trainer does not divide it by k. A model that ignores ``num_items_in_batch`` (BERT's
sequence classification) returns its micro-batch mean, ``r = 1``, and (it takes
``**kwargs``, so the Trainer counts it as normalised) is not divided by k either; other
models return the mean and the Trainer divides by k. The snapshot is always of the probe's
own loss (the micro-batch mean over its target tokens); the probe reads ``r / k`` from the
backward pass. At the first measured step the trainer checks that the Trainer's loss is
``r`` times the probe's as a function of the logits (their gradients are proportional) and
raises :class:`~curvscope.probe.ConfigError` if not (a model adding an auxiliary loss, a
``compute_loss_func`` computing something else): pass ``curvscope_loss=`` and
``curvscope_task=`` to match it. On the other steps the Trainer's loss is used untouched,
so they are bit for bit the plain Trainer's.

**Mixed precision** (``bf16=True``/``fp16=True``): accelerate enters autocast inside the
model's ``forward`` (it replaces the attribute), where the probe's forward pre-hook cannot
see it; the trainer enters the same autocast around the forward too (nested in
accelerate's, so the forward computes the same) so that the probe measures the step again
in ``float32``, and it does so through the model's own ``forward``.

A subclass that overrides ``compute_loss`` must call ``super().compute_loss`` for the
probe to see the loss. ``nn.DataParallel`` (``n_gpu > 1`` without a launcher) is not
supported: launch with ``torchrun`` (only rank 0 measures).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn

from curvscope.probe.config import ViViTConfig
from curvscope.probe.errors import ConfigError
from curvscope.probe.loop.probe import Probe
from curvscope.probe.loop.schedules import Schedule
from curvscope.probe.loop.wire import recordable_optimizer

try:
    from transformers import Trainer
except ImportError as err:  # pragma: no cover - the extra is installed in CI
    raise ImportError(
        "curvscope.probe.huggingface needs transformers: pip install 'curvscope[huggingface]'"
    ) from err

__all__ = ["CurvscopeTrainer", "CurvscopeTrainerMixin", "Task"]

log = logging.getLogger("curvscope.probe")

Task = Literal["auto", "causal-lm", "token", "sequence"]
"""How the logits meet the labels: shifted by one token, per token, or one per sample."""

_TASKS = ("auto", "causal-lm", "token", "sequence")


class CurvscopeTrainerMixin:
    """Adds a curvscope probe to a ``transformers.Trainer`` (subclass).

    Keyword arguments (all others go to the Trainer):
        curvscope_run: the run's name on the server.
        curvscope_url: the server (``None`` with a ``spool_dir`` in
            ``curvscope_probe_kwargs``: offline mode).
        curvscope_token: the server's ingest token, if it has one.
        curvscope_every: snapshot every k optimizer steps, or a schedule.
        curvscope_config: what to compute; language models usually need
            ``ViViTConfig(curvature="mc")`` or ``subsample=`` (exact curvature has
            ``T·V`` columns per sequence).
        curvscope_loss: the loss module to measure (default: chosen from the task and the
            first batch's labels, see the module docstring).
        curvscope_task: ``"auto"`` (a causal LM by the model's class, else per-token labels
            when they are 2-d integers, else per sample), ``"causal-lm"``, ``"token"``,
            ``"sequence"``.
        curvscope_probe_kwargs: more :class:`~curvscope.probe.Probe` arguments
            (``spool_dir``, ``strict``, ``transport_options``; ``resume=True`` to go on
            with a run another process started, e.g. ``train(resume_from_checkpoint=...)``).
            A second ``train()`` of the same trainer goes on with its run by itself.
            The probe records the learning rate of the Trainer's optimizer
            (``self.optimizer``, its scheduler's current rate) unless ``optimizer`` is given
            here (``None``: record none).

    Attributes:
        curvscope_probe: the probe (``None`` before the first training step).
    """

    def __init__(
        self,
        *args: Any,
        curvscope_run: str,
        curvscope_url: str | None = "http://127.0.0.1:8000",
        curvscope_token: str | None = None,
        curvscope_every: int | Schedule = 10,
        curvscope_config: ViViTConfig | None = None,
        curvscope_loss: nn.Module | None = None,
        curvscope_task: Task = "auto",
        curvscope_probe_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if curvscope_task not in _TASKS:
            raise ConfigError(f"curvscope_task must be one of {_TASKS}, got {curvscope_task!r}")
        super().__init__(*args, **kwargs)
        self.curvscope_run = curvscope_run
        self.curvscope_url = curvscope_url
        self.curvscope_token = curvscope_token
        self.curvscope_every = curvscope_every
        self.curvscope_config = curvscope_config
        self.curvscope_loss = curvscope_loss
        self.curvscope_task = curvscope_task
        self.curvscope_probe_kwargs = dict(curvscope_probe_kwargs or {})
        self.curvscope_probe: Probe | None = None
        self._curvscope_adapter: _Adapter | None = None
        self._curvscope_step: int | None = None  # set inside training_step
        self._curvscope_entered = False
        self._curvscope_checked = False
        self._curvscope_closed = False
        self._curvscope_handles: list[Any] = []
        self._curvscope_around: _AutocastAround | None = None

    @property
    def curvscope_run_url(self) -> str | None:
        """The run's page on the server (``None`` offline)."""
        url = self.curvscope_url
        return None if url is None else f"{url.rstrip('/')}/runs/{self.curvscope_run}"

    # -- Trainer overrides ----------------------------------------------------------------

    def train(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().train(*args, **kwargs)  # type: ignore[misc]
        finally:
            self.curvscope_close()

    def training_step(self, model: nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any):
        probe = self._curvscope_setup(inputs)
        if not probe.active:
            return super().training_step(model, inputs, *args, **kwargs)  # type: ignore[misc]
        step = self.state.global_step  # type: ignore[attr-defined]
        probe.expect(step)
        self._curvscope_step = step
        try:
            loss = super().training_step(model, inputs, *args, **kwargs)  # type: ignore[misc]
        except BaseException as exc:
            self._curvscope_exit(exc)
            raise
        finally:
            self._curvscope_step = None
        self._curvscope_exit()
        return loss

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        extra = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
        step, probe = self._curvscope_step, self.curvscope_probe
        if step is None or probe is None or not probe.schedule(step):
            # evaluation, or a step the probe does not measure: the Trainer's own loss
            return super().compute_loss(  # type: ignore[misc]
                model, inputs, return_outputs=return_outputs, **extra
            )
        adapter = self._curvscope_adapter
        assert adapter is not None
        targets = adapter.targets(inputs)  # before the Trainer pops the labels
        hf_loss, outputs = super().compute_loss(  # type: ignore[misc]
            model, inputs, return_outputs=True, **extra
        )
        logits = _logits(outputs)
        loss = probe.loss_fn(adapter.outputs(outputs), targets)
        ratio = hf_loss.detach().float() / loss.detach().float()
        if not bool(torch.isfinite(ratio)) or float(ratio) == 0.0:
            # nothing to measure (no target token, a non-finite loss): the Trainer's loss
            # is backpropagated, the probe reports the step
            final = hf_loss
        else:
            if not self._curvscope_checked and logits.requires_grad:
                self._curvscope_checked = True
                _check_proportional(hf_loss, loss, logits, float(ratio), probe.loss_fn)
            final = loss * ratio.to(loss.dtype)
        probe(step).__enter__()  # the Trainer's backward of `final` comes next
        self._curvscope_entered = True
        return (final, outputs) if return_outputs else final

    # -- the probe ------------------------------------------------------------------------

    def curvscope_close(self) -> None:
        """Deliver what is pending and detach the probe (``train()`` does this on return)."""
        self._curvscope_exit()
        for handle in self._curvscope_handles:
            handle.remove()
        self._curvscope_handles = []
        self._curvscope_around = None
        if self.curvscope_probe is not None:
            self.curvscope_probe.close()
            self._curvscope_closed = True

    def _curvscope_exit(self, exc: BaseException | None = None) -> None:
        """Leave ``with probe(step)``: the snapshot of the step is computed here."""
        probe = self.curvscope_probe
        if not self._curvscope_entered or probe is None:
            return
        self._curvscope_entered = False
        # a step under accelerate's mixed precision is measured again in float32 here, by
        # the model's own forward, not the autocast wrapper accelerate put in its place
        with _original_forward(self.model, self._curvscope_around):  # type: ignore[attr-defined]
            if exc is None:
                probe.__exit__(None, None, None)
            else:
                probe.__exit__(type(exc), exc, exc.__traceback__)

    def _curvscope_setup(self, inputs: Mapping[str, Any]) -> Probe:
        probe = self.curvscope_probe
        if probe is not None and not self._curvscope_closed:
            return probe
        model = self.model  # type: ignore[attr-defined]
        if self.args.n_gpu > 1:  # type: ignore[attr-defined]
            raise ConfigError(
                "CurvscopeTrainer does not support nn.DataParallel (n_gpu > 1): launch the "
                "script with torchrun (one process per GPU; rank 0 measures)"
            )
        labels = inputs.get("labels") if isinstance(inputs, Mapping) else None
        if not isinstance(labels, Tensor):
            raise ConfigError(
                "CurvscopeTrainer needs the batch as a dict with a 'labels' tensor (the probe "
                "measures the loss against them)"
            )
        task = self.curvscope_task
        if task == "auto":
            task = _task_of(model, labels)
        shifted = task == "causal-lm" and "shift_labels" not in inputs
        loss_fn = self.curvscope_loss or _default_loss(
            model,
            task,
            labels,
            self.args.label_smoothing_factor,  # type: ignore[attr-defined]
        )
        squeeze = task == "sequence" and isinstance(loss_fn, nn.MSELoss)
        self._curvscope_adapter = _Adapter(task, shifted, squeeze)
        if getattr(model, "_original_forward", None) is not None and not self._curvscope_handles:
            # accelerate's mixed precision enters autocast inside the model's forward, after
            # the forward pre-hooks: the probe's (registered next) must see it, to measure
            # the step again in float32. The same autocast, entered around the forward
            # (nested in accelerate's own), changes nothing of the forward itself.
            around = _AutocastAround(self.accelerator)  # type: ignore[attr-defined]
            self._curvscope_around = around
            self._curvscope_handles = [
                model.register_forward_pre_hook(around.enter),
                model.register_forward_hook(around.leave, always_call=True),
            ]
        kwargs = dict(self.curvscope_probe_kwargs)
        if probe is not None:  # train() called again: the same run goes on
            kwargs.setdefault("resume", True)
        trainer_optimizer = getattr(self, "optimizer", None)  # created before the first step
        if "optimizer" not in kwargs and recordable_optimizer(trainer_optimizer):
            kwargs["optimizer"] = trainer_optimizer
        probe = Probe(
            model,
            loss_fn,
            self.curvscope_run,
            url=self.curvscope_url,
            token=self.curvscope_token,
            every=self.curvscope_every,
            config=self.curvscope_config,
            outputs=self._curvscope_adapter.outputs,
            **kwargs,
        )
        self.curvscope_probe = probe
        self._curvscope_closed = False
        self._curvscope_checked = False
        if probe.active:
            where = self.curvscope_run_url or "an offline spool (url=None)"
            log.info("curvscope: streaming curvature of run %r to %s", self.curvscope_run, where)
        return probe


class CurvscopeTrainer(CurvscopeTrainerMixin, Trainer):
    """``transformers.Trainer`` with a curvscope probe (see :class:`CurvscopeTrainerMixin`)."""


# -- helpers ------------------------------------------------------------------------------


class _Adapter:
    """The loss input and targets of a task, from the model's return value and the batch.

    ``squeeze``: a regression head with one output (``[N, 1]`` logits against ``[N]`` or
    ``[N, 1]`` labels) is measured as ``[N]`` against ``[N]``, as transformers does.
    """

    def __init__(self, task: str, shifted: bool, squeeze: bool) -> None:
        self.task = task
        self.shifted = shifted
        self.squeeze = squeeze

    def outputs(self, out: Any) -> Tensor:
        logits = _logits(out)
        if self.task == "causal-lm" and self.shifted:
            logits = logits[:, :-1]
        if self.task in ("causal-lm", "token"):
            return logits.transpose(1, 2)  # [N, V, T] for CrossEntropyLoss
        if self.squeeze and logits.dim() == 2 and logits.shape[1] == 1:
            return logits[:, 0]
        return logits

    def targets(self, inputs: Mapping[str, Any]) -> Tensor:
        if self.task == "causal-lm":
            return inputs["labels"][:, 1:] if self.shifted else inputs["shift_labels"]
        labels = inputs["labels"]
        if self.squeeze and labels.dim() == 2 and labels.shape[1] == 1:
            return labels[:, 0]
        return labels


class _AutocastAround:
    """Accelerate's autocast entered in a forward pre-hook and left in the forward hook.

    A copy of the model (``copy.deepcopy``) or a pickle of it gets hooks that do nothing.
    """

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator
        self.paused = False  # the probe's own float32 pass
        self._open: list[Any] = []
        self.enter = _DetachedOnCopy(self._enter)
        self.leave = _DetachedOnCopy(self._leave)

    def _enter(self, module: nn.Module, args: Any) -> None:
        if self.paused:
            return
        context = self.accelerator.autocast()
        context.__enter__()
        self._open.append(context)

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._open:
            self._open.pop().__exit__(None, None, None)


class _DetachedOnCopy:
    """A module hook that a copied or unpickled module gets as a no-op."""

    def __init__(self, hook: Any) -> None:
        self._hook = hook

    def __call__(self, *args: Any) -> None:
        self._hook(*args)

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return _no_op

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_no_op_hook, ())


def _no_op(*args: Any) -> None:
    """What a copied or unpickled model has in place of the trainer's hooks."""


def _no_op_hook() -> Any:
    return _no_op


@contextmanager
def _original_forward(model: nn.Module, around: _AutocastAround | None) -> Iterator[None]:
    """Inside: ``model.forward`` is the one accelerate wrapped in autocast (if it did), and
    the trainer's own autocast hooks are paused."""
    original = getattr(model, "_original_forward", None)
    if original is None:
        yield
        return
    wrapped = model.__dict__.get("forward")
    model.forward = original
    if around is not None:
        around.paused = True
    try:
        yield
    finally:
        if around is not None:
            around.paused = False
        if wrapped is None:
            del model.forward
        else:
            model.forward = wrapped


def _logits(out: Any) -> Tensor:
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, Mapping):
        logits = out.get("logits")
    if not isinstance(logits, Tensor):
        raise ConfigError(
            "CurvscopeTrainer needs the model to return its logits (a ModelOutput with "
            f"`logits`, return_dict=True), got {type(out).__name__}"
        )
    return logits


def _task_of(model: nn.Module, labels: Tensor) -> str:
    name = getattr(model, "_get_name", lambda: type(model).__name__)()
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        causal = name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
    except ImportError:  # pragma: no cover - an older layout
        causal = False
    if causal or name.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal-lm"
    if labels.dim() == 2 and not labels.is_floating_point():
        return "token"
    return "sequence"


def _default_loss(model: nn.Module, task: str, labels: Tensor, smoothing: float) -> nn.Module:
    if task == "sequence":
        config = getattr(model, "config", None)
        problem = getattr(config, "problem_type", None)
        if problem is None:  # as transformers decides it on the first forward
            num_labels = getattr(config, "num_labels", 2)
            if num_labels == 1:
                problem = "regression"
            elif labels.is_floating_point():
                problem = "multi_label_classification"
            else:
                problem = "single_label_classification"
        if problem == "regression":
            return nn.MSELoss()
        if problem == "multi_label_classification":
            return nn.BCEWithLogitsLoss()
    return nn.CrossEntropyLoss(ignore_index=-100, label_smoothing=smoothing)


def _check_proportional(
    hf_loss: Tensor, loss: Tensor, logits: Tensor, ratio: float, loss_fn: nn.Module
) -> None:
    """The Trainer's loss is ``ratio`` times the probe's as functions of the logits."""
    (g_hf,) = torch.autograd.grad(hf_loss, logits, retain_graph=True, allow_unused=True)
    if g_hf is None:
        # the logits returned are not those the model's loss used (accelerate's autocast
        # wrapper hands back a float32 copy of them): nothing to compare here
        return
    (g_probe,) = torch.autograd.grad(loss, logits, retain_graph=True)
    g_hf, g_probe = g_hf.float(), g_probe.float() * ratio
    scale = float(g_hf.abs().max())
    tol = (1e-2 if logits.dtype in (torch.float16, torch.bfloat16) else 1e-4) * scale
    err = float((g_hf - g_probe).abs().max())
    if not err <= tol:
        raise ConfigError(
            "CurvscopeTrainer: the Trainer's loss is not a multiple of the probe's loss "
            f"({type(loss_fn).__name__} on the logits): their gradients differ by {err:.3g} "
            f"(of {scale:.3g}). The model may add an auxiliary loss, or a compute_loss_func "
            "computes another one; pass curvscope_loss= and curvscope_task= to match it"
        )
