"""ldeq.solvers: batched fixed-point solvers for any deep equilibrium model.

``solver(f, z0, *, max_iter, tol, stop_mode, ...) -> (z_star, stats)`` for every solver:
``f`` maps a tensor shaped like ``z0`` (batch first, any shape) to the same shape; ``z_star`` is
the lowest-residual iterate of each sample; ``stats`` is a :class:`SolverStats`. Unknown options
raise a TypeError listing the valid ones. The solve itself is not differentiated (it runs under
``torch.no_grad``; gradients come from the DEQ layer's implicit or one-step backward). This package
never imports the landmark model.
"""
from ._registry import available_solvers, get_solver, register_solver
from ._stats import SolverStats
from .anderson import anderson
from .broyden import broyden
from .fixed_point import fixed_point, fixed_point_last
from .deq import DEQ, DEQStats, deq  # noqa: F401,E402  (issue 4: the DEQ layer and its gradients)

__all__ = ["anderson", "broyden", "fixed_point", "fixed_point_last", "get_solver", "register_solver",
           "available_solvers", "SolverStats", "deq", "DEQ", "DEQStats"]
