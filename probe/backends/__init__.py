"""Curvature backends: the only modules that import BackPACK or do autograd plumbing.

``"backpack"`` (:class:`~.backpack.BackpackBackend`) is the fast path for the layers
BackPACK supports; ``"func"`` (:class:`~.func.FuncBackend`) handles any model made of
differentiable torch operations. :func:`make_backend` picks one for a
:class:`~curvscope.probe.ViViTConfig`'s ``backend`` (``"auto"``: BackPACK where it can
follow the model, loss and forward pass, otherwise ``func``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from curvscope.probe.backends.base import Backend, BackendName, Sink
from curvscope.probe.config import ViViTConfig
from curvscope.probe.errors import ConfigError, CurvscopeError

if TYPE_CHECKING:
    from curvscope.probe.backends.backpack import BackpackBackend

__all__ = ["Backend", "BackendName", "Sink", "make_backend"]


def make_backend(
    model: nn.Module,
    loss_fn: nn.Module,
    config: ViViTConfig,
    params: list[nn.Parameter],
    *,
    in_loop: bool = False,
    adapted: bool = False,
) -> Backend:
    """The backend ``config.backend`` asks for, checked against the model and loss.

    Args:
        in_loop: the backend must measure the user's own forward pass (BackPACK's module
            converter cannot be used there).
        adapted: an ``outputs=`` adapter sits between the model and the loss (BackPACK
            needs the model's output to be the loss input).

    Raises:
        CurvscopeError: the requested backend cannot handle the model or loss (``"auto"``
            raises only what neither can handle).
    """
    from curvscope.probe.backends.func import FuncBackend

    if config.backend == "func":
        return FuncBackend(model, loss_fn, config, params)
    if config.backend == "backpack":
        if adapted:
            raise ConfigError(
                "the backpack backend needs the model's output to be the loss input; "
                "an outputs= adapter needs backend='func' (or 'auto')"
            )
        backend = _backpack(model, loss_fn, config, params)
        if in_loop and backend.needs_conversion:
            raise ConfigError(
                f"{type(model).__name__}'s forward pass needs BackPACK's module converter "
                "(it uses +, *, flatten or similar between layers), so BackPACK cannot "
                "measure it in the training loop's own backward pass; use backend='func' "
                "(or 'auto'), or pass monitor_batch=(X, y)"
            )
        return backend
    func = FuncBackend(model, loss_fn, config, params)
    if adapted or isinstance(loss_fn, nn.BCEWithLogitsLoss):
        return func
    try:
        backend = _backpack(model, loss_fn, config, params)
    except CurvscopeError:
        return func
    if in_loop and backend.needs_conversion:
        return func
    from curvscope.probe.backends.auto import AutoBackend

    return AutoBackend(backend, func)


def _backpack(
    model: nn.Module, loss_fn: nn.Module, config: ViViTConfig, params: list[nn.Parameter]
) -> BackpackBackend:
    from curvscope.probe.backends.backpack import BackpackBackend  # imports BackPACK

    return BackpackBackend(model, loss_fn, config, params)
