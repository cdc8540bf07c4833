"""The one-backward-pass collector behind :func:`compute_snapshot` and the training probe.

Usage (what :func:`~curvscope.probe.compute_snapshot` does)::

    collector = ViViTCollector(model, loss_fn, config)
    with collector.hooks():                 # BackPACK IO hooks for this forward/backward only
        loss = loss_fn(collector.module(x), y)
        with collector.backward(len(x)):    # BackPACK active: factors folded into Grams
            loss.backward()
    snapshot = collector.snapshot(loss.item())
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from backpack import backpack
from torch import Tensor, nn

from curvscope.probe.config import ViViTConfig
from curvscope.probe.directions import (
    directional_curvatures,
    directional_gradients,
    eigvec_coefficients,
)
from curvscope.probe.errors import ConfigError
from curvscope.probe.extension import FactorExtension, attach_hooks, release_results
from curvscope.probe.gram import GramAccumulator
from curvscope.probe.snapshot import GroupSpectrum, Snapshot
from curvscope.probe.spectrum import nontrivial_eigh
from curvscope.probe.statistics import gradient_overlap, snr
from curvscope.probe.validation import check_loss, prepare_model

__all__ = ["ViViTCollector", "cuda_devices", "resolve_groups"]


def resolve_groups(model: nn.Module, param_groups: object) -> list[tuple[str, list[nn.Parameter]]]:
    """Named parameter groups of ``model`` (trainable parameters only).

    ``"all"`` gives one group ``"all"``; ``"layer"`` one group per module with parameters,
    named by the module's path; explicit lists give ``"group0"``, ``"group1"``, ...

    Raises:
        ConfigError: an explicit group is empty, repeats a parameter, or holds a tensor
            that is not a trainable parameter of the model.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if param_groups == "all":
        return [("all", trainable)] if trainable else []
    if param_groups == "layer":
        groups = []
        for path, module in model.named_modules():
            own = [p for p in module.parameters(recurse=False) if p.requires_grad]
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
    """Collect the ViViT quantities of a model during one backward pass.

    The constructor runs every check that needs no data (layers, loss, groups) and raises
    a :class:`~curvscope.probe.errors.CurvscopeError` before any heavy work.

    Args:
        model: the network; BatchNorm layers must be in eval mode.
        loss_fn: a ``CrossEntropyLoss``, ``MSELoss`` or ``BCEWithLogitsLoss`` instance.
        config: what to compute.
        keep_factors: keep the GGN factors after the pass so that
            :meth:`GroupSpectrum.combine` can lift Gram-space vectors (always on when
            ``config.eigenvectors > 0``).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        config: ViViTConfig | None = None,
        keep_factors: bool = False,
    ) -> None:
        self.config = config or ViViTConfig()
        check_loss(loss_fn)
        self.model = model
        self.loss_fn = loss_fn
        self.module = prepare_model(model)
        self.groups = resolve_groups(model, self.config.param_groups)
        self.keep_factors = keep_factors or self.config.eigenvectors > 0
        self._accumulators: list[GramAccumulator] = []
        self._subsampling: list[int] | None = None
        self._batch_size = 0
        self._failures: list[Exception] = []  # errors of the BackPACK hooks in a pass

    @property
    def needs_conversion(self) -> bool:
        """Whether the forward pass must run through BackPACK's converted module."""
        return self.module is not self.model

    def hooks(self) -> AbstractContextManager[None]:
        """BackPACK's IO and backward hooks on the model and the loss, removed on exit."""
        return attach_hooks(self.module, self.loss_fn, failures=self._failures)

    @contextmanager
    def backward(self, batch_size: int) -> Iterator[None]:
        """Activate the factor extension for the ``loss.backward()`` run inside.

        An error inside the extension does not abort the backward pass (the gradients are
        still computed in full); it is raised on exit from this context instead.
        """
        self._subsampling = self.config.subsample_indices(batch_size)
        self._batch_size = batch_size
        self._accumulators = [
            GramAccumulator(name, params, self.keep_factors) for name, params in self.groups
        ]
        owner = {id(p): acc for acc in self._accumulators for p in acc.params}
        extension = FactorExtension(
            self.config.curvature,
            self.config.mc_samples,
            self._subsampling,
            sink=lambda p, factor: owner[id(p)].add(p, factor),
            accepts=lambda p: id(p) in owner,
        )
        seeded = self.config.curvature == "mc" and self.config.seed is not None
        rng = torch.random.fork_rng(devices=cuda_devices(self.model)) if seeded else nullcontext()
        with rng, warnings.catch_warnings():
            # BackPACK's full backward hooks fire on the first layer, whose input needs no
            # gradient; PyTorch warns about it, but that is exactly what BackPACK expects.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            if seeded:
                torch.manual_seed(self.config.seed)
            self._failures.clear()
            try:
                with backpack(extension.backpack_extension):
                    yield
                if self._failures:
                    raise self._failures[0]
            except BaseException:
                self._accumulators = []  # no snapshot follows a failed pass
                raise
            finally:
                self._failures.clear()
                release_results(self.module)

    def snapshot(self, loss: float) -> Snapshot:
        """Turn the accumulated Gram matrices into the snapshot's spectra and statistics.

        The collector lets go of the pass's sums and factors: kept factors live on only in
        the returned snapshot (for :meth:`GroupSpectrum.combine`), never until the next pass.
        """
        accumulators, self._accumulators = self._accumulators, []
        groups = [self._group_spectrum(acc) for acc in accumulators]
        return Snapshot(loss=loss, batch_size=self._batch_size, groups=groups)

    def _group_spectrum(self, acc: GramAccumulator) -> GroupSpectrum:
        n = self._batch_size
        m = n if self._subsampling is None else len(self._subsampling)
        like = next(iter(acc.params), None)
        dtype = like.dtype if like is not None else torch.get_default_dtype()
        device = like.device if like is not None else None
        if acc.gram is None:
            empty = torch.zeros(0, dtype=dtype, device=device)
            return GroupSpectrum(
                acc.name,
                acc.params,
                empty,
                empty.reshape(n, 0),
                empty.reshape(m, 0),
                empty,
                empty,
                empty,
                0.0,
            )
        # Curvature from a subset, with the loss's own reduction on that subset: BackPACK
        # keeps the full batch's 1/N, the subset's mean needs 1/M, so V scales by √(N/M).
        scale = n / m if (self.loss_fn.reduction == "mean" and m != n) else 1.0
        gram, vt_grads = acc.gram * scale, acc.vt_grads * math.sqrt(scale)
        eigvals, eigvecs = nontrivial_eigh(gram, self.config.eig_rtol)
        top = eigvals.shape[0] if self.config.top_k is None else self.config.top_k
        lam, vecs = eigvals[:top], eigvecs[:, :top]
        gammas = directional_gradients(vt_grads, lam, vecs)
        lambdas = directional_curvatures(lam, vecs, gram.shape[0] // m)
        grad_norm_sq = acc.grad_norm_sq
        spectrum = GroupSpectrum(
            name=acc.name,
            params=acc.params,
            eigvals=eigvals,
            gammas=gammas,
            lambdas=lambdas,
            snr_gamma=snr(gammas),
            snr_lambda=snr(lambdas),
            grad_overlap=gradient_overlap(gammas.mean(0), grad_norm_sq),
            grad_norm_sq=float(grad_norm_sq),
        )
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
