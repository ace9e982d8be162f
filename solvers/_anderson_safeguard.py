"""Type-I ("good") Anderson mixing for :func:`ldeq.solvers.anderson` (``kind='I'``).

Type II (TorchDEQ's, ``kind='II'``) picks the mixing weights that minimise the mixed residual,
    alpha = argmin ||sum_i alpha_i g_i||  s.t.  sum_i alpha_i = 1,
from the Gram matrix of the residuals. Type I instead asks the mixed residual to be orthogonal to
the differences of the iterates (the secant condition of the multisecant *good* Broyden method):
    (x_i - x_new)^T sum_j alpha_j g_j = 0  for every other slot i,  sum_j alpha_j = 1,
a square, non-symmetric (n, n) system on the cross Gram matrix C_ij = <x_i, g_j>. Both give the
same iterate on a linear map with full memory; with a short window (m = 6) on the transformer-style
layers of benchmarks/bench_time_to_tol.py, type II stalls where Broyden converges and type I
converges (measured: docs/solvers.md, ``bench_time_to_tol.py --probe``).

Nothing here reads back to the host (batched tensor ops: CUDA-graph and fullgraph-compile safe).
"""
from typing import Tuple

import torch

#: Relative regularisation a singular type-I system retries with (then the plain step).
RETRY_REG = 1e-6
_TINY = 1e-300


def type1_bordered_solve(C: torch.Tensor, n: int, newest: int, valid: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Type-I Anderson weights over the slots each sample trusts.

    C (B, m, m) f64 cross Gram matrix, n slots in use, ``newest`` the slot of the newest iterate,
    valid (B, n) bool (the newest slot is always valid). Solves, per sample, the (n, n) system
        row newest:          sum_j alpha_j = 1
        row i (valid, != newest): sum_j (C_ij - C_newest,j) alpha_j = 0
        row i (invalid):     alpha_i = 0
    unregularised; where it is singular or non-finite, it retries with RETRY_REG x (the largest
    entry) on the diagonal of the secant rows, then falls back to the plain step a = e_newest.
    Returns (alpha (B, n) f64, fallback (B,) bool: the unregularised solve failed).
    """
    B, dev, f64 = C.shape[0], C.device, torch.float64
    vf = valid.to(f64)
    Cn = C[:, :n, :n]
    M = (Cn - Cn[:, newest:newest + 1, :]) * (vf[:, :, None] * vf[:, None, :])
    scale = M.abs().amax((1, 2)).clamp_min(_TINY)
    M = M / scale[:, None, None]  # O(1) entries: alpha does not change
    eye = torch.eye(n, dtype=f64, device=dev)
    secant = vf.clone()
    secant[:, newest] = 0.0  # rows that carry a secant condition
    rhs = torch.zeros(B, n, 1, dtype=f64, device=dev)
    rhs[:, newest] = 1.0
    e = rhs[:, :, 0].clone()
    alpha, bad = e, torch.ones(B, dtype=torch.bool, device=dev)
    for reg in (RETRY_REG, 0.0):  # the unregularised solve wins where it succeeds
        A = M + eye * ((1.0 - vf) + reg * secant)[:, None, :]
        A[:, newest, :] = vf
        sol, info = torch.linalg.solve_ex(A, rhs)
        a = sol[:, :, 0]
        ok = (info == 0) & torch.isfinite(a).all(1)
        alpha = torch.where(ok[:, None], a, alpha)
        bad = ~ok if reg == 0.0 else bad & ~ok
    return alpha, bad


KINDS = ("I", "II")


def resolve_kind(kind, lam_mode: str, restart) -> str:
    """``kind=None`` (the default): type I, unless TorchDEQ's computation is asked for
    (``lam_mode='abs'``) or restarts are set explicitly (a type-II safeguard; ``restart=0`` is
    TorchDEQ's plain type II), so every call that names those options keeps its meaning."""
    if kind is None:
        return "II" if (lam_mode == "abs" or restart is not None) else "I"
    if kind not in KINDS:
        raise ValueError(f"kind must be 'I' (type-I, secant Anderson), 'II' (type-II, TorchDEQ's) or None "
                         f"(I unless lam_mode='abs' or restart is given), got {kind!r}")
    return kind
