"""The contract every ldeq solver meets, as a typing Protocol (``isinstance`` works at run time).

A solver is a callable

    solver(f, z0, *, max_iter, tol, stop_mode, **options) -> (z_star, stats)

* ``f``: maps a state like ``z0`` to one of the same structure, shapes and dtype. It is called
  without autograd; samples must not interact inside it (the solver stops per sample).
* ``z0``: a batch-first tensor (B, ...) or a list/tuple of batch-first tensors of different
  shapes (a multi-scale state); finite; floating point.
* ``max_iter``: the budget of f-evaluations (>= 1). ``tol``: per-sample stop threshold in
  ``stop_mode`` ('rel': ||f(z) - z|| / (||f(z)|| + eps), 'abs': ||f(z) - z||); ``tol = 0`` is a
  fixed budget: exactly max_iter evaluations and no host synchronisation in the loop.
* ``options``: solver-specific keyword options (Anderson ``m``/``lam``/``lam_mode``/``beta``,
  Broyden ``memory``, ...); an unknown option raises a TypeError listing the valid ones. Two
  optional keywords are understood by :func:`ldeq.solvers.deq` when the solver names them in its
  signature: ``trajectory`` (1-based iterations whose lowest-residual iterate goes into
  ``stats.trajectory``) and ``f_subset(z_sub, index)`` (f on a subset of samples).
* Returns ``z_star`` (same structure as ``z0``: each sample's lowest-residual iterate, not f of
  it) and a :class:`~ldeq.solvers.SolverStats`.

Register a solver under a name with :func:`ldeq.solvers.register_solver`; wrap a TorchDEQ solver
with :func:`ldeq.solvers.torchdeq_compat.from_torchdeq`.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, Tuple, runtime_checkable

from ._common import StateLike
from ._stats import SolverStats

__all__ = ["Solver", "StateLike"]


@runtime_checkable
class Solver(Protocol):
    """``solver(f, z0, *, max_iter, tol, stop_mode, **options) -> (z_star, SolverStats)``; see the module docstring."""

    def __call__(self, f: Callable[[StateLike], StateLike], z0: StateLike, *, max_iter: int, tol: float,
                 stop_mode: str, **options: Any) -> Tuple[StateLike, SolverStats]:
        ...
