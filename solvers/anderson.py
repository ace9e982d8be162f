"""Anderson acceleration with a fused, incrementally updated history (csrc/anderson)."""
from typing import Callable, Optional, Sequence, Tuple

import torch

from . import _kernels as K
from ._common import (FEval, StateLike, _Tracker, accepts_state_lists, check_common, check_float,
                      check_int, check_trajectory, history_empty, reject_unknown, resolve_damping)
from ._anderson_safeguard import resolve_kind, type1_bordered_solve
from ._stats import SolverStats

LAM_MODES = ("rel", "abs")
#: Default relative regularisation (lam_mode 'rel'), chosen by benchmarks/bench_time_to_tol.py.
LAM_DEFAULT = 1e-8
#: Default restart threshold of type-II Anderson: a sample whose residual exceeds this multiple of
#: its lowest residual so far, or whose lowest residual has not improved for m iterations, drops its
#: history (chosen by benchmarks/bench_time_to_tol.py: see docs/solvers.md). Type I (the default
#: kind) runs without restarts: they cost it convergence on the --probe grid.
RESTART_DEFAULT = 1.5


def masked_bordered_solve(H: torch.Tensor, n: int, lam: float, rel: bool, newest: int,
                          valid: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Anderson coefficients over the history slots each sample still trusts.

    H (B, m, m) float64 Gram matrix, n slots in use, valid (B, n) bool (the newest slot is always
    valid). Solves min ||sum_i a_i g_i||^2 + lam s ||a||^2 s.t. sum_i a_i = 1 and a_i = 0 on
    invalid slots (s = max valid H_ii when ``rel``, else 1) as one batched (B, n + 1) bordered
    system; a failed or non-finite solve retries with lam + 1e-6 (relative), then falls back to
    the plain step a = e_newest. No host synchronisation. Returns (alpha (B, n) f64, fallback (B,) bool).
    """
    B, dev, f64 = H.shape[0], H.device, torch.float64
    vf = valid.to(f64)
    Hn = H[:, :n, :n]
    diag = Hn.diagonal(dim1=1, dim2=2)
    scale = (diag * vf).amax(1).clamp_min(_TINY_GRAM)
    Hn = Hn / scale[:, None, None]  # O(1) entries in both modes: alpha does not change
    lam_eff = torch.full((B,), lam, dtype=f64, device=dev) if rel else lam / scale
    eye = torch.eye(n, dtype=f64, device=dev)
    A = torch.zeros(B, n + 1, n + 1, dtype=f64, device=dev)
    A[:, 0, 1:] = vf
    A[:, 1:, 0] = vf
    rhs = torch.zeros(B, n + 1, 1, dtype=f64, device=dev)
    rhs[:, 0] = 1.0
    e = torch.zeros(B, n, dtype=f64, device=dev)
    e[:, newest] = 1.0
    alpha, bad = e, torch.ones(B, dtype=torch.bool, device=dev)
    for extra in (1e-6, 0.0):  # the second solve (the requested lam) wins where it succeeds
        reg = (lam_eff + extra)[:, None] * vf + (1.0 - vf)  # invalid slots: a_i = 0 exactly
        A[:, 1:, 1:] = Hn * (vf[:, :, None] * vf[:, None, :]) + eye * reg[:, None, :]
        sol, info = torch.linalg.solve_ex(A, rhs)
        a = sol[:, 1:, 0]
        ok = (info == 0) & torch.isfinite(a).all(1)
        alpha = torch.where(ok[:, None], a, alpha)
        bad = ~ok if extra == 0.0 else bad & ~ok
    fallback = bad  # the requested regularisation failed (a larger one or the plain step was used)
    return alpha, fallback
# Smallest Gram scale the relative regularisation divides by (an exactly converged sample has H = 0).
_TINY_GRAM = 1e-300


def check_backend(backend: str) -> bool:
    if backend not in ("auto", "reference"):
        raise ValueError(f"backend must be 'auto' (compiled kernels when built) or 'reference' "
                         f"(pure PyTorch), got {backend!r}")
    return backend == "reference"


@accepts_state_lists
@torch.no_grad()
def anderson(f: Callable, z0: StateLike, *, m: int = 6, lam: float = LAM_DEFAULT, lam_mode: str = "rel",
             kind: Optional[str] = None, restart: Optional[float] = None, beta: Optional[float] = None, tau: Optional[float] = None, max_iter: int = 50,
             tol: float = 1e-3, stop_mode: str = "rel", eps: float = 1e-9,
             f_subset: Optional[Callable] = None, trajectory: Optional[Sequence[int]] = None,
             backend: str = "auto", **unknown) -> Tuple[StateLike, SolverStats]:
    """Solve z = f(z) by Anderson acceleration: type I by default, type II (the DEQ / TorchDEQ
    variant) with ``kind='II'``, with ``lam_mode='abs'`` or with ``restart`` given.

    Iteration k >= 1 mixes the last n = min(k, m) iterates x_i and residuals g_i = f(x_i) - x_i:
        alpha = argmin ||sum_i alpha_i g_i||^2 + lam s ||alpha||^2  s.t.  sum_i alpha_i = 1
    where s = max_i ||g_i||^2 (the Gram matrix's scale, per sample) with ``lam_mode='rel'`` (the
    default: the regularisation does not depend on how small the residuals already are) and
    s = 1 with ``lam_mode='abs'`` (TorchDEQ's absolute lam; its default lam = 1e-4 swamps the
    Gram matrix once residuals fall below ~1e-2 and Anderson degrades to averaging).
        z_k   = sum_i alpha_i (x_i + beta g_i) = beta sum a_i f(x_i) + (1 - beta) sum a_i x_i
    (z_1 is therefore the damped step z0 + beta g_0). The Gram matrix of the residuals gets one new
    row per iteration and the small bordered system is solved in float64 for the whole batch; a
    singular/ill-conditioned system falls back to a regularised solve (``stats.safeguard``).
    That is type II. Type I (``kind='I'``) instead solves for the alpha whose mixed residual is
    orthogonal to the differences of the iterates, (x_i - x_new)^T sum_j alpha_j g_j = 0 (the
    multisecant good-Broyden condition), from the cross Gram matrix <x_i, g_j> kept alongside
    (solvers/_anderson_safeguard.py); ``lam`` then only serves a singular system's retry.

    Args:
        f: callable mapping a tensor shaped like z0 (batch first) to the same shape and dtype.
        z0: (B, ...) finite initial state (warm start: any z0).
        z0: (B, ...) tensor, or a list/tuple of batch-first tensors of different shapes (then f
            takes and returns such a list; the result is one too).
        m: history size (>= 1). lam: Tikhonov regularisation of the Gram matrix (>= 0), relative to
            its scale (lam_mode 'rel') or absolute (lam_mode 'abs').
        kind: 'I' (type I), 'II' (type II, TorchDEQ's) or None (default): type I, unless
            ``lam_mode='abs'`` or ``restart`` is given (then type II: every call that names those
            options keeps its meaning). On the transformer instances of
            ``benchmarks/bench_time_to_tol.py --probe`` type I converges wherever Broyden does and
            type II (with or without restarts) does not (docs/solvers.md). Type I runs its small
            solve in batched torch, not in the fused kernel.
        restart: safeguard (0 = off; None: 0 for type I, RESTART_DEFAULT for type II): a sample whose residual (stop mode) exceeds ``restart`` x its
            lowest residual so far, or whose lowest residual has not improved for m iterations,
            forgets its history and takes a plain damped step from its newest iterate (a normal event,
            not flagged in stats.safeguard). Without it Anderson stalls on maps that are not contractive enough
            (a transformer layer: docs/solvers.md). With restart > 0 the small bordered system is
            solved in batched torch (masked slots); restart=0 uses the fused kernel solve.
        beta / tau: damping in (0, 1] (tau is TorchDEQ's name). max_iter: evaluations of f (>= 1).
        tol: per-sample stop threshold (>= 0; 0 runs exactly max_iter evaluations).
        stop_mode: 'rel' (||f(z)-z|| / (||f(z)|| + eps)) or 'abs' (||f(z)-z||), per sample.
        f_subset: optional (z_sub, index) -> f(z)[index]; once at most half the batch is still
            iterating, f is evaluated on the active samples only.
        trajectory: iteration numbers (1-based) at which to save the lowest-residual iterate so far.
        backend: 'auto' (fused kernels when built) or 'reference' (pure PyTorch).

    Returns:
        (z_star, stats): z_star (B, ...) the lowest-residual iterate of each sample (not f of it),
        stats a :class:`SolverStats`. Converged samples are frozen: no more mixing or history work
        for them, and with ``f_subset`` no more evaluations either.
    """
    reject_unknown(anderson, unknown)
    check_common(z0, max_iter, tol, stop_mode, eps)
    check_int("m", m, 1)
    lam = check_float("lam", lam, 0.0)
    if lam_mode not in LAM_MODES:
        raise ValueError(f"lam_mode must be 'rel' (lam relative to the Gram matrix's scale) or 'abs' "
                         f"(TorchDEQ's absolute lam), got {lam_mode!r}")
    kind = resolve_kind(kind, lam_mode, restart)
    if restart is None:
        restart = 0.0 if kind == "I" else RESTART_DEFAULT
    restart = check_float("restart", restart, 0.0)
    if 0.0 < restart < 1.0:
        raise ValueError(f"restart must be 0 (off) or a factor >= 1, got {restart!r}")
    beta = resolve_damping("anderson", beta, tau)
    its = check_trajectory(trajectory, max_iter)
    use_ref = check_backend(backend)
    feval = FEval(f, f_subset, z0)
    B, d = feval.B, feval.d
    z = z0.detach().reshape(B, d).contiguous()
    X = history_empty((m, B, d), z)  # iterates
    F = history_empty((m, B, d), z)  # f(iterates): an undamped mix reads only these
    G = history_empty((m, B, d), z)  # residuals F - X: the Gram matrix
    H = torch.zeros(B, m, m, dtype=torch.float64, device=z.device)
    X[0].copy_(z)
    tr = _Tracker(z, max_iter, tol, stop_mode, eps, its, "anderson", n_keys=m)
    Xs = tr.use_ring(X)  # fixed views of the slots: the tracker knows its buffers by identity
    # Iteration that last wrote each slot, kept on the device (scalar fills, no host copies: CUDA-graph safe).
    written = torch.zeros(m, dtype=torch.long, device=z.device)
    restart_at = torch.zeros(B, dtype=torch.long, device=z.device)  # slots written before are forgotten
    last_improved = torch.zeros(B, dtype=torch.long, device=z.device)
    C = torch.zeros(B, m, m, dtype=torch.float64, device=z.device) if kind == "I" else None  # <x_i, g_j>
    for k in range(max_iter):
        slot = k % m
        if k > 0:
            n = min(k, m)
            if restart > 0 or kind == "I":
                valid = written[None, :n] >= restart_at[:, None]
                if kind == "I":
                    alpha, fallback = type1_bordered_solve(C, n, (k - 1) % m, valid)
                else:
                    alpha, fallback = masked_bordered_solve(H, n, lam, lam_mode == "rel", (k - 1) % m, valid)
            else:
                Hk = H
                if lam_mode == "rel":  # alpha is invariant to scaling H: divide by its scale, keep lam
                    scale = H.diagonal(dim1=1, dim2=2)[:, :n].amax(1).clamp_min(_TINY_GRAM)
                    Hk = H / scale[:, None, None]
                alpha, fallback = K.anderson_solve(Hk, n, lam, (k - 1) % m, use_reference=use_ref)
            tr.flag(fallback)
            # X[slot] is overwritten: the mix saves the lowest iterates living there in the same pass.
            z_best, best_key = tr.evict_target()
            K.anderson_mix(X, F, G, alpha, beta, slot, n, tr.active, z_best, best_key, use_reference=use_ref)
            tr.evicted(slot, tr.active)
        fz = feval(Xs[slot], tr.active, tr.n_active, tr.active_host)
        # type I: the cross Gram row and column of this slot come from the same pass
        res_sq, fz_sq = K.anderson_update(X, G, F, fz, H, slot, min(k + 1, m), tr.active, C=C,
                                          use_reference=use_ref)
        lowest_before = tr.rel_lowest if stop_mode == "rel" else tr.abs_lowest
        tr.record(k, res_sq.sqrt(), fz_sq.sqrt(), slot, Xs[slot])
        if restart > 0:
            written[slot] = k
        if restart > 0 and k > 0:
            res = tr.rel_trace[:, k] if stop_mode == "rel" else tr.abs_trace[:, k]
            improved = res < lowest_before
            last_improved = torch.where(improved, torch.full_like(last_improved, k), last_improved)
            # blow-up, or no progress for m iterations since the last improvement and restart
            trigger = (res > restart * lowest_before) | ((k - last_improved >= m) & (k - restart_at >= m))
            restart_at = torch.where(trigger, torch.full_like(restart_at, k), restart_at)
        if tr.n_active == 0:
            break
    return tr.finish(z0.shape)
