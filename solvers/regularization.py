"""Jacobian diagnostics of a DEQ cell at a point z: a Hutchinson estimate of ||J_f||_F^2 (a
training regulariser that keeps the fixed point well conditioned) and a power-iteration estimate
of the spectral radius rho(J_f) (a monitor: rho < 1 near z* means plain iteration converges).

Both work per sample: z and f(z) are (B, ...) and samples must not interact inside f (then J is
block-diagonal and one vector-Jacobian product gives every sample's J_b^T v_b at once).
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

__all__ = ["jacobian_frobenius", "spectral_radius", "tracked_apply"]


def tracked_apply(f: Callable, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(z_req, f(z_req)) with z_req a grad-requiring copy of z, under enable_grad."""
    z_req = z.detach().requires_grad_()
    with torch.enable_grad():
        fz = f(z_req)
    if fz.shape != z.shape:
        raise ValueError(f"f(z) must return the shape of z {tuple(z.shape)}, got {tuple(fz.shape)}")
    return z_req, fz


def _check_pair(fz: torch.Tensor, z: torch.Tensor) -> None:
    if not isinstance(fz, torch.Tensor) or not isinstance(z, torch.Tensor):
        raise TypeError("fz and z must be tensors")
    if fz.shape != z.shape:
        raise ValueError(f"fz must have the shape of z {tuple(z.shape)}, got {tuple(fz.shape)}")
    if z.dim() < 1:
        raise ValueError("z must be (B, ...) with a batch dimension")
    if not z.requires_grad or not fz.requires_grad:
        raise ValueError("z must require grad and fz must be computed from it under autograd "
                         "(use tracked_apply(f, z))")


def _vjp(fz, z, v, create_graph):
    (g,) = torch.autograd.grad(fz, z, v, retain_graph=True, create_graph=create_graph, allow_unused=True)
    return torch.zeros_like(z) if g is None else g


def jacobian_frobenius(fz: torch.Tensor, z: torch.Tensor, n_samples: int = 1, *,
                       create_graph: bool = True, normalize: bool = False,
                       distribution: str = "normal",
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Hutchinson estimate of ||J_b||_F^2 = E_v ||J_b^T v||^2 for each sample b, v ~ N(0, I)
    (or Rademacher), averaged over ``n_samples`` probe vectors.

    fz, z: (B, ...) with fz = f(z) tracked from z (see :func:`tracked_apply`).
    create_graph: keep the graph so the estimate can be added to a loss and trained on.
    normalize: divide by the state size (per-element average, the DEQ paper's convention).
    Returns (B,) unbiased estimates (exact for Rademacher probes when J^T J is diagonal).
    """
    _check_pair(fz, z)
    if int(n_samples) < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if distribution not in ("normal", "rademacher"):
        raise ValueError(f"distribution must be 'normal' or 'rademacher', got {distribution!r}")
    B = z.shape[0]
    total = torch.zeros(B, dtype=fz.dtype, device=fz.device)
    for _ in range(int(n_samples)):
        if distribution == "normal":
            v = torch.randn(fz.shape, dtype=fz.dtype, device=fz.device, generator=generator)
        else:
            v = torch.randint(0, 2, fz.shape, device=fz.device, generator=generator).to(fz.dtype) * 2 - 1
        g = _vjp(fz, z, v, create_graph)
        total = total + g.reshape(B, -1).pow(2).sum(dim=1)
    est = total / int(n_samples)
    if normalize:
        est = est / z[0].numel()
    return est


def spectral_radius(fz: torch.Tensor, z: torch.Tensor, n_iter: int = 30, *,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Power-iteration estimate of rho(J_b) for each sample b: iterate v <- J_b^T v / ||J_b^T v||
    and report ||J_b^T v|| / ||v|| (J^T has J's eigenvalues). Exact in the limit when the dominant
    eigenvalue is real and simple; a monitoring figure otherwise. No graph is kept.

    fz, z: (B, ...) with fz = f(z) tracked from z. Returns (B,) non-negative estimates.
    """
    _check_pair(fz, z)
    if int(n_iter) < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    B = z.shape[0]
    v = torch.randn(fz.shape, dtype=fz.dtype, device=fz.device, generator=generator)
    v = v / v.reshape(B, -1).norm(dim=1).clamp_min(1e-30).reshape((B,) + (1,) * (v.dim() - 1))
    est = torch.zeros(B, dtype=fz.dtype, device=fz.device)
    for _ in range(int(n_iter)):
        w = _vjp(fz, z, v, False).detach()
        est = w.reshape(B, -1).norm(dim=1)
        v = w / est.clamp_min(1e-30).reshape((B,) + (1,) * (w.dim() - 1))
    return est
