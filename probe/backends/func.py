"""The ``func`` backend: GGN factors of any differentiable model, from autograd.

The forward pass runs as the user wrote it, under a :class:`~.tracer.SiteTracer` that
records the layer calls (sites) of the measured parameters. The loss is factored
(``H = S Sᵀ``, :mod:`curvscope.probe.vivit.losses`) and the factor's columns, packed by class,
are backpropagated in one batched backward pass (``is_grads_batched``) from the outputs
``F`` to every site, together with the loss gradient ``D = ∂L/∂F`` and the layout test of
:mod:`.layout`. Sites that pass the test give their parameters' factors in structured
form (:mod:`.site_factors`).

Everything else is *generic*: parameters used by other operations (attention's packed
projections, recurrent cells, ``x + self.pos``), sites whose samples are mixed further up
(BatchNorm in training mode) or whose output was modified in place. For those, every
column ``(k, m)`` of ``S`` and every sample's gradient cotangent is backpropagated on its
own (batched, in chunks): ``V_p = J_pᵀ S`` over the full batch, which is the GGN of the
loss the network computes -- exact also when samples are coupled (MATH.md).

Each structured parameter's batch gradient is compared with autograd's as soon as its
factor is built, and the factor is then folded into its Gram matrix at once (factors never
pile up): a parameter used where the tracer could not see it (a use outside the forward
pass, say) falls back to the generic path instead of being silently incomplete.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from curvscope.probe.backends.base import Backend, Sink
from curvscope.probe.backends.layout import check_weights, sample_layout
from curvscope.probe.backends.site_factors import factor_of, site_pieces
from curvscope.probe.backends.tracer import Site, SiteTracer
from curvscope.probe.config import ViViTConfig
from curvscope.probe.errors import BatchSizeMismatchError, CostError, UnsupportedLayerError
from curvscope.probe.vivit.factors import Factor, ReducedFactor, symmetric_gram
from curvscope.probe.vivit.losses import check_func_loss, exact_classes, loss_factor, packed_bytes

__all__ = ["MAX_GRAM_SIZE", "MAX_PACKED_BYTES", "FuncBackend"]

MAX_GRAM_SIZE = 16_384
"""Largest Gram matrix (rows) the backend builds: its eigendecomposition is O(R³)."""
MAX_PACKED_BYTES = 4 << 30
"""Largest packed loss factor ``[K, *F.shape]`` (bytes) the backend builds."""
MAX_GENERIC_BYTES = 4 << 30
"""Largest ``V`` of the generic path's parameters (bytes) the backend holds."""
GENERIC_BUDGET = 1 << 28
"""Entries the batched generic backward may hold at once (chunk size = budget / activations)."""


_INNERMOST: dict[int, list[FuncBackend]] = {}
"""Per observed model and loss, the backends observing them, innermost last: only the
innermost acts, so ``compute_snapshot`` inside an armed training step disturbs neither."""


class FuncBackend(Backend):
    """Factors from ``torch.autograd`` for any model of differentiable torch operations.

    Args:
        model: the network.
        loss_fn: a loss of :data:`~curvscope.probe.vivit.losses.FUNC_LOSSES`.
        config: curvature kind, Monte-Carlo draws and seed.
        params: the measured parameters (all groups').
    """

    name = "func"
    needs_loss_backward = False

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        config: ViViTConfig,
        params: list[nn.Parameter],
    ) -> None:
        check_func_loss(loss_fn)
        self.model = model
        self.loss_fn = loss_fn
        self.config = config
        self.params = params
        self._tracer: SiteTracer | None = None
        self._tracing = False
        self._captured: tuple[Tensor, Any, Tensor] | None = None
        self.report: dict[str, str] = {}  # parameter name -> why it took the generic path

    # -- observing the forward pass ------------------------------------------------------

    @contextmanager
    def hooks(self) -> Iterator[None]:
        tracer = SiteTracer(self.params)
        self._tracer, self._captured = tracer, None
        handles = [
            self.model.register_forward_pre_hook(self._begin_forward),
            self.model.register_forward_hook(self._end_forward, always_call=True),
            self.loss_fn.register_forward_hook(self._capture_loss),
        ]
        for module in (self.model, self.loss_fn):
            _INNERMOST.setdefault(id(module), []).append(self)
        self._start()  # a forward pre-hook registered now would miss a forward under way
        try:
            yield
        finally:
            self._stop()
            for handle in handles:
                handle.remove()
            for module in (self.model, self.loss_fn):
                owners = _INNERMOST[id(module)]
                owners.remove(self)
                if not owners:
                    del _INNERMOST[id(module)]
            self._tracer, self._captured = None, None

    def _innermost(self, module: nn.Module) -> bool:
        return _INNERMOST.get(id(module), [None])[-1] is self

    def _start(self) -> None:
        if not self._tracing and self._tracer is not None:
            self._tracer.__enter__()
            self._tracing = True

    def _stop(self) -> None:
        if self._tracing and self._tracer is not None:
            self._tracing = False
            self._tracer.__exit__(None, None, None)

    def _begin_forward(self, module: nn.Module, args: Any) -> None:
        if self._innermost(module):
            self._start()

    def _end_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        self._stop()

    def _capture_loss(self, module: nn.Module, args: Any, output: Any) -> None:
        if not self._innermost(module):
            return  # a nested snapshot's loss call (compute_snapshot inside an armed step)
        if len(args) >= 2 and isinstance(args[0], Tensor) and isinstance(output, Tensor):
            self._captured = (args[0], args[1], output)

    @property
    def captured(self) -> tuple[Tensor, Any, Tensor] | None:
        """The loss call of this pass: ``(outputs, targets, loss)``, once it was made."""
        return self._captured

    # -- the snapshot's backward passes --------------------------------------------------

    @contextmanager
    def backward(self, subset: list[int] | None, batch_size: int, sink: Sink) -> Iterator[None]:
        self._stop()
        if self._captured is None or self._tracer is None:
            raise RuntimeError(
                "the loss module given to the probe was not called on the model's outputs "
                "in this forward pass"
            )
        outputs, targets, loss = self._captured
        if outputs.dim() == 0 or outputs.shape[0] != batch_size:
            raise BatchSizeMismatchError(
                f"the loss got outputs of shape {tuple(outputs.shape)} for a batch of "
                f"{batch_size} samples (dimension 0 must be the sample)"
            )
        with warnings.catch_warnings():
            # BackPACK's full backward hooks (backend "auto") see our backward passes too
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            # operations without a batching rule (CPU flash attention's backward) are
            # looped over the columns by PyTorch: slower, exact; not the user's concern
            warnings.filterwarnings("ignore", message="There is a performance drop")
            self._compute(outputs, targets, loss, subset, sink)
        yield

    def _compute(
        self,
        outputs: Tensor,
        targets: Any,
        loss: Tensor,
        subset: list[int] | None,
        sink: Sink,
    ) -> None:
        tracer = self._tracer
        assert tracer is not None
        n = outputs.shape[0]
        m = n if subset is None else len(subset)
        cfg = self.config
        classes = cfg.mc_samples if cfg.curvature == "mc" else exact_classes(self.loss_fn, outputs)
        self._check_cost(classes, m, outputs)
        generator = torch.Generator(device=outputs.device)
        if cfg.seed is None:
            generator.seed()
        else:
            generator.manual_seed(cfg.seed)
        s = loss_factor(
            self.loss_fn, outputs, targets, subset, cfg.curvature, cfg.mc_samples, generator
        ).packed  # [K, *F.shape]
        (d,) = torch.autograd.grad(loss, outputs, retain_graph=True)  # [*F.shape]

        names = {id(p): name for name, p in self.model.named_parameters()}
        generic = dict(tracer.generic)
        self._refuse_unseen(tracer, names)
        sites: list[Site] = []
        for site in tracer.sites:
            if site.redirect is not None and site.uses == 1:
                site = site.redirected()
            if site.intact():
                sites.append(site)
            else:
                for p in site.params.values():
                    generic.setdefault(id(p), "its layer's output was modified in place")
        kept = []
        for st in sites:  # a site with one generic parameter sends all of them there
            if any(id(p) in generic for p in st.params.values()):
                for p in st.params.values():
                    generic.setdefault(id(p), "its layer's other parameter is generic")
            else:
                kept.append(st)
        sites = kept

        # Each factor is checked against autograd's batch gradient (a use the trace missed
        # would make it incomplete) and folded into its Gram matrix as soon as it is built.
        reference = _reference_grads(loss, [p for p in self.params if id(p) not in generic])
        folded: set[int] = set()

        def fold(p: nn.Parameter, factor: Factor) -> None:
            if _same(factor.grad(), reference[id(p)]):
                sink(p, factor)
                folded.add(id(p))
            else:
                generic.setdefault(id(p), "the traced layer calls miss some of its uses")

        pieces: dict[int, tuple[nn.Parameter, list]] = {}
        if sites:
            omega = check_weights(n, outputs)
            rows = omega.reshape(-1, *([1] * (outputs.dim() - 1)))
            u = d + s.sum(0)
            cotangents = torch.cat([s, d.unsqueeze(0), (rows * u).unsqueeze(0)])
            backs = _batched_grad(outputs, [st.output for st in sites], cotangents)
            del cotangents
            k = s.shape[0]
            # a parameter's factor is built after its last site, and each site's
            # backpropagated columns are let go of as soon as they are used
            remaining = Counter(id(p) for st in sites for p in st.params.values())
            for i, site in enumerate(sites):
                back, backs[i] = backs[i], None
                if back is not None:  # None: the site does not reach the outputs
                    self._site(site, back, k, omega, subset, pieces, generic)
                del back
                for p in site.params.values():
                    remaining[id(p)] -= 1
                    entry = pieces.get(id(p))
                    if remaining[id(p)] == 0 and entry is not None and id(p) not in generic:
                        fold(p, factor_of(p, pieces.pop(id(p))[1], m))
            del backs
        pieces.clear()
        for pid, ref in reference.items():  # no factor: it must have had no gradient
            if pid not in folded and not _same(torch.zeros_like(ref), ref):
                generic.setdefault(pid, "the traced layer calls miss some of its uses")

        generic_params = [p for p in self.params if id(p) in generic]
        self.report = {names.get(pid, "?"): why for pid, why in generic.items()}
        if generic_params:
            for p, factor in self._generic(outputs, s, d, subset, generic_params).values():
                sink(p, factor)

    def _why(self) -> str:
        reasons = sorted(set(self.report.values()))
        return "; ".join(reasons) if reasons else "used outside the recorded layer calls"

    def _refuse_unseen(self, tracer: SiteTracer, names: dict[int, str]) -> None:
        """Parameters used only with gradients disabled would silently contribute nothing."""
        seen = set(tracer.generic) | {id(p) for st in tracer.sites for p in st.params.values()}
        unseen = [names.get(pid, "?") for pid in tracer.unseen if pid not in seen]
        if unseen:
            raise UnsupportedLayerError(
                "",
                type(self.model).__name__,
                f"parameters {', '.join(unseen)} are used only with gradients disabled in "
                "the forward pass (torch.no_grad, or torch.utils.checkpoint with "
                "use_reentrant=True, which recomputes them in the backward pass), so their "
                "curvature cannot be traced; use checkpoint(..., use_reentrant=False)",
            )

    @staticmethod
    def _site(
        site: Site,
        back: Tensor,
        k: int,
        omega: Tensor,
        subset: list[int] | None,
        pieces: dict[int, tuple[nn.Parameter, list]],
        generic: dict[int, str],
    ) -> None:
        """The site's pieces from its backpropagated ``[K + 2, *output.shape]`` columns."""
        layout = sample_layout(back[:k].sum(0) + back[k], back[k + 1], _lead_axes(site), omega)
        if layout is not None and site.kind in ("conv", "batch_norm") and layout.kind != "axis":
            layout = None  # samples folded with frames ([N·T, C, H, W]): not structured here
        if layout is None:
            for p in site.params.values():
                generic.setdefault(id(p), "samples are mixed above its layer")
            return
        for pid, (p, piece) in site_pieces(site, layout, back[:k], back[k], subset).items():
            pieces.setdefault(pid, (p, []))[1].append(piece)

    def _check_cost(self, classes: int, m: int, outputs: Tensor) -> None:
        rows = classes * m
        size = packed_bytes(classes, outputs)
        if rows > MAX_GRAM_SIZE or size > MAX_PACKED_BYTES:
            kind = (
                f"{self.config.mc_samples} Monte-Carlo draws"
                if self.config.curvature == "mc"
                else f"exact curvature ({classes} columns per sample)"
            )
            gram_gib = rows * rows * outputs.element_size() / 2**30
            raise CostError(
                f"{kind} on {m} samples needs a Gram matrix of {rows} x {rows} "
                f"({gram_gib:.1f} GiB, eigendecomposition O(R³)) and a loss factor of "
                f"{size / 2**30:.1f} GiB; the limits are {MAX_GRAM_SIZE} rows and "
                f"{MAX_PACKED_BYTES / 2**30:.0f} GiB. Use curvature='mc' with a few "
                "mc_samples, or subsample= fewer curvature samples"
            )

    def _generic(
        self,
        outputs: Tensor,
        s: Tensor,
        d: Tensor,
        subset: list[int] | None,
        params: list[nn.Parameter],
    ) -> dict[int, tuple[nn.Parameter, ReducedFactor]]:
        """``V_p`` column by column (``[K·M, *shape]``), ``Vᵀ g_n`` and ``g`` per parameter.

        The per-sample gradients come in chunks and are folded into ``Vᵀ g_n`` at once, so
        the memory is ``V`` plus one chunk.
        """
        n = outputs.shape[0]
        samples = list(range(n)) if subset is None else subset
        k, m = s.shape[0], len(samples)
        tracer = self._tracer
        activations = max(tracer.activations if tracer else 0, outputs.numel())
        chunk = max(1, min(64, GENERIC_BUDGET // (4 * activations)))
        columns = [(ki, samples[mi]) for ki in range(k) for mi in range(m)]  # row k·M + m
        size = len(columns) * sum(p.numel() for p in params) * outputs.element_size()
        if size > MAX_GENERIC_BYTES:
            raise CostError(
                f"{len(params)} parameter tensors take the generic path ({self._why()}); "
                f"their factor V has {len(columns)} columns of "
                f"{sum(p.numel() for p in params):,} entries ({size / 2**30:.1f} GiB, "
                f"limit {MAX_GENERIC_BYTES / 2**30:.0f} GiB). Use curvature='mc' with few "
                "mc_samples, subsample= fewer curvature samples, or the model in eval mode "
                "if BatchNorm in training mode is the reason"
            )
        vs: list[Tensor | None] = [None] * len(params)
        for start, grads in _chunks(
            outputs, params, chunk, columns, lambda c: _on_rows(s[c[0]], c[1])
        ):
            for i, g in enumerate(grads):
                if g is None:
                    continue
                if vs[i] is None:
                    vs[i] = g.new_empty(len(columns), *g.shape[1:])
                vs[i][start : start + g.shape[0]] = g  # type: ignore[index]
        # per-sample gradients of the samples subsample_grad picks (all by default)
        grad_subset = self.config.grad_indices(n)
        grad_samples = list(range(n)) if grad_subset is None else grad_subset
        vtgs = [None if v is None else v.new_zeros(len(columns), len(grad_samples)) for v in vs]
        sums = [None if v is None else v.new_zeros(v.shape[1:]) for v in vs]
        # the gradient-noise spectrum needs every pair of samples: the per-sample gradients
        # are kept (N x P, as BackPACK's BatchGrad would hold them) only when it is asked for
        kept: list[list[Tensor]] = [[] for _ in params]
        for start, grads in _chunks(outputs, params, chunk, grad_samples, lambda i: _on_rows(d, i)):
            for i, g in enumerate(grads):
                v = vs[i]
                if g is None or v is None:
                    continue
                vtgs[i][:, start : start + g.shape[0]] = (
                    v.flatten(start_dim=1) @ g.flatten(start_dim=1).T
                )  # type: ignore[index]
                sums[i] += g.sum(0)  # type: ignore[operator]
                if self.config.gradient_spectrum:
                    kept[i].append(g.flatten(start_dim=1))
        if grad_subset is not None:  # the batch gradient from one more backward pass
            batch = _batched_grad(outputs, params, d.unsqueeze(0))
            sums = [None if g is None else g[0] for g in batch]
        out = {}
        for p, v, vtg, total, rows in zip(params, vs, vtgs, sums, kept, strict=True):
            if v is not None and vtg is not None and total is not None:
                gram = symmetric_gram(torch.cat(rows)) if rows else None
                out[id(p)] = (p, ReducedFactor(v, vtg, total, gram, grad_subset))
        return out  # parameters unused in this forward: no factor (zero)


def _on_rows(x: Tensor, sample: int) -> Tensor:
    """``x`` with every row but ``sample``'s zeroed."""
    out = torch.zeros_like(x)
    out[sample] = x[sample]
    return out


def _chunks(
    outputs: Tensor, params: list[nn.Parameter], chunk: int, keys: list, make
) -> Iterator[tuple[int, list[Tensor | None]]]:
    """``(start, grads)`` per chunk of ``keys``: the backward pass of ``make(key)`` each."""
    for start in range(0, len(keys), chunk):
        cot = torch.stack([make(key) for key in keys[start : start + chunk]])
        yield start, _batched_grad(outputs, params, cot)


def _batched_grad(outputs: Tensor, inputs: list[Tensor], cotangents: Tensor) -> list[Tensor | None]:
    """The backward pass of every cotangent (``[B, *outputs.shape]``) to ``inputs``.

    Batched with ``is_grads_batched`` (vmap over the backward graph); an operation without
    a batching rule falls back to one backward pass per cotangent.
    """
    try:
        return list(
            torch.autograd.grad(
                outputs,
                inputs,
                cotangents,
                retain_graph=True,
                is_grads_batched=True,
                allow_unused=True,
            )
        )
    except RuntimeError as err:
        if "batching rule" not in str(err) and "vmap" not in str(err):
            raise
    results: list[list[Tensor | None]] = [[] for _ in inputs]
    for cot in cotangents:
        grads = torch.autograd.grad(outputs, inputs, cot, retain_graph=True, allow_unused=True)
        for i, g in enumerate(grads):
            results[i].append(g)
    return [None if any(g is None for g in r) else torch.stack(r) for r in results]  # type: ignore[misc]


def _lead_axes(site: Site) -> int:
    """How many leading axes of the site's output index rows (the rest are features)."""
    out = site.output
    if site.kind in ("conv", "batch_norm"):
        return 1
    if site.kind == "layer_norm":
        return out.dim() - site.options["dims"]
    return out.dim() - 1


def _reference_grads(loss: Tensor, params: list[nn.Parameter]) -> dict[int, Tensor]:
    """Autograd's batch gradient of every parameter (zeros where it has none)."""
    if not params:
        return {}
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return {
        id(p): torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)
    }


def _same(ours: Tensor, ref: Tensor) -> bool:
    """Equal up to round-off: ``‖ours − ref‖ ≤ 0.3·√eps · (‖ours‖ + ‖ref‖)``."""
    tol = 0.3 * math.sqrt(torch.finfo(ref.dtype).eps)
    scale = float(ref.norm()) + float(ours.norm())
    return float((ours - ref).norm()) <= tol * scale + torch.finfo(ref.dtype).tiny
