"""Name -> solver registry (``get_solver('anderson')``), TorchDEQ-style."""
from typing import Callable, Dict, List

from .anderson import anderson
from .broyden import broyden
from .fixed_point import fixed_point, fixed_point_last

_SOLVERS: Dict[str, Callable] = {"anderson": anderson, "broyden": broyden, "fixed_point": fixed_point,
                                 "fixed_point_last": fixed_point_last}
_ALIASES: Dict[str, str] = {}
# 'fpi' meant two different loops in the past (per-sample lowest residual here, the official
# last-iterate loop in the model): it is refused with a pointer to the two names.
_RETIRED = {"fpi": "'fixed_point' (per-sample stop, lowest-residual iterate) or 'fixed_point_last' "
                   "(the official LDEQ loop: last iterate, batch-mean stop)"}


def available_solvers() -> List[str]:
    """Sorted names get_solver accepts (aliases included)."""
    return sorted(set(_SOLVERS) | set(_ALIASES))


def get_solver(name: str) -> Callable:
    """The solver registered as ``name`` (case-insensitive)."""
    if not isinstance(name, str):
        raise TypeError(f"solver name must be a string, got {type(name).__name__}")
    key = name.lower()
    if key in _RETIRED and key not in _SOLVERS:
        raise ValueError(f"solver {name!r} is ambiguous and no longer accepted; use {_RETIRED[key]}")
    key = _ALIASES.get(key, key)
    if key not in _SOLVERS:
        raise ValueError(f"unknown solver {name!r}; known solvers: {', '.join(available_solvers())}")
    return _SOLVERS[key]


def register_solver(name: str, fn: Callable, *, overwrite: bool = False) -> None:
    """Register ``fn(f, z0, *, max_iter, tol, stop_mode, ...) -> (z_star, stats)`` as ``name``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"solver name must be a non-empty string, got {name!r}")
    if not callable(fn):
        raise TypeError(f"solver {name!r} must be callable, got {type(fn).__name__}")
    key = name.lower()
    if (key in _SOLVERS or key in _ALIASES) and not overwrite:
        raise ValueError(f"solver {name!r} is already registered; pass overwrite=True to replace it")
    _ALIASES.pop(key, None)
    _SOLVERS[key] = fn
