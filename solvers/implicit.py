"""Gradients of a fixed point z* = f(z*): implicit (IFT), Jacobian-free (JFB) and phantom.

All three start from a solver result ``z_star`` computed *without* autograd (so the forward
solve costs no activation memory) and attach a gradient path through a few tracked
applications of ``f``. Shapes: ``z_star`` is (B, ...) with B independent samples; ``f`` maps a
(B, ...) tensor to the same shape and may close over parameters and injected inputs x, which
receive gradients through ordinary autograd.

- :func:`ift_grad`: output ``f(z*)`` whose backward first solves g = J_f(z*)^T g + dL/dout with a
  fixed-point solver (vector-Jacobian products through the one tracked application of f), then
  sends g through that same application to the parameters and inputs: dL/dtheta =
  g^T df/dtheta = dL/dz* (I - J)^-1 df/dtheta, the implicit-function-theorem gradient.
- :func:`jfb_grad`: output ``f(z*)`` with z* treated as a constant (gradient of one step).
- :func:`phantom_grad`: k damped steps z <- tau f(z) + (1 - tau) z from z*, all tracked.

The IFT backward is a ``torch.autograd.Function`` and keeps no state outside the autograd graph:
dropping the output (no backward) frees everything, unlike a tensor hook stored on a module.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ._stats import SolverStats

__all__ = ["BackwardConfig", "BackwardSolveError", "ift_grad", "jfb_grad", "phantom_grad",
           "ON_FAIL_MODES"]

#: What to do when the backward solve did not converge or produced NaN/Inf, per sample:
#: 'raise' -> BackwardSolveError; 'warn' -> keep the lowest-residual iterate of non-converged
#: samples, zero the gradient of non-finite samples, warn; 'zero' -> zero the gradient of every
#: failed sample (no warning). In every mode the outcome is recorded in the backward record.
ON_FAIL_MODES = ("raise", "warn", "zero")


class BackwardSolveError(RuntimeError):
    """The implicit backward solve failed (not converged or non-finite) with on_fail='raise'."""


@dataclass
class BackwardConfig:
    """Options of the implicit backward solve g = J^T g + grad.

    solver:    a solver callable ``solver(h, g0, *, max_iter, tol, stop_mode, **kw) -> (g, stats)``.
    max_iter:  iteration budget of the backward solve.
    tol:       stopping tolerance (in ``stop_mode``) of the backward solve.
    stop_mode: 'rel' or 'abs'.
    solver_kwargs: extra keyword arguments for the solver (e.g. Anderson's m).
    on_fail:   one of ON_FAIL_MODES.
    """
    solver: Callable
    max_iter: int = 30
    tol: float = 1e-4
    stop_mode: str = "rel"
    solver_kwargs: dict = field(default_factory=dict)
    on_fail: str = "warn"

    def __post_init__(self):
        if self.on_fail not in ON_FAIL_MODES:
            raise ValueError(f"on_backward_fail must be one of {ON_FAIL_MODES}, got {self.on_fail!r}")
        if int(self.max_iter) < 1:
            raise ValueError(f"b_max_iter must be >= 1, got {self.max_iter}")
        if not float(self.tol) >= 0:
            raise ValueError(f"b_tol must be >= 0 (0: always run b_max_iter iterations), got {self.tol}")
        if self.stop_mode not in ("rel", "abs"):
            raise ValueError(f"b_stop_mode must be 'rel' or 'abs', got {self.stop_mode!r}")


@dataclass
class BackwardRecord:
    """Filled in when backward runs through an :func:`ift_grad` output (None fields until then).

    stats:     SolverStats of the backward solve.
    failed:    (B,) bool, sample's backward solve did not converge or was non-finite.
    nonfinite: (B,) bool, sample's backward solution contained NaN/Inf (its gradient was zeroed).
    zeroed:    (B,) bool, samples whose gradient was replaced by zeros.
    calls:     how many backward passes went through this output.
    """
    stats: Optional[SolverStats] = None
    failed: Optional[torch.Tensor] = None
    nonfinite: Optional[torch.Tensor] = None
    zeroed: Optional[torch.Tensor] = None
    calls: int = 0

    @property
    def ok(self) -> Optional[bool]:
        """True when every sample's backward solve succeeded; None before backward ran."""
        return None if self.failed is None else not bool(self.failed.any())


def _per_sample_all(mask: torch.Tensor) -> torch.Tensor:
    return mask.reshape(mask.shape[0], -1).all(dim=1)


class _IFTBackward(torch.autograd.Function):
    """Identity in forward; in backward replaces the incoming gradient by the solution of
    g = J^T g + grad. The output of ``f(z_req)`` is the input here, so the returned g continues
    through that tracked application of f into the parameters and injected inputs."""

    @staticmethod
    def forward(ctx, fz, z_req, cfg, record):
        # Kept as attributes (not save_for_backward): fz/z_req are the live graph we take VJPs
        # through; they hold no reference back to this node, so there is no cycle.
        ctx.fz, ctx.z_req, ctx.cfg, ctx.record = fz, z_req, cfg, record
        return fz.detach()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        fz, z_req, cfg, record = ctx.fz, ctx.z_req, ctx.cfg, ctx.record
        grad = grad.to(fz.dtype)

        def vjp_plus_grad(g):
            # retain_graph: the same tracked f is reused for every iteration and, afterwards,
            # by the outer backward that carries g into the parameters.
            (jt_g,) = torch.autograd.grad(fz, z_req, g, retain_graph=True, allow_unused=True)
            return grad if jt_g is None else jt_g + grad

        # Start from grad, not 0: the first evaluation at g = 0 would spend a VJP to return grad.
        g0 = grad.clone()
        with torch.no_grad():
            g, stats = cfg.solver(vjp_plus_grad, g0, max_iter=int(cfg.max_iter), tol=float(cfg.tol),
                                  stop_mode=cfg.stop_mode, **cfg.solver_kwargs)
        nonfinite = ~_per_sample_all(torch.isfinite(g))
        not_conv = ~stats.converged.to(device=g.device, dtype=torch.bool)
        failed = nonfinite | not_conv
        if cfg.on_fail == "zero":
            zeroed = failed
        else:
            zeroed = nonfinite
        record.stats, record.failed, record.nonfinite, record.zeroed = stats, failed, nonfinite, zeroed
        record.calls += 1
        if bool(failed.any()):
            n_bad, n = int(failed.sum()), failed.numel()
            msg = (f"implicit backward solve failed on {n_bad}/{n} samples "
                   f"({int(nonfinite.sum())} non-finite, {int((not_conv & ~nonfinite).sum())} not converged "
                   f"to b_tol={cfg.tol:g} ({cfg.stop_mode}) within b_max_iter={cfg.max_iter}; "
                   f"worst residual {float(stats.lowest.max()):.3e})")
            if cfg.on_fail == "raise":
                raise BackwardSolveError(msg + "; raise b_max_iter/b_tol or set on_backward_fail='warn'/'zero'")
            if cfg.on_fail == "warn":
                warnings.warn(msg + ("; non-finite samples' gradients zeroed" if bool(nonfinite.any()) else ""),
                              RuntimeWarning, stacklevel=2)
            if bool(zeroed.any()):
                keep = (~zeroed).to(g.dtype).reshape((-1,) + (1,) * (g.dim() - 1))
                g = torch.where(keep.bool(), g, torch.zeros((), dtype=g.dtype, device=g.device))
        return g, None, None, None


def _check_z(z_star: torch.Tensor, fz: torch.Tensor) -> None:
    if fz.shape != z_star.shape:
        raise ValueError(f"f(z) must return the shape of z {tuple(z_star.shape)}, got {tuple(fz.shape)}")


def _tracked_step(f: Callable, z_star: torch.Tensor, requires_grad_z: bool):
    z_req = z_star.detach()
    if requires_grad_z:
        z_req = z_req.requires_grad_()
    with torch.enable_grad():
        # Cast back to the state dtype inside the graph: under autocast f may return bf16/fp16,
        # while the solver state and the backward solve stay in z's dtype (fp32).
        fz = f(z_req)
        if not isinstance(fz, torch.Tensor):
            raise TypeError(f"f(z) must return a tensor, got {type(fz).__name__}")
        _check_z(z_star, fz)
        fz = fz.to(z_star.dtype)
    return z_req, fz


def ift_grad(f: Callable, z_star: torch.Tensor, cfg: BackwardConfig,
             record: Optional[BackwardRecord] = None, z_req_fz=None):
    """Output ``f(z_star)`` (B, ...) carrying the implicit gradient.

    ``record`` (a BackwardRecord) receives the backward solve's stats when backward runs.
    ``z_req_fz`` lets a caller pass an already computed tracked pair (z_req, f(z_req)).
    Returns (out, z_req, fz): out is what to use downstream; z_req/fz are the tracked pair
    (e.g. for a Jacobian regulariser).
    """
    record = BackwardRecord() if record is None else record
    z_req, fz = z_req_fz if z_req_fz is not None else _tracked_step(f, z_star, True)
    if not fz.requires_grad:  # nothing upstream wants a gradient
        return fz, z_req, fz
    return _IFTBackward.apply(fz, z_req, cfg, record), z_req, fz


def jfb_grad(f: Callable, z_star: torch.Tensor) -> torch.Tensor:
    """``f(z_star)`` with z_star detached: dL/dtheta = dL/dout df/dtheta (Jacobian-free)."""
    return _tracked_step(f, z_star, False)[1]


def phantom_grad(f: Callable, z_star: torch.Tensor, k: int = 5, tau: float = 0.5) -> torch.Tensor:
    """k tracked damped steps from z_star (detached): z_{i+1} = tau f(z_i) + (1 - tau) z_i."""
    if int(k) < 1:
        raise ValueError(f"phantom_steps (k) must be >= 1, got {k}")
    if not 0.0 < float(tau) <= 1.0:
        raise ValueError(f"phantom_tau must be in (0, 1], got {tau}")
    z = z_star.detach()
    with torch.enable_grad():
        for _ in range(int(k)):
            fz = f(z)
            _check_z(z_star, fz)
            fz = fz.to(z_star.dtype)
            z = fz if float(tau) == 1.0 else tau * fz + (1.0 - tau) * z
    return z
