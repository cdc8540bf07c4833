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
        gammas: ``[N, K']`` directional gradients ``γ_nk = N·e_kᵀ g_n`` (mean = ``e_kᵀ g``).
        lambdas: ``[N', K']`` directional curvatures ``λ_nk = N'·e_kᵀ G_n e_k`` (mean = ``λ_k``).
        snr_gamma, snr_lambda: ``[K']`` ``mean² / var`` (unbiased), or ``-1`` where the
            variance is zero or undefined (:data:`~curvscope.probe.vivit.statistics.SNR_UNDEFINED`).
        grad_overlap: ``[K']`` ``γ_k² / ‖g‖²``.
        grad_norm_sq: ``‖g‖²`` of the group's batch gradient.
        eigenvectors: the first ``eigenvectors`` selected GGN eigenvectors ``e_k``, each a
            list of tensors shaped like ``params`` (orthonormal across the whole group).
        directions: ``[K']`` indices into ``eigvals`` of the selected directions
            (ascending); ``None``: the first K'.
        hessian_eigvals: ``[k]`` the ``hessian_top_k`` largest eigenvalues of the group's
            Hessian ``∇²_θ L`` (not the GGN), descending, possibly negative; ``None``: not
            computed (``hessian_top_k = 0``, or a snapshot the probe skipped).
        hessian_min: the Hessian's smallest eigenvalue (negative where the loss is not
            locally convex), or ``None``.
        hessian_density: SLQ quadrature ``(nodes, weights)``, each ``[probes, m]``
            (:mod:`curvscope.probe.hessian.slq`), or ``None``.
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
    hessian_eigvals: Tensor | None = None
    hessian_min: float | None = None
    hessian_density: tuple[Tensor, Tensor] | None = None
    _combine: Callable[[Tensor], list[Tensor]] | None = field(default=None, repr=False)

    @property
    def gamma(self) -> Tensor:
        """``[K']`` batch directional gradients ``γ_k = e_kᵀ g = mean_n γ_nk``."""
        return self.gammas.mean(0)

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
