"""BackPACK glue: one backward pass that hands every parameter's :class:`Factor` to a sink.

BackPACK's ``SqrtGGN{Exact,MC}`` extensions backpropagate the symmetric factor of the
loss Hessian through the network and, per parameter, expand it into ``V_p``
(``[C, M, *p.shape]``). :class:`FactorExtension` keeps BackPACK's backpropagation and
replaces only the per-parameter step: each parameter's factor is built in the form chosen
by the layer's handler (:data:`LAYER_HANDLERS`, the per-layer maths lives in
:mod:`curvscope.probe.vivit.factors`) and passed straight to ``sink(param, factor)``, so that the
caller can fold it into the Gram matrix and drop it. Nothing is stored on the parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from backpack import hook_run_extensions, hook_store_io, memory_cleanup
from backpack.extensions import SqrtGGNExact, SqrtGGNMC
from backpack.extensions.secondorder.sqrt_ggn import SqrtGGN
from backpack.utils.module_classification import is_no_op
from torch import Tensor, nn

from curvscope.probe.vivit.conv_factors import conv_bias_factor, conv_weight_factor
from curvscope.probe.vivit.factors import (
    ExpandedFactor,
    Factor,
    FactorForm,
    OuterProductFactor,
    current_form,
    factor_form,
    prefer_structured,
)

__all__ = [
    "LAYER_HANDLERS",
    "FactorExtension",
    "FactorForm",
    "Sink",
    "attach_hooks",
    "factor_form",
    "supported_layers",
]

Sink = Callable[[nn.Parameter, Factor], None]
_SAVEFIELD = "_curvscope_unused"


def _linear_factor(
    ext: SqrtGGN,
    module: nn.Linear,
    param_name: str,
    g_out: Tensor,
    backproped: Tensor,
) -> Factor | None:
    """Structured factor of ``nn.Linear`` (extra input dimensions become positions T)."""
    form = current_form()
    if form in ("expanded", "backpack"):
        return None
    a = module.input0
    n, in_dim, out_dim = a.shape[0], module.in_features, module.out_features
    t = a[0].numel() // in_dim
    c, m = backproped.shape[:2]
    auto = form == "auto" and param_name == "weight"
    if auto and not prefer_structured(c * m, t, n, out_dim, in_dim, 1, m):
        return None
    return OuterProductFactor(
        backproped.reshape(c, m, t, out_dim),
        g_out.reshape(n, t, out_dim),
        a.reshape(n, t, in_dim) if param_name == "weight" else None,
        ext.get_subsampling(),
        getattr(module, param_name).shape,
    )


def _conv_factor(
    ext: SqrtGGN,
    module: nn.Conv1d | nn.Conv2d | nn.Conv3d,
    param_name: str,
    g_out: Tensor,
    backproped: Tensor,
) -> Factor | None:
    """Factor of a convolution's weight or bias (:mod:`curvscope.probe.vivit.conv_factors`)."""
    form = current_form()
    if form == "backpack":
        return None
    if param_name == "bias":
        return conv_bias_factor(module, backproped, g_out, ext.get_subsampling())
    return conv_weight_factor(module, backproped, g_out, ext.get_subsampling(), form)


LayerHandler = Callable[[SqrtGGN, Any, str, Tensor, Tensor], "Factor | None"]
LAYER_HANDLERS: dict[type[nn.Module], LayerHandler] = {
    nn.Linear: _linear_factor,
    nn.Conv1d: _conv_factor,
    nn.Conv2d: _conv_factor,
    nn.Conv3d: _conv_factor,
}
"""Layers with their own factor forms. A handler returns ``None`` to fall back to
BackPACK's generic expansion of ``V_p`` (and of the per-sample gradients)."""


class FactorExtension:
    """Build the BackPACK extension whose parameter step feeds ``sink``.

    Args:
        curvature: ``"exact"`` (``SqrtGGNExact``) or ``"mc"`` (``SqrtGGNMC``).
        mc_samples: Monte-Carlo factors per sample for ``"mc"``.
        subsampling: batch indices of the curvature samples (``None``: all).
        sink: called as ``sink(param, factor)`` for each parameter it accepts.
        accepts: the parameters to compute factors for (others are skipped at no cost).
    """

    def __init__(
        self,
        curvature: str,
        mc_samples: int,
        subsampling: list[int] | None,
        sink: Sink,
        accepts: Callable[[nn.Parameter], bool],
    ) -> None:
        if curvature == "exact":
            self.backpack_extension: SqrtGGN = SqrtGGNExact(subsampling=subsampling)
        else:
            self.backpack_extension = SqrtGGNMC(mc_samples=mc_samples, subsampling=subsampling)
        self.backpack_extension.savefield = _SAVEFIELD
        self._sink = sink
        self._accepts = accepts
        for module_cls, module_ext in _module_extensions(self.backpack_extension).items():
            for param_name in _param_names(module_ext):
                setattr(
                    module_ext, param_name, self._param_step(module_cls, module_ext, param_name)
                )

    def _param_step(
        self, module_cls: type[nn.Module], module_ext: Any, param_name: str
    ) -> Callable:
        expand = getattr(module_ext, param_name)
        handler = LAYER_HANDLERS.get(module_cls)

        def step(ext: SqrtGGN, module: nn.Module, g_inp: Any, g_out: Any, backproped: Tensor):
            param = getattr(module, param_name)
            if not self._accepts(param):
                return None
            factor = None
            if handler is not None:
                factor = handler(ext, module, param_name, g_out[0], backproped)
            if factor is None:
                grad_batch = module_ext.derivatives.param_mjp(
                    param_name, module, g_inp, g_out, g_out[0], sum_batch=False
                )
                factor = ExpandedFactor(expand(ext, module, g_inp, g_out, backproped), grad_batch)
            self._sink(param, factor)
            return None

        return step


def _module_extensions(ext: SqrtGGN) -> dict[type[nn.Module], Any]:
    """BackPACK keeps its layer -> module-extension map private; read it in one place."""
    try:
        return ext._BackpropExtension__module_extensions  # type: ignore[attr-defined]
    except AttributeError as err:  # pragma: no cover - guards a BackPACK refactoring
        raise RuntimeError("this BackPACK version does not expose its module map") from err


def _param_names(module_ext: Any) -> list[str]:
    return list(getattr(module_ext, "_ModuleExtension__params", []))


def supported_layers() -> frozenset[type[nn.Module]]:
    """Module classes BackPACK's ``SqrtGGN`` extensions (and so the probe) can handle."""
    return frozenset(_module_extensions(SqrtGGNExact()))


def _guarded(failures: list[Exception]) -> Callable[[nn.Module, Any, Any], None]:
    """BackPACK's backward hook, recording its first error in ``failures`` instead of raising.

    An error raised in a backward hook aborts the whole backward pass, so it would reach
    the training loop and leave its gradients incomplete; recorded, it is raised by
    whoever ran the pass, after the pass (later hooks of a failed pass do nothing).
    """

    def hook(module: nn.Module, g_inp: Any, g_out: Any) -> None:
        if failures:
            return
        try:
            hook_run_extensions(module, g_inp, g_out)
        except Exception as err:
            failures.append(err)

    return hook


@contextmanager
def attach_hooks(*modules: nn.Module, failures: list[Exception] | None = None) -> Iterator[None]:
    """Install BackPACK's IO and backward hooks on ``modules`` (recursively), then remove them.

    Unlike ``backpack.extend`` this leaves nothing behind: the hook handles are ours, and
    the stored inputs/outputs are deleted on exit. Modules already extended by the user
    with ``backpack.extend`` keep their own hooks and are not hooked twice. With a
    ``failures`` list, errors of the backward hooks are appended to it instead of raised
    (:func:`_guarded`).
    """
    run_extensions = hook_run_extensions if failures is None else _guarded(failures)
    token = object()
    handles: list[torch.utils.hooks.RemovableHandle] = []
    hooked: list[nn.Module] = []

    def store_io(module: nn.Module, inputs: Any, output: Any) -> None:
        if _INNERMOST.get(id(module), [None])[-1] is token:
            hook_store_io(module, inputs, output)

    def run(module: nn.Module, g_inp: Any, g_out: Any) -> None:
        if _INNERMOST.get(id(module), [None])[-1] is token:
            run_extensions(module, g_inp, g_out)

    for root in modules:
        for module in root.modules():
            if is_no_op(module) or getattr(module, "_backpack_extend", False):
                continue
            handles.append(module.register_forward_hook(store_io))
            handles.append(module.register_full_backward_hook(run))
            hooked.append(module)
            _INNERMOST.setdefault(id(module), []).append(token)
    # IO another set of hooks stored (a Probe armed for the loop's next backward pass)
    # outlives this pass: BackPACK's cleanup deletes it, so it is put back afterwards.
    stored = {m: {k: v for k, v in vars(m).items() if _is_io(k)} for m in hooked}
    stored = {m: io for m, io in stored.items() if io}
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module in hooked:
            owners = _INNERMOST[id(module)]
            owners.remove(token)
            if not owners:
                del _INNERMOST[id(module)]
            memory_cleanup(module)
        for module, io in stored.items():  # what other hooks (an armed Probe) had stored
            for name, value in io.items():
                setattr(module, name, value)


_INNERMOST: dict[int, list[object]] = {}
"""Per hooked module, the :func:`attach_hooks` calls that hooked it, innermost last: only
the innermost one's hooks act, so that ``compute_snapshot`` inside a training step whose
Probe is armed neither runs BackPACK twice nor disturbs the Probe's pass."""


def _is_io(name: str) -> bool:
    """BackPACK's stored inputs and output (``input0``, ``input1``, ..., ``output``)."""
    return name == "output" or (name.startswith("input") and name[5:].isdigit())


def release_results(*modules: nn.Module) -> None:
    """Remove the (empty) result attribute BackPACK sets on every parameter it visits."""
    for module in modules:
        for param in module.parameters():
            if hasattr(param, _SAVEFIELD):
                delattr(param, _SAVEFIELD)
