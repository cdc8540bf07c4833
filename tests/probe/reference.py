"""Slow, obviously-correct dense ViViT reference with ``torch.func`` (use float64).

Everything is formed explicitly: per-sample Jacobians ``J_n`` (``C x D``), output
Hessians ``H_n`` of the per-sample loss contributions ``L_n`` (reduction factor included),
the dense GGN ``G = Σ_n J_nᵀ H_n J_n`` (``D x D``), per-sample gradients ``g_n`` and the
eigendecomposition of ``G``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, hessian, jacrev, vmap


def _sum_loss(loss_fn: nn.Module) -> nn.Module:
    return type(loss_fn)(reduction="sum")


def reduction_factor(loss_fn: nn.Module, outputs: Tensor) -> float:
    """κ with ``L = κ Σ_n ℓ(f_n, y_n)`` (ℓ summed over the output's entries)."""
    if loss_fn.reduction == "sum":
        return 1.0
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        return 1.0 / (outputs.numel() // outputs.shape[1])
    return 1.0 / outputs.numel()


def _flat_parameters(model: nn.Module, params: list[nn.Parameter]):
    """``θ`` (``params`` flattened), the other parameters, and ``θ`` -> named tensors."""
    names = {id(p): n for n, p in model.named_parameters()}
    keys = [names[id(p)] for p in params]
    shapes = [p.shape for p in params]
    theta = torch.cat([p.detach().flatten() for p in params])
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in keys}

    def unflatten(flat: Tensor) -> dict[str, Tensor]:
        out, i = {}, 0
        for k, s in zip(keys, shapes, strict=True):
            out[k] = flat[i : i + s.numel()].reshape(s)
            i += s.numel()
        return out

    return theta, fixed, unflatten


@dataclass
class DenseViViT:
    ggn: Tensor  # [D, D]
    ggn_per_sample: Tensor  # [N', D, D] curvature samples only
    grads: Tensor  # [N, D] per-sample gradients g_n
    grad: Tensor  # [D]
    eigvals: Tensor  # [D] descending
    eigvecs: Tensor  # [D, D]
    loss: float


def dense_vivit(
    model: nn.Module,
    loss_fn: nn.Module,
    x: Tensor,
    y: Tensor,
    params: list[nn.Parameter],
    subsample: list[int] | None = None,
) -> DenseViViT:
    """Dense ViViT quantities of ``loss_fn(model(x), y)`` w.r.t. ``params``.

    The curvature uses the samples ``subsample`` (default all), with the loss's own
    reduction on that subset; gradients use the whole batch.
    """
    theta, fixed, unflatten = _flat_parameters(model, params)

    def f(flat: Tensor, xn: Tensor) -> Tensor:
        return functional_call(model, {**fixed, **unflatten(flat)}, (xn.unsqueeze(0),))[0]

    with torch.no_grad():
        outputs = model(x)
    n = x.shape[0]
    sub = list(range(n)) if subsample is None else list(subsample)
    kappa_full = reduction_factor(loss_fn, outputs)
    kappa_sub = reduction_factor(loss_fn, outputs[sub])
    loss_sum = _sum_loss(loss_fn)

    def ell(out: Tensor, yn: Tensor) -> Tensor:
        return loss_sum(out.unsqueeze(0), yn.unsqueeze(0))

    def grad_n(flat: Tensor, xn: Tensor, yn: Tensor) -> Tensor:
        return torch.func.grad(lambda t: kappa_full * ell(f(t, xn), yn))(flat)

    grads = vmap(grad_n, in_dims=(None, 0, 0))(theta, x, y)
    xs, ys = x[sub], y[sub]
    jac = vmap(jacrev(f), in_dims=(None, 0))(theta, xs)  # [N', C, D]
    out_sub = outputs[sub]
    hess = vmap(hessian(lambda o, yn: kappa_sub * ell(o, yn)))(out_sub, ys)  # [N', C, C]
    jac = jac.reshape(len(sub), -1, theta.numel())
    hess = hess.reshape(len(sub), jac.shape[1], jac.shape[1])
    ggn_n = torch.einsum("nci,ncd,ndj->nij", jac, hess, jac)
    ggn = ggn_n.sum(0)
    evals, evecs = torch.linalg.eigh(ggn)
    return DenseViViT(
        ggn=ggn,
        ggn_per_sample=ggn_n,
        grads=grads,
        grad=grads.sum(0),
        eigvals=evals.flip(0),
        eigvecs=evecs.flip(1),
        loss=float(loss_fn(outputs, y)),
    )


def reference_snr(samples: Tensor) -> Tensor:
    """mean² / unbiased variance per column, straight from the definition."""
    return samples.mean(0) ** 2 / samples.var(0, unbiased=True)


def dense_vivit_full(
    model: nn.Module,
    loss_fn: nn.Module,
    inputs: object,
    targets: Tensor,
    params: list[nn.Parameter],
    subsample: list[int] | None = None,
    outputs: object = None,
) -> DenseViViT:
    """Dense ViViT quantities from the *full-batch* Jacobian (MATH.md, coupled samples).

    ``F = outputs(model(inputs))`` is differentiated as one function of ``θ`` over the whole
    batch: ``J_n = ∂F_n/∂θ`` (sample n's rows), ``G = Σ_{m ∈ subset} J_mᵀ H_m J_m`` with
    ``H_m`` sample m's block of ``∇²_F`` of the loss *on the subset* (torch's own loss, so
    its reduction, ignore_index, weights and smoothing are the reference), and
    ``g_n = J_nᵀ (∂L/∂F)_n``. For independent samples this is :func:`dense_vivit`. The
    model's buffers are not touched (copies are used).
    """
    theta, fixed, unflatten = _flat_parameters(model, params)
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}

    def forward(flat: Tensor) -> Tensor:
        state = {**fixed, **unflatten(flat), **{n: b.clone() for n, b in buffers.items()}}
        if isinstance(inputs, dict):
            out = functional_call(model, state, (), inputs)
        elif isinstance(inputs, tuple):
            out = functional_call(model, state, inputs)
        else:
            out = functional_call(model, state, (inputs,))
        return out if outputs is None else outputs(out)  # type: ignore[operator]

    f0 = forward(theta).detach()
    n = f0.shape[0]
    sub = list(range(n)) if subsample is None else list(subsample)
    jac = jacrev(forward)(theta).reshape(n, -1, theta.numel())  # [N, P, D]
    per = jac.shape[1]

    def loss_sub(f_sub: Tensor) -> Tensor:
        return loss_fn(f_sub.reshape(len(sub), *f0.shape[1:]), targets[sub])

    hess = hessian(loss_sub)(f0[sub].reshape(len(sub), per))  # [M, P, M, P]
    eye = torch.eye(len(sub), dtype=torch.bool)
    off = hess.permute(0, 2, 1, 3)[~eye]
    if off.numel():  # the loss Hessian is block-diagonal over samples
        assert float(off.abs().max()) <= 1e-12 * max(1.0, float(hess.abs().max()))
    blocks = torch.stack([hess[i, :, i, :] for i in range(len(sub))])  # [M, P, P]
    js = jac[sub]
    ggn_n = torch.einsum("mpi,mpq,mqj->mij", js, blocks, js)
    ggn = ggn_n.sum(0)
    f_req = f0.clone().requires_grad_(True)
    (d,) = torch.autograd.grad(loss_fn(f_req, targets), f_req)
    grads = torch.einsum("npd,np->nd", jac, d.reshape(n, per))
    evals, evecs = torch.linalg.eigh(ggn)
    return DenseViViT(
        ggn=ggn,
        ggn_per_sample=ggn_n,
        grads=grads,
        grad=grads.sum(0),
        eigvals=evals.flip(0),
        eigvecs=evecs.flip(1),
        loss=float(loss_fn(f0, targets)),
    )
