"""Hessian-vector products of a batch loss, restricted to one parameter group.

``H = ∇²_θ L`` with ``L = loss_fn(outputs(model(inputs)), targets)`` and ``θ`` the group's
parameters flattened and concatenated in the order given (``P`` entries). The Hessian is of
the loss *as the model computes it now*: in its current mode (BatchNorm in training mode
normalises with the batch's statistics, so the samples are coupled; dropout draws one set
of masks, the same for every product), outside ``autocast``.

Two ways to compute ``H v``, both exact (they agree to rounding). Both run the forward
pass through ``functional_call`` on copies of the buffers (running statistics never move)
and from the random state as it was at construction (the same dropout masks every time):

- ``"double-backward"``: one forward pass and the gradient with ``create_graph=True``,
  built once; every product is one more backward pass through that retained graph
  (``torch.autograd.grad(g, θ, v)``). It keeps the graph of the gradient alive between
  products.
- ``"forward-over-reverse"``: ``torch.func.jvp`` of ``torch.func.grad`` of the loss as a
  function of the group. Every product re-runs the forward pass; nothing stays alive
  between products, but each product's own peak is higher.

Measured on CPU (torch 2.14, one thread; 3c3d at N = 32, a CNN with BatchNorm in training
mode, MLPs), double backward was 1.5-4x faster per product and peaked lower, so ``"auto"``
takes it, and falls back to forward-over-reverse if it fails (an operation without a
double backward, or a gradient autograd cannot differentiate, see below). Attention runs
with PyTorch's math kernel inside (the fused kernels have neither second derivative).
Double backward refuses a gradient that autograd cannot differentiate (a loss linear in a
parameter looks the same; ``"auto"`` then takes forward-over-reverse). Beware custom
autograd Functions whose backward is not itself differentiable (``once_differentiable``,
detached maths): PyTorch differentiates through them *silently wrongly*;
forward-over-reverse refuses a Function without ``jvp``.

Side effects: none. The model's buffers and the random state are restored, ``p.grad`` is
never written (``torch.autograd.grad`` does not accumulate), modes are left as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp

from curvscope.probe.collector import Inputs, OutputsAdapter, cuda_devices, snapshot_pass
from curvscope.probe.precision import no_autocast

__all__ = ["GroupHessian", "HVPMethod"]

HVPMethod = Literal["auto", "double-backward", "forward-over-reverse"]
"""How :class:`GroupHessian` computes its products (see the module docstring)."""

_METHODS = ("auto", "double-backward", "forward-over-reverse")


def _call(module: Callable[..., Any], inputs: Inputs) -> Any:
    if isinstance(inputs, dict):
        return module(**inputs)
    if isinstance(inputs, (tuple, list)):
        return module(*inputs)
    return module(inputs)


@contextmanager
def _math_attention() -> Iterator[None]:
    """PyTorch's math kernel for ``scaled_dot_product_attention`` (twice differentiable)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - torch < 2.3
        yield
        return
    with sdpa_kernel([SDPBackend.MATH]):
        yield


class GroupHessian:
    """The Hessian of the batch loss w.r.t. one parameter group, as a matrix-free operator.

    Args:
        model: the network, in the mode its Hessian is wanted in.
        loss_fn: the loss module (any twice-differentiable scalar loss).
        inputs: a tensor ``[N, *]``, a tuple of tensors (positional arguments) or a dict
            (keyword arguments); targets: what ``loss_fn`` takes as its second argument.
        params: the group, trainable parameters of ``model``; ``θ`` is their flattened
            entries concatenated in this order (``P = Σ numel``).
        outputs: adapter from the model's return value to the loss input.
        method: ``"auto"``, ``"double-backward"`` or ``"forward-over-reverse"``.

    Attributes:
        dim: ``P``. loss: the batch loss (float). matvecs: products computed so far.
        method: the method in use (after ``"auto"`` has chosen).
        dtype, device: of the group's first parameter (vectors are expected in them).

    The constructor runs one forward pass (and, for double backward, the gradient). The
    operator is the Hessian at the parameters of that moment: do not change them in place
    while using it (double backward then raises autograd's version error).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], Tensor],
        inputs: Inputs,
        targets: Any,
        params: Sequence[nn.Parameter],
        *,
        outputs: OutputsAdapter | None = None,
        method: HVPMethod = "auto",
    ) -> None:
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, not {method!r}")
        self.params = list(params)
        if not self.params:
            raise ValueError("the parameter group is empty")
        self.model = model
        self.loss_fn = loss_fn
        self.inputs = inputs
        self.targets = targets
        self.outputs = outputs
        self.dim = sum(p.numel() for p in self.params)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self.matvecs = 0
        self._devices = cuda_devices(model)
        self._fallback: str | None = None
        if method == "auto":
            method, self._fallback = "double-backward", "forward-over-reverse"
        self.method: str = method
        self._rng = torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in self._devices]
        names = {id(p): n for n, p in model.named_parameters()}
        missing = [i for i, p in enumerate(self.params) if id(p) not in names]
        if missing:
            raise ValueError(f"group entries {missing} are not parameters of the model")
        self._names = [names[id(p)] for p in self.params]
        self._primals = {n: p.detach() for n, p in zip(self._names, self.params, strict=True)}
        self._buffers = {n: b.detach() for n, b in model.named_buffers()}
        self._graph: tuple[list[Tensor], list[int]] | None = None
        try:
            self.loss = self._setup()
        except (RuntimeError, NotImplementedError):
            if self._fallback is None:
                raise
            self._switch()

    # ------------------------------------------------------------------ public surface

    def matvec(self, v: Tensor) -> Tensor:
        """``H v``: ``v`` ``[P]`` -> ``[P]`` (the group's dtype and device)."""
        if v.shape != (self.dim,):
            raise ValueError(f"expected a vector of shape [{self.dim}], got {tuple(v.shape)}")
        pieces = self._split(v.to(dtype=self.dtype, device=self.device))
        try:
            out = self._product(pieces)
        except (RuntimeError, NotImplementedError):
            if self._fallback is None:
                raise
            self._switch()
            out = self._product(pieces)
        self._fallback = None  # the method works: keep it
        self.matvecs += 1
        return torch.cat([t.reshape(-1) for t in out])

    __call__ = matvec

    def dense(self) -> Tensor:
        """The whole Hessian ``[P, P]`` by ``P`` products with the unit vectors (for tests)."""
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        return torch.stack([self.matvec(e) for e in eye], dim=1)

    def release(self) -> None:
        """Free the retained graph (double backward); later products rebuild it."""
        self._graph = None

    # ------------------------------------------------------------------ internals

    def _switch(self) -> None:
        """``"auto"``: the preferred method cannot differentiate this model; take the other."""
        assert self._fallback is not None
        self.method, self._fallback = self._fallback, None
        self._graph = None
        self.loss = self._setup()

    def _split(self, v: Tensor) -> list[Tensor]:
        pieces, i = [], 0
        for p in self.params:
            pieces.append(v[i : i + p.numel()].view_as(p))
            i += p.numel()
        return pieces

    @contextmanager
    def _same_pass(self) -> Iterator[None]:
        """The random state of construction, autocast off, math attention, snapshot pass."""
        with torch.random.fork_rng(devices=self._devices):
            cpu, cuda = self._rng
            torch.set_rng_state(cpu)
            for d, state in zip(self._devices, cuda, strict=True):
                torch.cuda.set_rng_state(state, d)
            with no_autocast(), _math_attention(), snapshot_pass():
                yield

    def _loss(self, group: dict[str, Tensor], targets: Any = None) -> Tensor:
        """The batch loss with ``group`` (name -> tensor) in place of those parameters.

        The buffers are fresh copies on every call, so running statistics never move.
        ``targets``: in place of the batch's (the same values; see :meth:`_product`).
        """
        state = {**group, **{n: b.clone() for n, b in self._buffers.items()}}
        out = _call(
            lambda *args, **kwargs: functional_call(self.model, state, args, kwargs), self.inputs
        )
        if self.outputs is not None:
            out = self.outputs(out)
        return self.loss_fn(out, self.targets if targets is None else targets)

    def _setup(self) -> float:
        """One forward pass: the loss and, for double backward, the gradient's graph."""
        if self.method == "double-backward":
            with self._same_pass():
                loss = self._loss({})
                grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
            # an unused parameter (no gradient) has zero rows; a gradient that autograd cannot
            # differentiate is refused: a custom operation without a double backward
            # (once_differentiable) looks just like a gradient that is constant in θ
            flat = [i for i, g in enumerate(grads) if g is not None and not g.requires_grad]
            if flat:
                raise RuntimeError(
                    f"the gradients of group entries {flat} are not differentiable: an "
                    "operation without a double backward, or a loss linear in them; use "
                    "method='forward-over-reverse'"
                )
            used = [i for i, g in enumerate(grads) if g is not None]
            self._graph = ([grads[i] for i in used], used)
            return float(loss.detach())
        with torch.no_grad(), self._same_pass():
            return float(self._loss(self._primals).detach())

    def _product(self, pieces: list[Tensor]) -> list[Tensor]:
        if self.method == "forward-over-reverse":
            primals: tuple[Any, ...] = (self._primals,)
            tangents: tuple[Any, ...] = (dict(zip(self._names, pieces, strict=True)),)
            if isinstance(self.targets, Tensor) and self.targets.is_floating_point():
                # floating targets enter as primals with a materialised zero tangent: torch's
                # forward derivative of mse_loss's backward fails on the implicit zero
                # tangent of a constant target ("ZeroTensors are immutable", torch 2.14)
                primals += (self.targets,)
                tangents += (torch.zeros_like(self.targets),)
            with self._same_pass():
                _, hv = jvp(grad(self._loss), primals, tangents)
            return [hv[n].detach() for n in self._names]
        if self._graph is None:
            self.loss = self._setup()
        grads, used = self._graph  # type: ignore[misc]
        out = [torch.zeros_like(p) for p in self.params]
        if not grads:
            return out
        hv = torch.autograd.grad(
            grads,
            self.params,
            grad_outputs=[pieces[i] for i in used],
            retain_graph=True,
            allow_unused=True,
        )
        return [o if h is None else h.detach() for o, h in zip(out, hv, strict=True)]
