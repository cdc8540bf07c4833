"""The (block) Lanczos process with full reorthogonalisation, and extreme eigenpairs from it.

For a symmetric operator ``H`` (``[dim, dim]``, given only as ``matvec: [dim] -> [dim]``),
the block Lanczos process with block size ``b`` builds an orthonormal basis
``Q = [Q_1 … Q_j]`` (``[dim, m]``) of the block Krylov space of a start block ``Q_1``
(``[dim, b]``) and the projection ``T = Qᵀ H Q`` (``[m, m]``), block tridiagonal:

- ``W = H Q_j − Q_j A_j − Q_{j−1} B_{j−1}ᵀ`` with ``A_j = Q_jᵀ H Q_j``;
- full reorthogonalisation: ``W ← W − Q (Qᵀ W)``, twice (classical Gram-Schmidt twice:
  "twice is enough", orthogonality to working precision at every step);
- ``W = Q_{j+1} B_j``: ``Q_{j+1}`` an orthonormal basis of ``W``'s columns, ``B_j`` its
  coefficients. A column of ``W`` below ``breakdown_tol · ‖H‖`` (the Krylov space is
  invariant in that direction: *breakdown*) either ends the process (``restart=False``) or
  is replaced by a random unit vector orthogonal to ``Q`` (``restart=True``: a new Krylov
  sequence starts, decoupled in ``T``, so the process can go on until ``m = dim``).

With ``b = 1`` this is the classical Lanczos recurrence, ``T`` tridiagonal with diagonal
``α`` and off-diagonal ``β``. The Ritz pairs ``(θ_i, Q s_i)`` of ``T`` approximate the
extreme eigenpairs of ``H``; the residual of one is ``‖H Q s_i − θ_i Q s_i‖ = ‖W s_i[last]‖``
(``s_i[last]`` its last block's entries; ``|β_m s_{m,i}|`` for ``b = 1``), and some eigenvalue
of ``H`` lies within that distance of ``θ_i``. When ``m = dim``, ``T`` is similar to ``H``: its
eigenvalues are ``H``'s, up to rounding.

A single start vector sees one direction of each eigenspace only: an eigenvalue of
multiplicity ``r`` shows up once until the process breaks down and restarts. A block of
``b`` vectors sees ``min(r, b)`` copies, so :func:`extreme_eigenpairs` uses ``b = k`` by
default: the ``k`` largest eigenvalues come out with their multiplicities.

Memory: the basis, ``dim · m`` entries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "BlockLanczos",
    "ExtremeEigenpairs",
    "LanczosResult",
    "Matvec",
    "extreme_eigenpairs",
    "lanczos",
]

Matvec = Callable[[Tensor], Tensor]
"""A symmetric operator: ``[dim] -> [dim]``."""

BREAKDOWN_FACTOR = 100.0
"""Default ``breakdown_tol`` in units of the dtype's machine epsilon."""


def _orthogonalise(w: Tensor, basis: Tensor) -> Tensor:
    """``w`` (rows ``[b, dim]``) minus its projection on the rows of ``basis``, twice."""
    if basis.shape[0] == 0:
        return w
    for _ in range(2):
        w = w - (w @ basis.T) @ basis
    return w


class BlockLanczos:
    """The block Lanczos process on ``matvec``, one block step at a time.

    Args:
        matvec: the symmetric operator, ``[dim] -> [dim]``.
        dim: its size.
        start: the start block ``[dim, b]`` (or a vector ``[dim]``: ``b = 1``); need not be
            orthonormal (it is orthonormalised; dependent columns are replaced by random
            ones when ``restart``, dropped otherwise).
        restart: on breakdown, go on with random vectors orthogonal to the basis (``True``)
            or stop (``False``).
        breakdown_tol: a new direction counts as zero below ``breakdown_tol · ‖H‖``
            (``‖H‖`` estimated by the largest ``‖H q‖`` so far); default
            ``BREAKDOWN_FACTOR · eps``.
        generator: for the random vectors of restarts.
        max_size: the basis size the caller will stop at (memory is reserved by doubling,
            never beyond this or ``dim``).

    Attributes:
        size: ``m``, the basis vectors processed (= matrix-vector products made).
        exhausted: no further step is possible (``m = dim``, or breakdown without restart).
        norm: the estimate of ``‖H‖``.
    """

    def __init__(
        self,
        matvec: Matvec,
        dim: int,
        start: Tensor,
        *,
        restart: bool = True,
        breakdown_tol: float | None = None,
        generator: torch.Generator | None = None,
        max_size: int | None = None,
    ) -> None:
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        block = start.reshape(dim, -1).T  # rows: [b, dim]
        if not block.is_floating_point():
            raise TypeError("the start block must be floating point")
        self.matvec = matvec
        self.dim = dim
        self.restart = restart
        self.generator = generator
        self.dtype, self.device = block.dtype, block.device
        eps = torch.finfo(self.dtype).eps
        self.breakdown_tol = BREAKDOWN_FACTOR * eps if breakdown_tol is None else breakdown_tol
        self.norm = 0.0
        self.size = 0
        self.max_size = dim if max_size is None else min(dim, max_size)
        self.exhausted = False
        self._rows = torch.empty(0, dim, dtype=self.dtype, device=self.device)
        self._blocks: list[tuple[int, int]] = []  # (first row, size) of each processed block
        self._diag: list[Tensor] = []  # A_j [b_j, b_j]
        self._off: list[Tensor] = []  # B_j [b_{j+1}, b_j]: coupling of block j+1 to block j
        self._residual_gram: Tensor | None = None  # Wᵀ W of the last block's residual
        scale = float(block.norm(dim=1).max()) if block.numel() else 0.0
        nxt = self._new_block(block, min(block.shape[0], dim), scale)
        self._pending = nxt  # the next block to process, [b', dim]
        if nxt.shape[0] == 0:
            self.exhausted = True

    # ------------------------------------------------------------------ the process

    def step(self) -> None:
        """Process the pending block: ``b`` products, ``A_j``, the residual, the next block."""
        if self.exhausted:
            raise RuntimeError("the Lanczos process is exhausted")
        q = self._pending
        first = self.size
        self._append(q)
        hq = torch.stack([self.matvec(row) for row in q])  # [b, dim]
        self.norm = max(self.norm, float(hq.norm(dim=1).max()))
        a = hq @ q.T
        a = 0.5 * (a + a.T)
        w = hq - a @ q
        if self._off:
            prev_first, prev_size = self._blocks[-1]
            w = w - self._off[-1] @ self._rows[prev_first : prev_first + prev_size]
        w = _orthogonalise(w, self._rows[: first + q.shape[0]])
        self._blocks.append((first, q.shape[0]))
        self._diag.append(a)
        self._residual_gram = w @ w.T
        self.size = first + q.shape[0]
        room = self.dim - self.size
        nxt = self._new_block(w, min(q.shape[0], room), self.norm)
        if nxt.shape[0] == 0:
            self.exhausted = True
            self._pending = nxt
            return
        self._off.append(nxt @ w.T)  # B_j = Q_{j+1}ᵀ W, [b_{j+1}, b_j]
        self._pending = nxt

    def _append(self, rows: Tensor) -> None:
        need = self.size + rows.shape[0]
        if need > self._rows.shape[0]:
            capacity = max(need, min(self.max_size, max(2 * self._rows.shape[0], 16)))
            grown = torch.empty(capacity, self.dim, dtype=self.dtype, device=self.device)
            grown[: self.size] = self._rows[: self.size]
            self._rows = grown
        self._rows[self.size : need] = rows

    def _new_block(self, w: Tensor, size: int, scale: float) -> Tensor:
        """An orthonormal basis ``[b', dim]`` (``b' ≤ size``) of ``w``'s rows, ⊥ the basis.

        ``w`` is already orthogonal to the basis. Directions below ``breakdown_tol · scale``
        are dropped, and, when ``restart``, made up for by random ones.
        """
        basis = self._rows[: self.size]
        if size == 0:
            return w[:0]
        kept = w[:0]
        if w.shape[0] == 1 and scale > 0:  # b = 1: plain normalisation (β = ‖w‖ ≥ 0)
            norm = float(w.norm())
            if norm > self.breakdown_tol * scale:
                kept = w / norm
        elif w.shape[0] and scale > 0:
            _, s, vh = torch.linalg.svd(w.T, full_matrices=False)  # w.T = U S Vh
            good = int((s > self.breakdown_tol * scale).sum())
            good = min(good, size)
            if good:
                u = (w.T @ vh[:good].T / s[:good]).T  # [good, dim]
                u = _orthogonalise(u, basis)
                kept = torch.linalg.qr(u.T).Q.T
                # signs: a positive diagonal of B = Q_{j+1}ᵀ W (β ≥ 0 for b = 1)
                signs = torch.sign(torch.diagonal(kept @ w[:good].T))
                kept = kept * torch.where(signs == 0, 1.0, signs).unsqueeze(1)
        if kept.shape[0] == size or not self.restart:
            return kept
        missing = size - kept.shape[0]
        rand = torch.randn(
            missing, self.dim, generator=self.generator, dtype=self.dtype, device=self.device
        )
        rand = _orthogonalise(rand, torch.cat([basis, kept]))
        fresh = torch.linalg.qr(rand.T).Q.T
        return torch.cat([kept, fresh])

    # ------------------------------------------------------------------ results

    @property
    def basis(self) -> Tensor:
        """``Q``, ``[dim, m]`` (a view)."""
        return self._rows[: self.size].T

    def projection(self) -> Tensor:
        """``T = Qᵀ H Q``, ``[m, m]``, block tridiagonal."""
        t = torch.zeros(self.size, self.size, dtype=self.dtype, device=self.device)
        for j, ((first, size), a) in enumerate(zip(self._blocks, self._diag, strict=True)):
            t[first : first + size, first : first + size] = a
            if j + 1 < len(self._blocks):
                nfirst, nsize = self._blocks[j + 1]
                b = self._off[j]  # [b_{j+1}, b_j]
                t[nfirst : nfirst + nsize, first : first + size] = b
                t[first : first + size, nfirst : nfirst + nsize] = b.T
        return t

    def ritz(self) -> tuple[Tensor, Tensor, Tensor]:
        """Ritz values ``θ`` ``[m]`` (ascending), the eigenvectors ``S`` of ``T`` ``[m, m]``,
        and the residual norms ``‖H Q s_i − θ_i Q s_i‖`` ``[m]``."""
        theta, s = torch.linalg.eigh(self.projection())
        first, size = self._blocks[-1]
        last = s[first : first + size]  # [b, m]
        gram = self._residual_gram
        assert gram is not None
        res = (last * (gram @ last)).sum(0).clamp_min(0).sqrt()
        return theta, s, res


class LanczosResult(NamedTuple):
    """The tridiagonal ``T`` of a single-vector Lanczos run and its basis.

    ``alpha`` ``[m]`` (diagonal), ``beta`` ``[m−1]`` (off-diagonal, ``≥ 0``), ``basis`` ``Q``
    ``[dim, m]`` with ``Qᵀ H Q = T``.
    """

    alpha: Tensor
    beta: Tensor
    basis: Tensor


def _dtype_device(
    like: Tensor | None, dtype: torch.dtype | None, device: torch.device | str | None
) -> tuple[torch.dtype, torch.device]:
    if dtype is None:
        dtype = like.dtype if like is not None else torch.get_default_dtype()
    if device is None:
        device = like.device if like is not None else torch.device("cpu")
    return dtype, torch.device(device)


def lanczos(
    matvec: Matvec,
    dim: int,
    steps: int,
    *,
    v0: Tensor | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    breakdown_tol: float | None = None,
) -> LanczosResult:
    """``steps`` steps of Lanczos with full reorthogonalisation from ``v0``.

    Args:
        matvec: the symmetric operator ``[dim] -> [dim]``.
        dim: its size; steps: the most steps (clipped to ``dim``).
        v0: the start vector ``[dim]`` (normalised here); default a standard normal draw
            from ``generator``.
        dtype, device: of the vectors (default ``v0``'s, else torch's default and CPU).
        breakdown_tol: see :class:`BlockLanczos`.

    Returns:
        ``(alpha [m], beta [m−1], Q [dim, m])``; ``m < steps`` after breakdown (the Krylov
        space of ``v0`` is invariant: ``T``'s eigenvalues are exact eigenvalues of ``H``
        and ``v0``'s spectral measure is exactly ``T``'s).
    """
    dtype, device = _dtype_device(v0, dtype, device)
    if v0 is None:
        v0 = torch.randn(dim, generator=generator, dtype=dtype, device=device)
    v0 = v0.to(dtype=dtype, device=device)
    if float(v0.norm()) == 0:
        raise ValueError("the start vector is zero")
    proc = BlockLanczos(
        matvec, dim, v0, restart=False, breakdown_tol=breakdown_tol, generator=generator
    )
    for _ in range(min(steps, dim)):
        if proc.exhausted:
            break
        proc.step()
    m = proc.size
    alpha = torch.stack([a[0, 0] for a in proc._diag]) if m else v0[:0]
    beta = torch.stack([b[0, 0] for b in proc._off[: m - 1]]) if m > 1 else v0[:0]
    # β_j = ‖w_j‖ ≥ 0 by the sign convention of the basis
    return LanczosResult(alpha, beta, proc.basis)


@dataclass(frozen=True)
class ExtremeEigenpairs:
    """The ``k`` largest eigenpairs and the smallest one, from Ritz pairs.

    Attributes:
        eigvals: ``[k]``, descending; eigvecs: ``[dim, k]`` (orthonormal columns).
        residuals: ``[k]``, ``‖H y − θ y‖`` of each.
        min_eigval: ``[]`` (a 0-dim tensor); min_eigvec: ``[dim]``; min_residual: ``[]``.
        converged: the requested ones (``which``) met the residual test.
        steps: basis vectors built (``m``); matvecs: products made.
    """

    eigvals: Tensor
    eigvecs: Tensor
    residuals: Tensor
    min_eigval: Tensor
    min_eigvec: Tensor
    min_residual: Tensor
    converged: bool
    steps: int
    matvecs: int


def _converged(theta: Tensor, res: Tensor, tol: float, floor: float) -> bool:
    return bool((res <= torch.clamp(tol * theta.abs(), min=floor)).all())


def extreme_eigenpairs(
    matvec: Matvec,
    dim: int,
    k: int = 1,
    *,
    which: Literal["both", "largest", "smallest"] = "both",
    tol: float = 1e-8,
    max_steps: int | None = None,
    block_size: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> ExtremeEigenpairs:
    """The ``k`` algebraically largest eigenpairs of ``H`` and its smallest one, by Lanczos.

    Restart-free: one block Lanczos run (full reorthogonalisation) grows until the
    requested Ritz pairs pass the residual test ``‖H y_i − θ_i y_i‖ ≤ tol · |θ_i|`` (then
    ``|θ_i − λ| ≤ tol · |θ_i|`` for an eigenvalue ``λ``), or reach ``max_steps`` basis
    vectors, or ``dim`` (then the result is exact up to rounding). A residual below
    ``BREAKDOWN_FACTOR · eps · ‖H‖``, the resolution of the arithmetic, also passes (so that
    a zero eigenvalue, or a ``tol`` finer than the dtype, can converge). The test runs
    after every block while ``m < 20 b``, then whenever ``m`` has grown by 5 %.

    Args:
        matvec: the symmetric operator ``[dim] -> [dim]``.
        dim: its size; k: how many of the largest (clipped to ``dim``).
        which: whose residuals decide convergence: ``"both"`` (the ``k`` largest and the
            smallest), ``"largest"`` or ``"smallest"``; all are returned either way.
        tol: relative residual tolerance.
        max_steps: the most basis vectors (= products), default ``dim`` (at least ``k + 1``;
            the last block may overshoot it by ``b − 1``); memory ``dim · max_steps`` entries.
        block_size: vectors per block, default ``k`` (``1`` for ``which="smallest"``): the
            ``k`` largest with their multiplicities (see the module docstring).
        generator: the random start block (and restarts); dtype, device: of the vectors
            (default torch's default dtype, CPU).

    Returns:
        :class:`ExtremeEigenpairs`.
    """
    if which not in ("both", "largest", "smallest"):
        raise ValueError(f"which must be 'both', 'largest' or 'smallest', not {which!r}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if tol <= 0:
        raise ValueError(f"tol must be positive, got {tol}")
    dtype, device = _dtype_device(None, dtype, device)
    k = min(k, dim)
    b = block_size or (1 if which == "smallest" else k)
    b = max(1, min(b, dim))
    need = min(dim, k + (which != "largest"))  # Ritz values wanted at least
    limit = dim if max_steps is None else max(need, min(max_steps, dim))
    start = torch.randn(dim, b, generator=generator, dtype=dtype, device=device)
    proc = BlockLanczos(
        matvec, dim, start, restart=True, generator=generator, max_size=limit + b - 1
    )
    eps = torch.finfo(dtype).eps
    next_check = 0
    while True:
        proc.step()
        done = proc.exhausted or proc.size >= limit
        if proc.size < need and not done:
            continue
        if proc.size < next_check and not done:
            continue
        theta, s, res = proc.ritz()
        floor = BREAKDOWN_FACTOR * eps * max(proc.norm, float(theta.abs().max()))
        kk = min(k, proc.size)
        top = torch.arange(proc.size - 1, proc.size - 1 - kk, -1, device=theta.device)
        checks = []
        if which != "smallest":
            checks.append(_converged(theta[top], res[top], tol, floor))
        if which != "largest":
            checks.append(_converged(theta[:1], res[:1], tol, floor))
        converged = all(checks)
        if converged or done:
            break
        next_check = proc.size + max(1, proc.size // 20) if proc.size >= 20 * b else 0
    vecs = proc.basis @ s[:, torch.cat([top, top.new_zeros(1)])]  # only the k + 1 wanted
    return ExtremeEigenpairs(
        eigvals=theta[top],
        eigvecs=vecs[:, :-1],
        residuals=res[top],
        min_eigval=theta[0],
        min_eigvec=vecs[:, -1],
        min_residual=res[0],
        converged=converged,
        steps=proc.size,
        matvecs=proc.size,
    )
