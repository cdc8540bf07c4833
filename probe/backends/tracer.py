"""Record, during one forward pass, how each measured parameter is used.

:class:`SiteTracer` is a ``TorchFunctionMode``: it sees every torch function the model
calls. A call of ``F.linear``, ``F.conv{1,2,3}d``, ``F.embedding``, ``F.layer_norm`` or
``F.batch_norm`` whose parameters are measured becomes a :class:`Site` (its inputs and its
output, whose backpropagated vectors give the parameters' GGN factor columns without
expanding them). Any other call that takes a measured parameter and returns a tensor that
requires grad makes that parameter *generic*: its factor is taken from autograd directly.

A BatchNorm call hands the model a copy of its output, so that an in-place activation
after it (``nn.ReLU(inplace=True)``, as in torchvision's ResNets) leaves the recorded
output intact. Broadcast additions are followed one step: ``x + self.pos`` (a parameter
broadcast over the samples) becomes a ``"shift"`` site whose output is the sum, and a
site whose output has no sample axis (``self.wpe(torch.arange(T))``, ``[T, E]``) and is
used once, in such an addition, is *redirected* to the sum (``[N, T, E]``), where the
samples are apart.
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
_ADDS = {torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__}
_REDIRECTABLE = {"linear": 1, "embedding": 1}  # site kind -> its output's feature axes


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
    uses: int = 0  # calls that took ``output`` as an argument
    redirect: Tensor | None = None  # the broadcast sum that ``output`` went into
    redirect_version: int = 0  # the sum's version when it was made

    def intact(self) -> bool:
        """Whether neither the input nor the output was modified in place since."""
        return (self.inputs._version, self.output._version) == self.versions

    def redirected(self) -> Site:
        """This site seen at the broadcast sum its output went into (see the module doc).

        The inputs are broadcast like the output: ``[T, I]`` -> ``[N, T, I]``.
        """
        out = self.redirect
        assert out is not None
        feat = _REDIRECTABLE[self.kind]
        lead_z, lead_r = self.output.dim() - feat, out.dim() - feat
        x = self.inputs
        x = x.reshape((1,) * (lead_r - lead_z) + tuple(x.shape))
        x = x.expand(*out.shape[:lead_r], *x.shape[lead_r:])
        versions = (x._version, self.redirect_version)
        return Site(self.kind, self.params, x, out, self.options, versions)


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
        self.unseen: dict[int, str] = {}  # id(param) -> a call that used it without grad
        self._outputs: dict[int, Site] = {}  # id(site.output) -> site

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        used = [p for p in _parameters((args, kwargs)) if id(p) in self._tracked]
        fed = [self._outputs[id(t)] for t in _tensors(args) if id(t) in self._outputs]
        out = func(*args, **kwargs)
        if isinstance(out, Tensor):
            self.activations += out.numel()
        for site in fed:
            site.uses += 1
        name = getattr(func, "__name__", str(func))
        if func in _ADDS and isinstance(out, Tensor) and kwargs.get("alpha", 1) == 1:
            shift = self._broadcast_add(args, out, fed)
            if shift is not None:
                self._record(shift)
                self._generic([p for p in used if p is not shift.params["bias"]], name)
                return out
        if used and not torch.is_grad_enabled():
            for p in used:
                self.unseen.setdefault(id(p), name)
        if not used or not torch.is_grad_enabled() or not _requires_grad(out):
            return out
        site = self._site(func, args, kwargs, out) if func in _SIGNATURES else None
        if site is None:
            self._generic(used, name)
        else:
            self._record(site)
            # a measured parameter in another role (the input, say) is not in the factor
            mine = {id(p) for p in site.params.values()}
            self._generic([p for p in used if id(p) not in mine], name)
            if site.kind == "batch_norm":
                # BatchNorm is followed by ReLU(inplace=True) in most CNNs: the model gets a
                # copy, so the recorded output stays intact (the gradient is the same).
                return out.clone()
        return out

    def _generic(self, params: list[nn.Parameter], name: str) -> None:
        for p in params:
            self.generic.setdefault(id(p), f"used by {name}")

    def _record(self, site: Site) -> None:
        self.sites.append(site)
        self._outputs[id(site.output)] = site

    def _broadcast_add(self, args: tuple, out: Tensor, fed: list[Site]) -> Site | None:
        """``a + b`` with one operand broadcast to the other's shape (``out``'s)."""
        if len(args) != 2 or not all(isinstance(a, Tensor) for a in args):
            return None
        if not torch.is_grad_enabled() or not out.requires_grad:
            return None
        for small, big in (args, args[::-1]):
            if big.shape != out.shape or small.shape == out.shape or small.dim() > out.dim():
                continue
            if isinstance(small, nn.Parameter) and id(small) in self._tracked:
                shape = {"shape": tuple(small.shape)}
                return _make("shift", {"bias": small}, small.detach(), out, shape)
            site = next((st for st in fed if st.output is small), None)
            if site is None or site.kind not in _REDIRECTABLE or site.redirect is not None:
                continue
            feat = _REDIRECTABLE[site.kind]
            if small.shape[small.dim() - feat :] == out.shape[out.dim() - feat :]:
                site.redirect, site.redirect_version = out, out._version
        return None

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
    values = tuple(int(v) for v in value)
    return values * dims if len(values) == 1 else values


def _requires_grad(value: Any) -> bool:
    if isinstance(value, Tensor):
        return value.requires_grad
    if isinstance(value, (list, tuple)):
        return any(_requires_grad(v) for v in value)
    return False


def _tensors(args: tuple) -> Iterator[Tensor]:
    """The tensors among positional arguments (one level of lists and tuples)."""
    for a in args:
        if isinstance(a, Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from (t for t in a if isinstance(t, Tensor))


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
