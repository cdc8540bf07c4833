"""Hessian curvature of a batch loss by Lanczos: extreme eigenvalues and spectral density.

>>> import torch
>>> from torch import nn
>>> from curvscope.probe.hessian import hessian_spectrum
>>> _ = torch.manual_seed(0)
>>> model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
>>> x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 2, (8,))
>>> spectrum = hessian_spectrum(model, nn.CrossEntropyLoss(), x, y, top_k=2, seed=0)
>>> spectrum.eigvals.shape, spectrum.converged
(torch.Size([2]), True)
>>> bool(spectrum.eigvals[0] >= spectrum.eigvals[1] >= spectrum.min_eigval)
True

Layout: ``hvp`` (Hessian-vector products of one parameter group: the only autograd
plumbing), ``lanczos`` (the block Lanczos process and extreme eigenpairs, operator-agnostic),
``slq`` (stochastic Lanczos quadrature: spectral density and moments), ``spectrum`` (the
entry point :func:`hessian_spectrum`).
"""

from __future__ import annotations

from curvscope.probe.hessian.hvp import GroupHessian, HVPMethod
from curvscope.probe.hessian.lanczos import (
    BlockLanczos,
    ExtremeEigenpairs,
    LanczosResult,
    extreme_eigenpairs,
    lanczos,
)
from curvscope.probe.hessian.slq import density_on_grid, moments, rademacher, slq_density
from curvscope.probe.hessian.spectrum import DEFAULT_MAX_STEPS, HessianSpectrum, hessian_spectrum

__all__ = [
    "DEFAULT_MAX_STEPS",
    "BlockLanczos",
    "ExtremeEigenpairs",
    "GroupHessian",
    "HVPMethod",
    "HessianSpectrum",
    "LanczosResult",
    "density_on_grid",
    "extreme_eigenpairs",
    "hessian_spectrum",
    "lanczos",
    "moments",
    "rademacher",
    "slq_density",
]
