"""The fixed-point machinery the LDEQ needs, behind one small interface.

``solve(f, z0, ...)`` runs a solver from ``ldeq.solvers`` and returns ``(z_star, SolverStats)``;
``attach_gradient(z_new, z_star, f, mode)`` makes the training-time step ``z_new = f(z_star)``
carry the chosen gradient (JFB, implicit/IFT, phantom).
"""
import random
from typing import Callable, Optional

import torch

try:  # model-agnostic package in top-level solvers/, installed as ldeq.solvers
    from ldeq.solvers import get_solver as _get_solver
    from ldeq.solvers._stats import SolverStats
except ImportError:  # TEMPORARY: until ldeq.solvers lands, a local fixed-point loop behind the same call
    import importlib.util as _ilu
    import os as _os
    _spec = _ilu.spec_from_file_location(
        "_ldeq_solver_stats", _os.path.join(_os.path.dirname(__file__), "..", "..", "solvers", "_stats.py"))
    _mod = _ilu.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
    SolverStats = _mod.SolverStats
    _get_solver = None

REL_EPS = 1e-5  # ||f(z) - z|| / (||f(z)|| + 1e-5), as in the official solvers
GRAD_MODES = ("ift", "jfb", "phantom")


def residuals(fz: torch.Tensor, z: torch.Tensor):
    """(B, ...) pair -> per-sample absolute and relative residuals, each (B,)."""
    B = z.shape[0]
    a = (fz - z).reshape(B, -1).norm(dim=1)
    return a, a / (fz.reshape(B, -1).norm(dim=1) + REL_EPS)


def stats_from_traces(abs_trace, rel_trace, tol, stop_mode, solver, nstep=None):
    """Build a SolverStats from per-iteration (B,) residual lists (used by explicit mode)."""
    a, r = torch.stack(abs_trace, 1), torch.stack(rel_trace, 1)
    B, T = a.shape
    low = r if stop_mode == "rel" else a
    return SolverStats(
        nstep=torch.full((B,), T, dtype=torch.int64) if nstep is None else nstep,
        abs_lowest=a.min(1).values, rel_lowest=r.min(1).values, abs_trace=a, rel_trace=r,
        converged=low.min(1).values <= tol, safeguard=torch.zeros(B, dtype=torch.bool),
        solver=solver, stop_mode=stop_mode)


def _local_fixed_point(f, z0, *, max_iter, tol, stop_mode="rel", **_):
    """Plain iteration z <- f(z), the official ``fpi``: stops when the batch-mean residual < tol,
    returns the last iterate. TEMPORARY stand-in until ldeq.solvers is installed."""
    z, at, rt = z0, [], []
    for _ in range(max_iter):
        fz = f(z)
        a, r = residuals(fz, z)
        at.append(a)
        rt.append(r)
        z = fz
        if float((r if stop_mode == "rel" else a).mean()) < tol:
            break
    return z, stats_from_traces(at, rt, tol, stop_mode, "fixed_point")


def get_solver(name: str):
    """Solver callable ``solver(f, z0, *, max_iter, tol, stop_mode, **kw) -> (z_star, SolverStats)``."""
    if _get_solver is not None:
        return _get_solver(name)
    if name in ("fixed_point", "fpi"):
        return _local_fixed_point
    raise RuntimeError(f"solver {name!r} needs ldeq.solvers, which is not installed "
                       "(pip install --no-build-isolation -e .)")


def solve(f: Callable, z0: torch.Tensor, *, solver: str, max_iter: int, tol: float, stop_mode: str,
          stochastic: bool = False, **solver_kwargs):
    """Solve z = f(z) from z0 under no_grad. ``stochastic`` draws max_iter ~ uniform{1..max_iter}."""
    if stochastic:
        max_iter = random.randint(1, max_iter)
    with torch.no_grad():
        return get_solver(solver)(f, z0, max_iter=max_iter, tol=tol, stop_mode=stop_mode, **solver_kwargs)


def attach_gradient(z_new: torch.Tensor, z_star: torch.Tensor, f: Callable, mode: str, *,
                    solver: str = "fixed_point", max_iter: int = 10, tol: float = 1e-4,
                    stop_mode: str = "rel", phantom_steps: int = 5, phantom_damping: float = 0.5):
    """Give the tracked step ``z_new = f(z_star)`` (z_star a leaf requiring grad) its training gradient.

    'jfb':     the single tracked step is the whole gradient (Jacobian-free backprop).
    'ift':     implicit function theorem: the incoming gradient g0 is replaced by the solution of
               g = J^T g + g0 (J = df/dz at z_star), solved with the same solver family from g = 0.
    'phantom': ``phantom_steps`` damped tracked steps z <- (1 - d) z + d f(z) from z_star.
    Returns the tensor to use downstream (z_new, or the phantom iterate).
    """
    if mode == "jfb":
        return z_new
    if mode == "phantom":
        z = (1 - phantom_damping) * z_star + phantom_damping * z_new
        for _ in range(phantom_steps - 1):
            z = (1 - phantom_damping) * z + phantom_damping * f(z)
        return z
    if mode != "ift":
        raise ValueError(f"grad_mode={mode!r}: expected one of {GRAD_MODES}")

    def backward_hook(grad):
        def g_map(g):  # g -> J^T g + grad, a vector-Jacobian product through the stored step
            return torch.autograd.grad(z_new, z_star, g, retain_graph=True)[0] + grad
        with torch.enable_grad():
            g, _ = get_solver(solver)(g_map, torch.zeros_like(grad), max_iter=max_iter, tol=tol,
                                      stop_mode=stop_mode)
        return g.detach()

    z_new.register_hook(backward_hook)
    return z_new
