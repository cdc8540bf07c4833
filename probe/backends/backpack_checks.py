"""What BackPACK can measure, checked before any heavy work: the model's layers and the loss."""

from __future__ import annotations

import warnings

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from curvscope.probe.backends.backpack_extension import supported_layers
from curvscope.probe.errors import (
    BatchNormTrainingError,
    UnsupportedLayerError,
    UnsupportedLossError,
)
from curvscope.probe.vivit.losses import FUNC_LOSSES, check_func_loss

__all__ = ["SUPPORTED_LOSSES", "check_loss", "prepare_model"]

SUPPORTED_LOSSES: tuple[type[nn.Module], ...] = FUNC_LOSSES
"""The losses BackPACK factors (the same classes as the ``func`` backend, fewer options)."""


def check_loss(loss_fn: nn.Module) -> None:
    """Raise :class:`UnsupportedLossError` unless BackPACK can factor this loss's Hessian."""
    check_func_loss(loss_fn)
    if isinstance(loss_fn, nn.CrossEntropyLoss) and (
        loss_fn.weight is not None or loss_fn.label_smoothing != 0.0
    ):
        raise UnsupportedLossError(
            "CrossEntropyLoss with class weights or label smoothing is not supported"
        )
    if isinstance(loss_fn, nn.BCEWithLogitsLoss) and (
        loss_fn.weight is not None or loss_fn.pos_weight is not None
    ):
        raise UnsupportedLossError("BCEWithLogitsLoss with weight or pos_weight is not supported")


def _is_container(module: nn.Module) -> bool:
    return any(True for _ in module.children())


def _check_layers(model: nn.Module) -> bool:
    """Check every layer; return whether some container has a custom ``forward``.

    Raises:
        UnsupportedLayerError: naming the first offender, and every other one in its
            message (``BatchNormTrainingError`` if BatchNorm in training mode is the only
            kind of offence).
    """
    from backpack.utils.module_classification import is_no_op

    supported = supported_layers()
    custom_forward = False
    offences: list[UnsupportedLayerError] = []
    offences += _shared(model)
    for path, module in model.named_modules():
        cls = type(module)
        if _is_container(module):
            if any(p.requires_grad for p in module.parameters(recurse=False)):
                offences.append(
                    UnsupportedLayerError(
                        path, cls.__name__, "a module with both own parameters and submodules"
                    )
                )
            if not is_no_op(module):
                custom_forward = True
            continue
        if is_no_op(module):
            continue
        if cls not in supported:
            offences.append(
                UnsupportedLayerError(
                    path,
                    cls.__name__,
                    "BackPACK has no GGN factor rule for this layer (see "
                    "curvscope.probe.backends.backpack_extension.supported_layers())",
                )
            )
        elif isinstance(module, _BatchNorm) and module.training:
            offences.append(BatchNormTrainingError(path, cls.__name__))
        elif getattr(module, "inplace", False):
            offences.append(
                UnsupportedLayerError(
                    path, cls.__name__, "in-place activations break BackPACK's backward hooks"
                )
            )
        elif isinstance(module, nn.Embedding) and (
            module.padding_idx is not None
            or module.max_norm is not None
            or module.scale_grad_by_freq
            or module.sparse
        ):
            offences.append(
                UnsupportedLayerError(
                    path,
                    cls.__name__,
                    "BackPACK supports plain embeddings only (no padding_idx, max_norm, "
                    "scale_grad_by_freq or sparse)",
                )
            )
    if offences:
        first = offences[0]
        if len(offences) == 1:
            raise first
        others = "; ".join(f"{e.layer} at '{e.path}'" for e in offences[1:])
        error = type(first)(first.path, first.layer)
        error.args = (f"{first}; also {others}. backend='func' (or 'auto') measures all of them",)
        raise error
    return custom_forward


def _shared(model: nn.Module) -> list[UnsupportedLayerError]:
    """Modules used at two places, or parameters shared by two modules (tied weights).

    BackPACK hands over one factor per module and parameter, and the Gram matrix of a
    shared parameter needs the sum of its uses' factors first.
    """
    out = []
    seen: dict[int, str] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        if id(module) in seen and any(True for _ in module.parameters(recurse=False)):
            out.append(
                UnsupportedLayerError(
                    path, type(module).__name__, f"the same module as '{seen[id(module)]}'"
                )
            )
        seen.setdefault(id(module), path)
    owners: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in owners and owners[id(param)] != name:
            path = name.rsplit(".", 1)[0] if "." in name else ""
            out.append(
                UnsupportedLayerError(
                    path, "shared parameter", f"{name} is {owners[id(param)]} (tied weights)"
                )
            )
        owners.setdefault(id(param), name)
    return out


def prepare_model(model: nn.Module) -> nn.Module:
    """Check the model and return the module whose forward pass BackPACK can follow.

    A tree of ``nn.Sequential`` containers is used as it is. A model whose own
    ``forward`` composes layers (residual additions, functional calls) is traced by
    BackPACK's converter (``torch.fx``): if the trace calls only the model's own layers
    the model is used as it is; if the converter had to insert its own modules (for
    ``+``, ``*``, ``flatten``, ...) the converted module (sharing the model's parameters)
    is returned; anything else raises :class:`UnsupportedLayerError` naming the operation.

    Raises:
        UnsupportedLayerError: an unsupported layer, BatchNorm in training mode, or a
            forward pass BackPACK cannot follow.
    """
    if not _check_layers(model):
        return model
    from backpack.custom_module.graph_utils import convert_module_to_backpack

    try:
        with warnings.catch_warnings():
            # BackPACK warns about nodes it cannot convert; the check below names them.
            warnings.filterwarnings("ignore", message="Encountered node that may break")
            converted = convert_module_to_backpack(model, debug=False)
    except Exception as err:
        raise UnsupportedLayerError(
            "", type(model).__name__, f"torch.fx could not trace its forward pass ({err})"
        ) from err
    for node in converted.graph.nodes:
        if node.op not in ("placeholder", "output", "call_module", "get_attr"):
            target = getattr(node.target, "__name__", str(node.target))
            raise UnsupportedLayerError(
                "",
                type(model).__name__,
                f"its forward pass calls {node.op} '{target}', which BackPACK cannot "
                "follow; use the nn.Module equivalent (e.g. nn.ReLU instead of F.relu)",
            )
    original = {id(m) for m in model.modules()}
    if all(id(m) in original for m in converted.modules() if m is not converted):
        return model
    _check_layers(converted)
    return converted
