"""The one-backward-pass collector behind :func:`compute_snapshot` and the training probe.

Usage (what :func:`~curvscope.probe.compute_snapshot` does)::

    collector = ViViTCollector(model, loss_fn, config)
    with collector.hooks():                 # the backend observes this forward pass
        loss = loss_fn(collector.forward(x), y)
        with collector.backward(len(x)):    # factors folded into the groups' Grams
            loss.backward()
    snapshot = collector.snapshot(loss.item())
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor, nn

from curvscope.probe.backends import Backend, make_backend
from curvscope.probe.config import ViViTConfig
from curvscope.probe.errors import BatchSizeMismatchError, ConfigError
from curvscope.probe.newton.trust import attach_step_trust
from curvscope.probe.snapshot import GroupSpectrum, Snapshot
from curvscope.probe.vivit.directions import (
    batch_directional_gradients,
    directional_curvatures,
    directional_gradients,
    eigvec_coefficients,
)
from curvscope.probe.vivit.gram import GramAccumulator
from curvscope.probe.vivit.noise import gradient_covariance_eigvals, gradient_moment_eigvals
from curvscope.probe.vivit.selection import select_directions
from curvscope.probe.vivit.spectrum import nontrivial_eigh
from curvscope.probe.vivit.statistics import gradient_overlap, snr

__all__ = [
    "Inputs",
    "OutputsAdapter",
    "ViViTCollector",
    "batch_size_of",
    "cuda_devices",
    "in_snapshot_pass",
    "resolve_groups",
    "snapshot_pass",
    "untouched_state",
]

Inputs = Tensor | Sequence[Tensor] | Mapping[str, Any]
"""A batch's inputs: one tensor, positional tensors, or keyword arguments (batch on dim 0)."""
OutputsAdapter = Callable[[Any], Tensor]
"""Maps the model's return value to the loss input (e.g. ``out.logits.transpose(1, 2)``)."""


def resolve_groups(model: nn.Module, param_groups: object) -> list[tuple[str, list[nn.Parameter]]]:
    """Named parameter groups of ``model`` (trainable parameters only).

    ``"all"`` gives one group ``"all"``; ``"layer"`` one group per module with parameters,
    named by the module's path (a parameter shared by several modules belongs to the
    first); explicit lists give ``"group0"``, ``"group1"``, ...

    Raises:
        ConfigError: an explicit group is empty, repeats a parameter, or holds a tensor
            that is not a trainable parameter of the model.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if param_groups == "all":
        return [("all", trainable)] if trainable else []
    if param_groups == "layer":
        groups = []
        taken: set[int] = set()  # a shared (tied) parameter belongs to its first module
        for path, module in model.named_modules():
            own = [p for p in module.parameters(recurse=False) if p.requires_grad]
            own = [p for p in own if id(p) not in taken]
            taken.update(id(p) for p in own)
            if own:
                groups.append((path or type(module).__name__, own))
        return groups
    known = {id(p) for p in trainable}
    seen: set[int] = set()
    groups = []
    for i, group in enumerate(param_groups):  # type: ignore[arg-type]
        group = list(group)
        if not group:
            raise ConfigError(f"parameter group {i} is empty")
        for p in group:
            if id(p) not in known:
                raise ConfigError(
                    f"parameter group {i} holds a tensor that is not a "
                    "trainable parameter of the model"
                )
            if id(p) in seen:
                raise ConfigError(f"a parameter appears twice in the groups (group {i})")
            seen.add(id(p))
        groups.append((f"group{i}", group))
    return groups


class ViViTCollector:
    """Collect the ViViT quantities of a model during one forward and backward pass.

    The constructor runs every check that needs no data (backend, layers, loss, groups)
    and raises a :class:`~curvscope.probe.errors.CurvscopeError` before any heavy work.

    Args:
        model: the network.
        loss_fn: a ``CrossEntropyLoss``, ``MSELoss`` or ``BCEWithLogitsLoss`` instance.
        config: what to compute (and with which backend).
        keep_factors: keep the GGN factors after the pass so that
            :meth:`GroupSpectrum.combine` can lift Gram-space vectors (always on when
            ``config.eigenvectors > 0``).
        outputs: adapter from the model's return value to the loss input (e.g.
            ``lambda out: out.logits.transpose(1, 2)``); ``None``: the model's output.
        in_loop: the pass is the user's own (the ``backpack`` backend cannot convert the
            model then; ``"auto"`` picks ``func`` instead).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        config: ViViTConfig | None = None,
        keep_factors: bool = False,
        *,
        outputs: OutputsAdapter | None = None,
        in_loop: bool = False,
    ) -> None:
        self.config = config or ViViTConfig()
        self.model = model
        self.loss_fn = loss_fn
        self.outputs = outputs
        self.groups = resolve_groups(model, self.config.param_groups)
        params = [p for _, group in self.groups for p in group]
        self.backend: Backend = make_backend(
            model, loss_fn, self.config, params, in_loop=in_loop, adapted=outputs is not None
        )
        self.keep_factors = keep_factors or self.config.eigenvectors > 0
        self._accumulators: list[GramAccumulator] = []
        self._subsampling: list[int] | None = None
        self._grad_subset: list[int] | None = None
        self._batch_size = 0

    @property
    def module(self) -> nn.Module:
        """The module whose forward pass is measured (BackPACK's converted one, if needed)."""
        return getattr(self.backend, "module", self.model)

    def forward(self, inputs: Inputs) -> Tensor:
        """The loss input for ``inputs``: a tensor, a tuple (positional) or a dict (keywords)."""
        if isinstance(inputs, dict):
            out = self.module(**inputs)
        elif isinstance(inputs, (tuple, list)):
            out = self.module(*inputs)
        else:
            out = self.module(inputs)
        return out if self.outputs is None else self.outputs(out)

    def hooks(self) -> AbstractContextManager[None]:
        """The backend's observers of the forward pass and the loss, removed on exit."""
        return self.backend.hooks()

    @contextmanager
    def backward(self, batch_size: int) -> Iterator[None]:
        """Collect the factors of the ``loss.backward()`` run inside.

        An error of the backend does not abort the user's backward pass (the gradients are
        still computed in full); it is raised on exit from this context instead.
        """
        self._subsampling = self.config.subsample_indices(batch_size)
        self._grad_subset = self.config.grad_indices(batch_size)
        self._batch_size = batch_size
        self._accumulators = [
            GramAccumulator(
                name,
                params,
                self.keep_factors,
                self.config.gradient_spectrum,
                self._grad_subset,
            )
            for name, params in self.groups
        ]
        owner = {id(p): acc for acc in self._accumulators for p in acc.params}
        try:
            with self.backend.backward(
                self._subsampling, batch_size, lambda p, factor: owner[id(p)].add(p, factor)
            ):
                yield
        except BaseException:
            self._accumulators = []  # no snapshot follows a failed pass
            raise

    def discard(self) -> None:
        """Let go of the pass's sums and factors (no snapshot of it follows)."""
        self._accumulators = []

    def snapshot(self, loss: float, grad_scale: float = 1.0) -> Snapshot:
        """Turn the accumulated Gram matrices into the snapshot's spectra and statistics.

        Args:
            loss: the loss module's output (the snapshot's ``loss``).
            grad_scale: ``s`` when the backward pass inside :meth:`backward` was of a
                scaled loss (``s·loss``: ``loss / k`` under gradient accumulation, a loss
                scaler's ``loss · 2^m``), as the gradient reaching the loss's output says.
                A backend whose gradients come from that pass (BackPACK) has them divided
                by ``s``, so that γ, ‖g‖² and the curvature are all of ``loss`` itself.

        The collector lets go of the pass's sums and factors: kept factors live on only in
        the returned snapshot (for :meth:`GroupSpectrum.combine`), never until the next pass.
        """
        accumulators, self._accumulators = self._accumulators, []
        unscale = 1.0 / grad_scale if self.backend.needs_loss_backward else 1.0
        groups = [self._group_spectrum(acc, unscale) for acc in accumulators]
        if self.config.step_trust:
            for group in groups:
                attach_step_trust(
                    group,
                    resamples=self.config.step_trust_resamples,
                    seed=self.config.step_trust_seed,
                )
        return Snapshot(
            loss=loss, batch_size=self._batch_size, groups=groups, backend=self.backend.name
        )

    def _group_spectrum(self, acc: GramAccumulator, unscale: float = 1.0) -> GroupSpectrum:
        n = self._batch_size
        m = n if self._subsampling is None else len(self._subsampling)
        like = next(iter(acc.params), None)
        dtype = like.dtype if like is not None else torch.get_default_dtype()
        device = like.device if like is not None else None
        if acc.gram is None:
            empty = torch.zeros(0, dtype=dtype, device=device)
            noise = empty if self.config.gradient_spectrum else None  # no gradient, no noise
            n_g = n if self._grad_subset is None else len(self._grad_subset)
            return GroupSpectrum(
                acc.name,
                acc.params,
                empty,
                empty.reshape(n_g, 0),
                empty.reshape(m, 0),
                empty,
                empty,
                empty,
                0.0,
                gradient_eigvals=noise,
                gradient_moment_eigvals=noise,
            )
        # Curvature from a subset, with the loss's own reduction on that subset (BackPACK
        # keeps the full batch's 1/N, the subset's mean needs 1/M: V scales by √(N/M)).
        scale = self.backend.curvature_scale(n, m) if m != n else 1.0
        gram, vt_grads = acc.gram * scale, acc.vt_grads * (math.sqrt(scale) * unscale)
        eigvals, eigvecs = nontrivial_eigh(gram, self.config.eig_rtol)
        chosen = select_directions(eigvals, self.config.directions, self.config.top_k)
        lam, vecs = eigvals[chosen], eigvecs[:, chosen]
        gammas = directional_gradients(vt_grads, lam, vecs, batch_size=n)
        lambdas = directional_curvatures(lam, vecs, gram.shape[0] // m)
        grad_norm_sq = acc.grad_norm_sq * unscale**2
        batch_gamma = None
        if acc.vt_grad is not None:  # per-sample gradients of a subset: γ_k from the batch's g
            vt_grad = acc.vt_grad * (math.sqrt(scale) * unscale)
            batch_gamma = batch_directional_gradients(vt_grad, lam, vecs)
        spectrum = GroupSpectrum(
            name=acc.name,
            params=acc.params,
            eigvals=eigvals,
            gammas=gammas,
            lambdas=lambdas,
            snr_gamma=snr(gammas),
            snr_lambda=snr(lambdas),
            grad_overlap=gradient_overlap(
                gammas.mean(0) if batch_gamma is None else batch_gamma, grad_norm_sq
            ),
            grad_norm_sq=float(grad_norm_sq),
            directions=chosen,
            batch_gamma=batch_gamma,
        )
        if acc.grad_gram is not None:
            grad_gram = acc.grad_gram * unscale**2
            rtol = self.config.eig_rtol
            spectrum.gradient_eigvals = gradient_covariance_eigvals(grad_gram, rtol, n)
            spectrum.gradient_moment_eigvals = gradient_moment_eigvals(grad_gram, rtol, n)
        if self.keep_factors:
            coeffs = eigvec_coefficients(lam, vecs) * math.sqrt(scale)  # [R, K']

            def combine(weights: Tensor) -> list[Tensor]:
                lifted = acc.lift((coeffs @ weights.to(coeffs)).unsqueeze(1))
                return [t[0] for t in lifted]

            spectrum._combine = combine
            count = min(self.config.eigenvectors, lam.shape[0])
            if count:
                lifted = acc.lift(coeffs[:, :count])
                spectrum.eigenvectors = [[t[k] for t in lifted] for k in range(count)]
        return spectrum


def cuda_devices(model: nn.Module) -> list[int]:
    """CUDA device indices of the model's parameters (for ``torch.random.fork_rng``)."""
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


_SNAPSHOT = ContextVar("curvscope_snapshot_pass", default=False)


def in_snapshot_pass() -> bool:
    """Whether a :func:`compute_snapshot` pass is running (a Probe's hooks stand aside)."""
    return _SNAPSHOT.get()


@contextmanager
def snapshot_pass() -> Iterator[None]:
    """Mark the forward and backward passes run inside as a snapshot's own."""
    token = _SNAPSHOT.set(True)
    try:
        yield
    finally:
        _SNAPSHOT.reset(token)


@contextmanager
def untouched_state(model: nn.Module) -> Iterator[None]:
    """The model's buffers (BatchNorm statistics) and the RNG state restored on exit."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    with torch.random.fork_rng(devices=cuda_devices(model)):
        try:
            yield
        finally:
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)


def batch_size_of(inputs: object, targets: Tensor) -> int:
    """The batch size N shared by ``inputs`` and ``targets`` (dimension 0).

    ``inputs`` is a tensor, a tuple/list of tensors or a dict of tensors (other values in
    a tuple or dict, such as flags, are ignored, and so are 0-dim tensors among keyword
    inputs: constants such as the Hugging Face Trainer's ``num_items_in_batch``); each
    tensor's dimension 0 must be N.
    """
    if isinstance(inputs, dict):
        tensors = [v for v in inputs.values() if isinstance(v, Tensor) and v.dim() > 0]
    elif isinstance(inputs, (tuple, list)):
        tensors = [v for v in inputs if isinstance(v, Tensor)]
    else:
        tensors = [inputs] if isinstance(inputs, Tensor) else []
    if not tensors or not isinstance(targets, Tensor):
        raise TypeError(
            "inputs must be a tensor, a tuple of tensors or a dict of tensors, and targets a tensor"
        )
    if any(t.dim() == 0 for t in tensors) or targets.dim() == 0:
        raise BatchSizeMismatchError("inputs and targets need a batch dimension (dimension 0)")
    sizes = {int(t.shape[0]) for t in tensors}
    if len(sizes) > 1:
        raise BatchSizeMismatchError(
            f"the input tensors disagree on the batch size: {sorted(sizes)}"
        )
    n = sizes.pop()
    if n != targets.shape[0]:
        raise BatchSizeMismatchError(f"inputs have {n} samples but targets have {targets.shape[0]}")
    if n == 0:
        raise BatchSizeMismatchError("the batch is empty")
    return n
