"""What the probe computes: :class:`ViViTConfig`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from curvscope.probe.errors import ConfigError
from curvscope.probe.vivit.selection import DirectionSpec, check_spec, describe

__all__ = ["ParamGroups", "ViViTConfig"]

ParamGroups = Literal["all", "layer"] | list[list[nn.Parameter]]


@dataclass(frozen=True, eq=False)
class ViViTConfig:
    """Configuration of one ViViT snapshot.

    Attributes:
        curvature: ``"exact"`` uses the C exact factors of each sample's loss Hessian
            (BackPACK ``SqrtGGNExact``); ``"mc"`` uses ``mc_samples`` sampled ones
            (``SqrtGGNMC``), so the Gram matrix is ``N·M x N·M`` instead of ``N·C x N·C``.
        mc_samples: number M >= 1 of Monte-Carlo factors per sample (``curvature="mc"``).
        subsample: curvature from these samples only (an ``int`` k means the first k, or
            the whole batch when it has fewer; a sequence lists distinct batch indices).
            Gradients always use the whole batch.
        param_groups: ``"all"`` (one group), ``"layer"`` (one group per module with
            parameters) or explicit lists of parameters (block-diagonal GGN approximation).
        top_k: compute directional statistics for the k largest eigenvalues only.
        directions: which eigen-directions get statistics (γ, λ, SNRs, overlap, Newton
            steps): ``None`` (all, or ``top_k``), ``("top", k)``, ``("bottom", k)``,
            ``("band", low, high)`` or a callable ``eigvals [K] -> indices``
            (:mod:`curvscope.probe.vivit.selection`); not together with ``top_k``.
        eigenvectors: how many of the top eigenvectors to lift to parameter space.
        per_sample: also send the per-sample ``gammas``/``lambdas`` matrices on the wire.
        eig_rtol: relative eigenvalue cutoff; ``None`` means ``R · eps(dtype)`` where R is
            the Gram matrix's size. Eigenvalues ``<= eig_rtol · λ_max`` are discarded.
        seed: seed of the Monte-Carlo sampling (``None``: the current state of the global
            torch RNG, forked, for the ``backpack`` backend; a fresh private generator for
            ``func``). The user's RNG stream never advances.
        backend: ``"backpack"`` (BackPACK's extensions: the fast path for the layers it
            supports), ``"func"`` (autograd: any model of differentiable torch operations,
            BatchNorm in training mode, position-wise losses, loss weights) or ``"auto"``
            (BackPACK where it can follow the model, loss and forward pass, else ``func``).
        hessian_top_k: also compute the ``k`` largest eigenvalues and the smallest one of
            each group's *Hessian* ``∇²_θ L`` (not the GGN) by Lanczos on Hessian-vector
            products (:func:`~curvscope.probe.hessian.hessian_spectrum`); ``0``: off.
        hessian_slq_probes: SLQ probes for the Hessian's spectral density (``0``: none;
            only with ``hessian_top_k > 0``); hessian_slq_steps: Lanczos steps per probe.
        hessian_every: in a :class:`~curvscope.probe.Probe`, only every ``m``-th *snapshot*
            (the 1st, the ``m+1``-th, ...; not every ``m``-th step) computes the Hessian
            quantities, since they cost many more passes than the GGN's;
            :func:`~curvscope.probe.compute_snapshot` always computes them.
        subsample_grad: the per-sample directional gradients ``γ_nk`` (and SNR(γ), the
            gradient-noise spectrum, the step trust's bootstrap) from these samples only (an
            ``int`` k: the first k, or the whole batch when it has fewer; a sequence: distinct
            batch indices), so ``Vᵀ g_n`` costs ``N_g/N`` of the full batch's; the batch
            gradient ``γ_k = e_kᵀ g``, the overlap and ``‖g‖²`` stay exact (whole batch).
        gradient_spectrum: also compute each group's gradient-noise spectrum: the non-zero
            eigenvalues of the covariance over samples of ``N·g_n`` (``gradient_eigvals``)
            and of its uncentred second moment (``gradient_moment_eigvals``), from the
            ``N x N`` Gram of the per-sample gradients of the same backward pass
            (:mod:`curvscope.probe.vivit.noise`).
        step_trust: also compute each group's live step trust (paper §4.2,
            :mod:`curvscope.probe.newton.trust`): per selected direction the bootstrap
            damping δ_k and the 5 % bootstrap quantile of the predicted loss reduction of the
            damped Newton step, and the group's predicted reduction of the whole damped step.
        step_trust_resamples: bootstrap rounds B of the step trust (``>= 2``); its cost is
            ``O(B·(N + 100·K'))`` per group (100 dampings on the grid).
        step_trust_seed: seed of the step trust's bootstrap, drawn afresh for every group of
            every snapshot (a replay of a snapshot gives the same numbers).
    """

    curvature: Literal["exact", "mc"] = "exact"
    mc_samples: int = 1
    subsample: int | Sequence[int] | None = None
    param_groups: ParamGroups = "all"
    top_k: int | None = None
    directions: DirectionSpec = None
    eigenvectors: int = 0
    per_sample: bool = False
    eig_rtol: float | None = None
    seed: int | None = field(default=None)
    backend: Literal["auto", "backpack", "func"] = "auto"
    hessian_top_k: int = 0
    hessian_slq_probes: int = 0
    hessian_slq_steps: int = 30
    hessian_every: int = 1
    subsample_grad: int | Sequence[int] | None = None
    gradient_spectrum: bool = False
    step_trust: bool = False
    step_trust_resamples: int = 100
    step_trust_seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (
            ("hessian_top_k", 0),
            ("hessian_slq_probes", 0),
            ("hessian_slq_steps", 1),
            ("hessian_every", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
        if not isinstance(self.gradient_spectrum, bool):
            raise ConfigError(
                f"gradient_spectrum must be True or False, got {self.gradient_spectrum!r}"
            )
        if not isinstance(self.step_trust, bool):
            raise ConfigError(f"step_trust must be True or False, got {self.step_trust!r}")
        for name, low in (("step_trust_resamples", 2), ("step_trust_seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
        if self.hessian_slq_probes and not self.hessian_top_k:
            raise ConfigError("hessian_slq_probes needs hessian_top_k >= 1 (the Hessian is off)")
        if self.backend not in ("auto", "backpack", "func"):
            raise ConfigError(f"backend must be 'auto', 'backpack' or 'func', got {self.backend!r}")
        if self.curvature not in ("exact", "mc"):
            raise ConfigError(f"curvature must be 'exact' or 'mc', got {self.curvature!r}")
        if isinstance(self.mc_samples, bool) or not isinstance(self.mc_samples, int):
            raise ConfigError(f"mc_samples must be an int >= 1, got {self.mc_samples!r}")
        if self.mc_samples < 1:
            raise ConfigError(f"mc_samples must be >= 1, got {self.mc_samples}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or self.top_k < 1):
            raise ConfigError(f"top_k must be None or an int >= 1, got {self.top_k!r}")
        check_spec(self.directions)
        if self.directions is not None and self.top_k is not None:
            raise ConfigError(
                "give top_k or directions, not both (top_k=k is directions=('top', k))"
            )
        if isinstance(self.eigenvectors, bool) or self.eigenvectors < 0:
            raise ConfigError(f"eigenvectors must be an int >= 0, got {self.eigenvectors!r}")
        if self.eig_rtol is not None and not 0.0 <= self.eig_rtol < 1.0:
            raise ConfigError(f"eig_rtol must be in [0, 1), got {self.eig_rtol}")
        if isinstance(self.param_groups, str) and self.param_groups not in ("all", "layer"):
            raise ConfigError(
                f"param_groups must be 'all', 'layer' or a list of parameter lists, "
                f"got {self.param_groups!r}"
            )
        for name in ("subsample", "subsample_grad"):
            sub = getattr(self, name)
            if sub is not None and not isinstance(sub, int):
                if isinstance(sub, (str, bytes)) or not isinstance(sub, Sequence):
                    raise ConfigError(f"{name} must be an int or a sequence of ints, got {sub!r}")
                object.__setattr__(self, name, tuple(int(i) for i in sub))

    def subsample_indices(self, batch_size: int) -> list[int] | None:
        """The curvature samples' batch indices, checked against ``batch_size`` (``None``: all).

        Raises:
            ConfigError: an index out of range, duplicates, or an empty selection.
        """
        return _indices("subsample", self.subsample, batch_size)

    def grad_indices(self, batch_size: int) -> list[int] | None:
        """The per-sample gradients' batch indices (``subsample_grad``; ``None``: all).

        A selection of the whole batch in order is ``None`` too (nothing is left out).

        Raises:
            ConfigError: as :meth:`subsample_indices`.
        """
        indices = _indices("subsample_grad", self.subsample_grad, batch_size)
        return None if indices == list(range(batch_size)) else indices

    def to_wire(self, batch_size: int | None = None) -> dict[str, object]:
        """JSON-ready description (the wire's ``ConfigPayload`` fields).

        With ``batch_size`` the sub-samplings are the batch indices actually used (an ``int``
        k larger than the batch is the whole batch, and ``subsample_grad`` of the whole batch
        in order is ``None``); without it, an ``int`` k lists ``0 .. k−1``.
        """
        if batch_size is not None:
            sub = self.subsample_indices(batch_size)
            grad_sub: list[int] | None = self.grad_indices(batch_size)
        else:
            sub, grad_sub = _listed(self.subsample), _listed(self.subsample_grad)
        groups = self.param_groups if isinstance(self.param_groups, str) else "explicit"
        return {
            "curvature": self.curvature,
            "mc_samples": self.mc_samples,
            "subsample": sub,
            "param_groups": groups,
            "top_k": self.top_k,
            "directions": describe(self.directions),
            "eigenvectors": self.eigenvectors,
            "per_sample": self.per_sample,
            "hessian_top_k": self.hessian_top_k,
            "subsample_grad": grad_sub,
            "gradient_spectrum": self.gradient_spectrum,
            "step_trust": self.step_trust,
        }


def _listed(sub: int | Sequence[int] | None) -> list[int] | None:
    """A sub-sampling setting as a list of indices (an ``int`` k: the first k)."""
    if sub is None:
        return None
    return list(range(sub)) if isinstance(sub, int) else list(sub)


def _indices(name: str, sub: int | Sequence[int] | None, batch_size: int) -> list[int] | None:
    """``sub`` checked against ``batch_size`` as batch indices (``None``: all)."""
    if sub is None:
        return None
    if isinstance(sub, int):
        if isinstance(sub, bool) or sub < 1:
            raise ConfigError(f"{name} must be an int >= 1 or a list, got {sub!r}")
        return list(range(min(sub, batch_size)))  # a short (last) batch: all of it
    indices = list(sub)
    if not indices:
        raise ConfigError(f"{name} must select at least one sample")
    bad = [i for i in indices if not 0 <= i < batch_size]
    if bad:
        raise ConfigError(
            f"{name} index {bad[0]} is out of range for a batch of {batch_size} samples"
        )
    if len(set(indices)) != len(indices):
        raise ConfigError(f"{name} indices must be distinct, got {indices}")
    return indices
