"""Results of one ViViT snapshot: :class:`Snapshot` and its :class:`GroupSpectrum` list."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor, nn

__all__ = ["GroupSpectrum", "Snapshot"]


@dataclass
class GroupSpectrum:
    """The ViViT quantities of one parameter group (one diagonal block of the GGN).

    Shapes: ``K`` non-trivial eigenvalues, ``K'`` selected directions with statistics
    (``config.directions``; all, or the ``top_k`` largest), ``N`` samples in the batch,
    ``N'`` curvature samples.

    Attributes:
        name: the group's name (``"all"``, a module path, or ``"group<i>"``).
        params: the group's parameters, in order.
        eigvals: ``[K]`` non-trivial GGN eigenvalues, descending, all above the cutoff
            ``eig_rtol · λ_max`` (default ``eig_rtol = R·eps(dtype)``, ``R`` = Gram size).
        gammas: ``[N, K']`` directional gradients ``γ_nk = N·e_kᵀ g_n`` (mean = ``e_kᵀ g``);
            ``[N_g, K']`` for the samples of ``subsample_grad`` only.
        lambdas: ``[N', K']`` directional curvatures ``λ_nk = N'·e_kᵀ G_n e_k`` (mean = ``λ_k``).
        snr_gamma, snr_lambda: ``[K']`` ``mean² / var`` (unbiased), or ``-1`` where the
            variance is zero or undefined (:data:`~curvscope.probe.vivit.statistics.SNR_UNDEFINED`).
        grad_overlap: ``[K']`` ``γ_k² / ‖g‖²``.
        grad_norm_sq: ``‖g‖²`` of the group's batch gradient.
        eigenvectors: the first ``eigenvectors`` selected GGN eigenvectors ``e_k``, each a
            list of tensors shaped like ``params`` (orthonormal across the whole group).
        directions: ``[K']`` indices into ``eigvals`` of the selected directions
            (ascending); ``None``: the first K'.
        batch_gamma: ``[K']`` ``γ_k = e_kᵀ g`` of the whole batch when ``gammas`` are of a
            subset (``subsample_grad``); ``None``: it is ``gammas.mean(0)``.
        hessian_eigvals: ``[k]`` the ``hessian_top_k`` largest eigenvalues of the group's
            Hessian ``∇²_θ L`` (not the GGN), descending, possibly negative; ``None``: not
            computed (``hessian_top_k = 0``, or a snapshot the probe skipped).
        hessian_min: the Hessian's smallest eigenvalue (negative where the loss is not
            locally convex), or ``None``.
        hessian_density: SLQ quadrature ``(nodes, weights)``, each ``[probes, m]``
            (:mod:`curvscope.probe.hessian.slq`), or ``None``.
        gradient_eigvals: ``[K_g]`` (``K_g <= N − 1``) the non-zero eigenvalues, descending,
            of the gradient covariance ``C``: the unbiased covariance over samples of
            ``N·g_n``, so ``e_kᵀ C e_k`` is the variance of ``γ_nk``
            (:mod:`curvscope.probe.vivit.noise`); ``None``: not computed
            (``gradient_spectrum=False``).
        gradient_moment_eigvals: ``[K_s]`` (``K_s <= N``) those of the uncentred second
            moment ``S = (1/N) Σ_n (N g_n)(N g_n)ᵀ``, or ``None``.
        trust_damping: ``[K']`` the bootstrap damping δ_k of each selected direction (``inf``:
            no damping has a non-negative bound, a Newton step leaves ``e_k`` alone);
            ``None``: not computed (``step_trust=False``). See :mod:`curvscope.probe.newton.trust`.
        trust_bound: ``[K']`` the largest 5 % bootstrap quantile, over the damping grid, of
            the predicted loss reduction along ``e_k`` (``>= 0``: a trusted step), or ``None``.
        newton_reduction: the loss decrease the group's GGN quadratic model predicts for the
            damped Newton step with the dampings ``trust_damping`` (``>= 0``), or ``None``.
    """

    name: str
    params: list[nn.Parameter]
    eigvals: Tensor
    gammas: Tensor
    lambdas: Tensor
    snr_gamma: Tensor
    snr_lambda: Tensor
    grad_overlap: Tensor
    grad_norm_sq: float
    eigenvectors: list[list[Tensor]] = field(default_factory=list)
    directions: Tensor | None = None
    batch_gamma: Tensor | None = None
    hessian_eigvals: Tensor | None = None
    hessian_min: float | None = None
    hessian_density: tuple[Tensor, Tensor] | None = None
    gradient_eigvals: Tensor | None = None
    gradient_moment_eigvals: Tensor | None = None
    trust_damping: Tensor | None = None
    trust_bound: Tensor | None = None
    newton_reduction: float | None = None
    _combine: Callable[[Tensor], list[Tensor]] | None = field(default=None, repr=False)

    @property
    def gamma(self) -> Tensor:
        """``[K']`` batch directional gradients ``γ_k = e_kᵀ g`` (batch mean of ``γ_nk``)."""
        return self.gammas.mean(0) if self.batch_gamma is None else self.batch_gamma

    @property
    def selected_eigvals(self) -> Tensor:
        """``[K']`` the eigenvalues ``λ_k`` of the selected directions."""
        if self.directions is None:
            return self.eigvals[: self.gammas.shape[1]]
        return self.eigvals[self.directions]

    @property
    def num_params(self) -> int:
        """Number of scalar parameters D of the group."""
        return sum(p.numel() for p in self.params)

    def combine(self, weights: Tensor) -> list[Tensor]:
        """``Σ_k w_k e_k`` over the ``K'`` directions, with one application of ``V``.

        Args:
            weights: ``[K']`` coefficients.

        Returns:
            tensors shaped like ``params``.

        Raises:
            RuntimeError: the snapshot did not keep its factors (``keep_factors=True`` or
                ``eigenvectors > 0`` keeps them).
        """
        if self._combine is None:
            raise RuntimeError(
                "this snapshot kept no GGN factors; compute it with keep_factors=True"
            )
        return self._combine(weights)


@dataclass
class Snapshot:
    """One ViViT snapshot of a model on one batch.

    Attributes:
        loss: the batch loss.
        batch_size: N.
        groups: one :class:`GroupSpectrum` per parameter group.
        backend: the curvature backend that computed it (``"backpack"`` or ``"func"``).
    """

    loss: float
    batch_size: int
    groups: list[GroupSpectrum]
    backend: str = "backpack"
