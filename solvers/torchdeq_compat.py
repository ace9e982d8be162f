"""TorchDEQ interop, both ways. Importing this module (TorchDEQ must be installed):

* registers ldeq's solvers in TorchDEQ's registry as ``'ldeq_anderson'``, ``'ldeq_broyden'`` and
  ``'ldeq_fixed_point'``, so ``torchdeq.get_deq(f_solver='ldeq_anderson', b_solver='ldeq_anderson')``
  runs ldeq's fused solvers under TorchDEQ's own DEQ cores ('sliced', 'indexing'), IFT and phantom
  gradients;
* registers TorchDEQ's solvers in ldeq's registry as ``'torchdeq_anderson'``, ``'torchdeq_broyden'``
  and ``'torchdeq_fixed_point_iter'``, so ``ldeq.solvers.deq(f, z0, solver='torchdeq_broyden')``
  runs TorchDEQ's solver under ldeq's DEQ layer.

:func:`register_torchdeq` does the same explicitly (idempotent). :func:`as_torchdeq_solver` and
:func:`from_torchdeq` wrap any single solver.

TorchDEQ's solver contract, which the adapter honours:
``solver(func, x0, max_iter=50, tol=1e-3, stop_mode='abs', indexing=None, **kw)
-> (z, trajectory_list, SolverStat)``: ``stop_mode`` defaults to ``'abs'`` (ldeq's own default is
``'rel'``), ``indexing`` lists 1-based iterations whose lowest-residual iterate goes into
``trajectory_list`` (in iteration order, only those reached; the final estimate alone when
``indexing`` is given and none was reached), and the info dict has TorchDEQ's keys
(``abs_lowest``, ``rel_lowest``, ``abs_trace``, ``rel_trace``, ``nstep``).

Option mapping (TorchDEQ name -> ldeq): ``tau`` -> ``beta`` (damping), ``m`` -> ``m``,
``lam`` -> ``lam`` with ``lam_mode='abs'`` (TorchDEQ's absolute regularisation; without ``lam``
ldeq's default, relative to the Gram matrix's scale, applies), ``LBFGS_thres`` -> ``memory``.
Options that cannot be honoured raise: ``ls=True`` (Broyden line search) and
``return_final=True`` (ldeq returns each sample's lowest-residual iterate) raise a ValueError
naming them; any option neither library knows raises a TypeError listing the valid ones
(TorchDEQ would silently ignore it).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ._registry import _SOLVERS, register_solver
from ._stats import SolverStats
from .anderson import anderson
from .broyden import broyden
from .fixed_point import fixed_point

try:
    import torchdeq
    import torchdeq.solver as _td_solver
    from torchdeq.solver.stat import SolverStat as _TDStat
except ImportError as e:  # pragma: no cover - exercised only without TorchDEQ
    raise ImportError("ldeq.solvers.torchdeq_compat needs TorchDEQ (pip install torchdeq==0.1.0); "
                      f"import failed: {e}") from e

__all__ = ["as_torchdeq_solver", "from_torchdeq", "register_torchdeq", "to_torchdeq_stat", "torchdeq_version",
           "TORCHDEQ_TESTED",
           "LDEQ_IN_TORCHDEQ", "TORCHDEQ_IN_LDEQ"]

#: The TorchDEQ release the adapter and the tests were checked against.
TORCHDEQ_TESTED = "0.1.0"
#: TorchDEQ registry name -> ldeq solver.
LDEQ_IN_TORCHDEQ: Dict[str, Callable] = {"ldeq_anderson": anderson, "ldeq_broyden": broyden,
                                         "ldeq_fixed_point": fixed_point}
#: ldeq registry name -> TorchDEQ registry name.
TORCHDEQ_IN_LDEQ: Dict[str, str] = {"torchdeq_anderson": "anderson", "torchdeq_broyden": "broyden",
                                    "torchdeq_fixed_point_iter": "fixed_point_iter"}


def _map_options(solver: Callable, kw: Dict[str, Any]) -> Dict[str, Any]:
    """TorchDEQ option names -> ldeq's; raise for what ldeq cannot honour."""
    kw = dict(kw)
    name = getattr(solver, "__name__", "solver")
    if kw.pop("return_final", False):
        raise ValueError(f"ldeq_{name}: return_final=True is not supported (ldeq returns each sample's "
                         f"lowest-residual iterate); pass return_final=False or use TorchDEQ's solver")
    if kw.pop("ls", False):
        raise ValueError(f"ldeq_{name}: ls=True (Broyden line search) is not supported; pass ls=False "
                         f"or use TorchDEQ's broyden")
    if "LBFGS_thres" in kw:
        thres = kw.pop("LBFGS_thres")
        if solver is not broyden:
            raise TypeError(f"ldeq_{name}: LBFGS_thres is a Broyden option")
        if thres is not None:
            if "memory" in kw:
                raise TypeError("ldeq_broyden: give LBFGS_thres or memory, not both")
            kw["memory"] = thres
    if solver is anderson and "lam" in kw:
        kw.setdefault("lam_mode", "abs")  # TorchDEQ's lam is absolute
    return kw


def as_torchdeq_solver(solver: Callable, name: Optional[str] = None) -> Callable:
    """Wrap an ldeq solver (tensor state) in TorchDEQ's signature and return convention."""

    def td_solver(func: Callable, x0: torch.Tensor, max_iter: int = 50, tol: float = 1e-3,
                  stop_mode: str = "abs", indexing: Optional[Sequence[int]] = None,
                  **kwargs) -> Tuple[torch.Tensor, List[torch.Tensor], Dict[str, torch.Tensor]]:
        kw = _map_options(solver, kwargs)
        want = sorted({int(i) for i in (indexing or ()) if 1 <= int(i) <= int(max_iter)})
        z, st = solver(func, x0, max_iter=int(max_iter), tol=float(tol), stop_mode=stop_mode,
                       trajectory=want or None, **kw)
        traj = [st.trajectory[k] for k in want if k in st.trajectory]
        if indexing and not traj:  # TorchDEQ: at least the final estimate when indexing is on
            traj = [z]
        return z, traj, to_torchdeq_stat(st)

    td_solver.__name__ = name or f"ldeq_{solver.__name__}"
    td_solver.__qualname__ = td_solver.__name__
    td_solver.__doc__ = (f"ldeq.solvers.{solver.__name__} with TorchDEQ's solver signature "
                         f"(see ldeq.solvers.torchdeq_compat).")
    return td_solver


def to_torchdeq_stat(st: SolverStats) -> Dict[str, torch.Tensor]:
    """ldeq SolverStats -> TorchDEQ's SolverStat dict (nstep as float, like TorchDEQ's)."""
    return _TDStat(abs_lowest=st.abs_lowest, rel_lowest=st.rel_lowest, abs_trace=st.abs_trace,
                   rel_trace=st.rel_trace, nstep=st.nstep.to(st.abs_lowest.dtype))


def from_torchdeq(td_solver, name: Optional[str] = None) -> Callable:
    """Wrap a TorchDEQ solver (a callable or a TorchDEQ registry name) as an ldeq solver
    ``solver(f, z0, *, max_iter, tol, stop_mode, trajectory, **kw) -> (z, SolverStats)``, usable
    by :func:`ldeq.solvers.deq`. ``beta`` is passed as TorchDEQ's ``tau``; other options go through
    unchanged. Traces are TorchDEQ's (its 1e8 placeholder column dropped; Anderson records from
    its third evaluation on); ``converged`` is the lowest residual in the stop mode <= tol;
    ``safeguard`` is all False (TorchDEQ has none)."""
    if isinstance(td_solver, str):
        td_name = td_solver
        td_solver = _td_solver.get_solver(td_solver) if td_solver in _td_solver._solvers else None
        if td_solver is None:
            raise ValueError(f"TorchDEQ has no solver {td_name!r}; registered: {sorted(_td_solver._solvers)}")
    if not callable(td_solver):
        raise TypeError(f"td_solver must be a TorchDEQ solver or its name, got {type(td_solver).__name__}")

    def solver(f: Callable, z0: torch.Tensor, *, max_iter: int = 50, tol: float = 1e-3, stop_mode: str = "rel",
               trajectory: Optional[Sequence[int]] = None, beta: Optional[float] = None,
               **kwargs) -> Tuple[torch.Tensor, SolverStats]:
        if beta is not None:
            if "tau" in kwargs:
                raise TypeError("give the damping as beta or tau, not both")
            kwargs["tau"] = beta
        want = sorted({int(i) for i in (trajectory or ())})
        with torch.no_grad():
            z, traj, info = td_solver(f, z0, max_iter=int(max_iter), tol=float(tol), stop_mode=stop_mode,
                                      indexing=want or None, **kwargs)
        a, r = info["abs_trace"], info["rel_trace"]
        if a.shape[1] > 1:
            a, r = a[:, 1:], r[:, 1:]
        low = info["rel_lowest"] if stop_mode == "rel" else info["abs_lowest"]
        B = z.shape[0]
        st = SolverStats(nstep=info["nstep"].to(torch.long).reshape(-1).expand(B).clone(),
                         abs_lowest=info["abs_lowest"], rel_lowest=info["rel_lowest"], abs_trace=a, rel_trace=r,
                         converged=low <= tol, safeguard=torch.zeros(B, dtype=torch.bool, device=z.device),
                         trajectory=dict(zip(want, traj)) if len(traj) <= len(want) else {},
                         solver=name or f"torchdeq_{getattr(td_solver, '__name__', 'solver')}",
                         stop_mode=stop_mode)
        return z, st

    solver.__name__ = name or f"torchdeq_{getattr(td_solver, '__name__', 'solver')}"
    return solver


@functools.lru_cache(maxsize=None)
def register_torchdeq() -> None:
    """Register ldeq's solvers in TorchDEQ's registry and TorchDEQ's in ldeq's (idempotent)."""
    for td_name, fn in LDEQ_IN_TORCHDEQ.items():
        _td_solver.register_solver(td_name, as_torchdeq_solver(fn, td_name))
    for ld_name, td_name in TORCHDEQ_IN_LDEQ.items():
        if ld_name not in _SOLVERS:
            register_solver(ld_name, from_torchdeq(td_name, ld_name))


def torchdeq_version() -> str:
    """The installed TorchDEQ's version (its distribution metadata; the package has no __version__)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("torchdeq")
    except PackageNotFoundError:  # pragma: no cover - a source checkout on sys.path
        return getattr(torchdeq, "__version__", "unknown")


if torchdeq_version() != TORCHDEQ_TESTED:  # pragma: no cover
    import warnings
    warnings.warn(f"ldeq.solvers.torchdeq_compat was tested with TorchDEQ {TORCHDEQ_TESTED}, found "
                  f"{torchdeq_version()}", RuntimeWarning, stacklevel=2)

register_torchdeq()
