"""Record, during one forward pass, how each measured parameter is used.

:class:`SiteTracer` is a ``TorchFunctionMode``: it sees every torch function the model
calls. A call of ``F.linear``, ``F.conv{1,2,3}d``, ``F.embedding``, ``F.layer_norm`` or
``F.batch_norm`` whose parameters are measured becomes a :class:`Site` (its inputs and its
output, whose backpropagated vectors give the parameters' GGN factor columns without
expanding them). Any other call that takes a measured parameter and returns a tensor that
requires grad makes that parameter *generic*: its factor is taken from autograd directly.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = ["Site", "SiteTracer"]

_CONVS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}


def _linear_sig(input, weight, bias=None):
    return input, weight, bias


def _conv_sig(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return input, weight, bias, stride, padding, dilation, groups


_SIGNATURES: dict[Callable, inspect.Signature] = {
    F.linear: inspect.signature(_linear_sig),
    **{conv: inspect.signature(_conv_sig) for conv in _CONVS},
    F.embedding: inspect.signature(F.embedding),
    F.layer_norm: inspect.signature(F.layer_norm),
    F.batch_norm: inspect.signature(F.batch_norm),
}


@dataclass
class Site:
    """One call of a layer function whose parameters have a structured factor.

    Attributes:
        kind: ``"linear"``, ``"conv"``, ``"embedding"``, ``"layer_norm"`` or ``"batch_norm"``.
        params: ``{"weight": p, "bias": p}`` -- the measured parameters it takes.
        inputs: what the factor needs of the input: the input itself (linear, conv), the
            indices (embedding), or the normalised input ``x̂`` (norms); never differentiated.
        output: the call's result; the backward pass is taken with respect to it.
        options: the call's other arguments (stride, padding, ...).
    """

    kind: str
    params: dict[str, nn.Parameter]
    inputs: Tensor
    output: Tensor
    options: dict[str, Any] = field(default_factory=dict)
    versions: tuple[int, int] = (0, 0)

    def intact(self) -> bool:
        """Whether neither the input nor the output was modified in place since."""
        return (self.inputs._version, self.output._version) == self.versions


class SiteTracer(TorchFunctionMode):
    """Record the sites and generic uses of ``params`` in the calls made inside.

    Args:
        params: the measured parameters.
    """

    def __init__(self, params: list[nn.Parameter]) -> None:
        super().__init__()
        self._tracked = {id(p): p for p in params}
        self.sites: list[Site] = []
        self.generic: dict[int, str] = {}  # id(param) -> the call that made it generic
        self.activations = 0  # entries of every tensor the forward created

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        used = [p for p in _parameters((args, kwargs)) if id(p) in self._tracked]
        out = func(*args, **kwargs)
        if isinstance(out, Tensor):
            self.activations += out.numel()
        if not used or not torch.is_grad_enabled() or not _requires_grad(out):
            return out
        site = self._site(func, args, kwargs, out) if func in _SIGNATURES else None
        if site is None:
            name = getattr(func, "__name__", str(func))
            for p in used:
                self.generic.setdefault(id(p), name)
        else:
            self.sites.append(site)
        return out

    def _site(self, func: Callable, args: tuple, kwargs: dict, out: Tensor) -> Site | None:
        bound = _SIGNATURES[func].bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        params = {
            name: a[name]
            for name in ("weight", "bias")
            if isinstance(a.get(name), nn.Parameter) and id(a[name]) in self._tracked
        }
        x = a["input"]
        if func is F.linear:
            return _make("linear", params, x.detach(), out)
        if func in _CONVS:
            padding = a["padding"]
            if isinstance(padding, str):
                if padding != "valid":
                    return None
                padding = 0
            dims = _CONVS[func]
            if x.dim() != dims + 2:
                return None  # unbatched input
            options = {
                "stride": _tuple(a["stride"], dims),
                "padding": _tuple(padding, dims),
                "dilation": _tuple(a["dilation"], dims),
                "groups": int(a["groups"]),
            }
            return _make("conv", params, x.detach(), out, options)
        if func is F.embedding:
            if a["scale_grad_by_freq"] or a["sparse"]:
                return None
            return _make("embedding", params, x, out, {"padding_idx": a["padding_idx"]})
        if func is F.layer_norm:
            shape = tuple(a["normalized_shape"])
            with torch.no_grad():
                xhat = F.layer_norm(x.detach(), shape, None, None, a["eps"])
            return _make("layer_norm", params, xhat, out, {"dims": len(shape)})
        # F.batch_norm: x̂ with the statistics the call used; no running statistic moves
        if x.dim() < 2:
            return None
        with torch.no_grad():
            if a["training"] or a["running_mean"] is None:
                xhat = F.batch_norm(x.detach(), None, None, training=True, eps=a["eps"])
            else:
                rm, rv = a["running_mean"].clone(), a["running_var"].clone()
                xhat = F.batch_norm(x.detach(), rm, rv, training=False, eps=a["eps"])
        return _make("batch_norm", params, xhat, out)


def _make(
    kind: str, params: dict, inputs: Tensor, out: Tensor, options: dict | None = None
) -> Site:
    return Site(kind, params, inputs, out, options or {}, (inputs._version, out._version))


def _tuple(value: Any, dims: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * dims
    return tuple(int(v) for v in value)


def _requires_grad(value: Any) -> bool:
    if isinstance(value, Tensor):
        return value.requires_grad
    if isinstance(value, (list, tuple)):
        return any(_requires_grad(v) for v in value)
    return False


def _parameters(value: Any) -> Iterator[nn.Parameter]:
    """Every ``nn.Parameter`` in nested tuples, lists and dicts of call arguments."""
    if isinstance(value, nn.Parameter):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _parameters(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _parameters(v)
