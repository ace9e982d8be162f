"""ldeq.solvers: batched fixed-point solvers for any deep equilibrium model.

``solver(f, z0, *, max_iter, tol, stop_mode, ...) -> (z_star, stats)`` for every solver (the
:class:`Solver` protocol): ``f`` maps a state shaped like ``z0`` (a batch-first tensor, or a
list/tuple of them) to the same shapes; ``z_star`` is the lowest-residual iterate of each sample;
``stats`` is a :class:`SolverStats`. Unknown options raise a TypeError listing the valid ones.
The solve itself is not differentiated (it runs under ``torch.no_grad``; gradients come from the
DEQ layer :func:`deq` / :class:`DEQ`). ``tol=0`` is a sync-free fixed budget. TorchDEQ users:
``import ldeq.solvers.torchdeq_compat`` registers the solvers in TorchDEQ (docs/solvers.md).
This package never imports the landmark model.
"""
from ._registry import available_solvers, get_solver, register_solver
from ._stats import SolverStats
from .anderson import anderson
from .broyden import broyden
from .fixed_point import fixed_point, fixed_point_last
from .deq import (DEQ, BackwardOptions, DEQStats, GradOptions, RegOptions, SolveOptions,  # noqa: E402
                  deq)
from .protocol import Solver, StateLike
from .workspace import empty_workspace, set_workspace_limit, workspace_bytes, workspace_limit

__all__ = ["anderson", "broyden", "fixed_point", "fixed_point_last", "get_solver", "register_solver",
           "available_solvers", "SolverStats", "Solver", "StateLike", "deq", "DEQ", "DEQStats",
           "SolveOptions", "BackwardOptions", "GradOptions", "RegOptions", "empty_workspace",
           "set_workspace_limit", "workspace_bytes", "workspace_limit"]
