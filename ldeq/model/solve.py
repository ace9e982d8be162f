"""The fixed-point machinery the LDEQ needs, behind one small interface.

``run_deq(f, z0, x, ...)`` finds z* = f(z*) with ``ldeq.solvers.deq`` (solve without autograd, then
an extra step carrying the chosen gradient: 'ift', 'jfb' or 'phantom') and returns
``(z, stats)``. ``residuals`` / ``stats_from_traces`` describe the unrolled explicit mode with
the same SolverStats record.
"""
from typing import Callable, Optional

import torch

from ldeq.solvers import SolverStats
from ldeq.solvers.deq import GRAD_MODES, deq

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
    return SolverStats(nstep=torch.full((B,), T, dtype=torch.int64, device=a.device), abs_lowest=a.min(1).values,
                       rel_lowest=r.min(1).values, abs_trace=a, rel_trace=r, converged=low.min(1).values <= tol,
                       safeguard=torch.zeros(B, dtype=torch.bool, device=a.device),
                       solver=solver, stop_mode=stop_mode)


@torch.no_grad()
def official_fpi(f, z0, *, max_iter, tol, stop_mode="rel", trajectory=None):
    """The official release's ``fpi``: z <- f(z) up to ``max_iter`` times, stopping when the
    *batch-mean* residual ||f(z) - z|| (rel: / (||f(z)|| + 1e-5)) is below tol, and returning the
    *last* f output (ldeq.solvers' fixed_point returns each sample's lowest-residual iterate
    instead; the two differ when the iteration has not converged, e.g. the official fixture).
    Same contract as ldeq.solvers: ``-> (z, SolverStats)``; ``trajectory``: iterations to keep.
    """
    keep = set(trajectory or ())
    z, at, rt, traj = z0, [], [], {}
    for k in range(1, max_iter + 1):
        fz = f(z)
        a, r = residuals(fz, z)
        at.append(a)
        rt.append(r)
        z = fz
        if k in keep:
            traj[k] = z.clone()
        if float((r if stop_mode == "rel" else a).mean()) < tol:
            break
    stats = stats_from_traces(at, rt, tol, stop_mode, "fpi")
    stats.trajectory = traj
    return z, stats


def run_deq(f: Callable, z0: torch.Tensor, x: torch.Tensor, *, solver: str, max_iter: int, tol: float,
            stop_mode: str, solver_kwargs: Optional[dict] = None, grad: str = "ift",
            stochastic_max_iter: bool = False, extra_step: bool = True, **deq_kwargs):
    """z* = f(z*, x) from z0 (B, ...) -> (z (B, ...), stats).

    Without autograd (inference), z = f(z*) when ``extra_step`` else z*. With autograd, z is the
    tracked step from z* whose backward follows ``grad``; ``deq_kwargs`` go to ldeq.solvers.deq
    (backward solver settings, phantom steps, Jacobian regularisation, ...).
    """
    # 'fpi' is the official fixed-point iteration (last iterate, batch-mean stop); every other
    # name ('fixed_point', 'anderson', 'broyden') is an ldeq.solvers solver
    return deq(f, z0, args=(x,), solver=official_fpi if solver == "fpi" else solver, max_iter=max_iter,
               tol=tol, stop_mode=stop_mode, solver_kwargs=solver_kwargs, grad=grad,
               stochastic_max_iter=stochastic_max_iter, extra_step=extra_step, **deq_kwargs)
