"""The fixed-point machinery the LDEQ needs, behind one small interface.

``run_deq(f, z0, x, ...)`` finds z* = f(z*) with ``ldeq.solvers.deq`` (solve without autograd, then
an extra step carrying the chosen gradient: 'ift', 'jfb' or 'phantom') and returns
``(z, stats)``. ``residuals`` / ``stats_from_traces`` describe the unrolled explicit mode with
the same SolverStats record. The official release's loop is ``ldeq.solvers.fixed_point_last``
(solver name 'fixed_point_last'; an official checkpoint's 'fpi' maps to it).
"""
from typing import Callable, Optional

import torch

from ldeq.solvers.deq import deq
from ldeq.solvers.fixed_point import OFFICIAL_REL_EPS as REL_EPS  # noqa: F401  (re-exported)
from ldeq.solvers.fixed_point import fixed_point_last, residuals, stats_from_traces  # noqa: F401


def run_deq(f: Callable, z0: torch.Tensor, x: torch.Tensor, *, solver: str, max_iter: int, tol: float,
            stop_mode: str, solver_kwargs: Optional[dict] = None, grad: str = "ift",
            stochastic_max_iter: bool = False, extra_step: bool = True, **deq_kwargs):
    """z* = f(z*, x) from z0 (B, ...) -> (z (B, ...), stats).

    Without autograd (inference), z = f(z*) when ``extra_step`` else z*. With autograd, z is the
    tracked step from z* whose backward follows ``grad``; ``deq_kwargs`` go to ldeq.solvers.deq
    (backward solver settings, phantom steps, Jacobian regularisation, ...).
    """
    return deq(f, z0, args=(x,), solver=solver, max_iter=max_iter, tol=tol, stop_mode=stop_mode,
               solver_kwargs=solver_kwargs, grad=grad, stochastic_max_iter=stochastic_max_iter,
               extra_step=extra_step, **deq_kwargs)
