"""The fixed-point machinery the LDEQ needs, behind one small interface.

``run_deq(f, z0, ...)`` finds z* = f(z*) with ``ldeq.solvers.deq`` (solve without autograd, then
an extra step carrying the chosen gradient: 'ift', 'jfb' or 'phantom') and returns
``(z, stats)``. ``residuals`` / ``stats_from_traces`` describe the unrolled explicit mode with
the same SolverStats record.
"""
from typing import Callable, Optional

import torch

try:  # model-agnostic package in top-level solvers/, installed as ldeq.solvers
    from ldeq.solvers._stats import SolverStats
    from ldeq.solvers.deq import GRAD_MODES, deq as _deq
except ImportError:  # TEMPORARY: until ldeq.solvers is importable, a local fixed-point loop
    import importlib.util as _ilu
    import os as _os
    _spec = _ilu.spec_from_file_location(
        "_ldeq_solver_stats", _os.path.join(_os.path.dirname(__file__), "..", "..", "solvers", "_stats.py"))
    _mod = _ilu.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
    SolverStats = _mod.SolverStats
    GRAD_MODES = ("ift", "jfb", "phantom")
    _deq = None

REL_EPS = 1e-5  # ||f(z) - z|| / (||f(z)|| + 1e-5), as in the official solvers


def residuals(fz: torch.Tensor, z: torch.Tensor):
    """(B, ...) pair -> per-sample absolute and relative residuals, each (B,)."""
    B = z.shape[0]
    a = (fz - z).reshape(B, -1).norm(dim=1)
    return a, a / (fz.reshape(B, -1).norm(dim=1) + REL_EPS)


def stats_from_traces(abs_trace, rel_trace, tol, stop_mode, solver):
    """SolverStats from per-iteration (B,) residual lists (used by the unrolled explicit mode)."""
    a, r = torch.stack(abs_trace, 1), torch.stack(rel_trace, 1)
    B, T = a.shape
    low = r if stop_mode == "rel" else a
    return SolverStats(nstep=torch.full((B,), T, dtype=torch.int64), abs_lowest=a.min(1).values,
                       rel_lowest=r.min(1).values, abs_trace=a, rel_trace=r,
                       converged=low.min(1).values <= tol, safeguard=torch.zeros(B, dtype=torch.bool),
                       solver=solver, stop_mode=stop_mode)


def _local_deq(f, z0, *, args=(), max_iter, tol, stop_mode="rel", extra_step=True, grad="jfb", **_):
    """TEMPORARY stand-in for ldeq.solvers.deq: plain iteration, then a JFB extra step."""
    at, rt = [], []
    with torch.no_grad():
        z = z0
        for _ in range(max_iter):
            fz = f(z, *args)
            a, r = residuals(fz, z)
            at.append(a)
            rt.append(r)
            z = fz
            if float((r if stop_mode == "rel" else a).mean()) < tol:
                break
    if torch.is_grad_enabled() or extra_step:
        z = f(z.detach(), *args)
    return z, stats_from_traces(at, rt, tol, stop_mode, "fixed_point")


def run_deq(f: Callable, z0: torch.Tensor, x: torch.Tensor, *, solver: str, max_iter: int, tol: float,
            stop_mode: str, solver_kwargs: Optional[dict] = None, grad: str = "ift",
            stochastic_max_iter: bool = False, extra_step: bool = True, **deq_kwargs):
    """z* = f(z*, x) from z0 (B, ...) -> (z (B, ...), stats).

    Without autograd (inference), z = f(z*) when ``extra_step`` else z*. With autograd, z is the
    tracked step from z* whose backward follows ``grad``; ``deq_kwargs`` go to ldeq.solvers.deq
    (backward solver settings, phantom steps, Jacobian regularisation, ...).
    """
    impl = _deq if _deq is not None else _local_deq
    return impl(f, z0, args=(x,), solver=solver, max_iter=max_iter, tol=tol, stop_mode=stop_mode,
                solver_kwargs=solver_kwargs, grad=grad, stochastic_max_iter=stochastic_max_iter,
                extra_step=extra_step, **deq_kwargs)
