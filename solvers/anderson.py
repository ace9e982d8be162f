"""Anderson acceleration with a fused, incrementally updated history (csrc/anderson)."""
import torch

from . import _kernels as K
from ._common import (FEval, _Tracker, check_common, check_float, check_int, check_trajectory,
                      reject_unknown, resolve_damping)


def check_backend(backend):
    if backend not in ("auto", "reference"):
        raise ValueError(f"backend must be 'auto' (compiled kernels when built) or 'reference' "
                         f"(pure PyTorch), got {backend!r}")
    return backend == "reference"


@torch.no_grad()
def anderson(f, z0, *, m=6, lam=1e-4, beta=None, tau=None, max_iter=50, tol=1e-3, stop_mode="rel",
             eps=1e-9, f_subset=None, trajectory=None, backend="auto", **unknown):
    """Solve z = f(z) by Anderson acceleration (type II, the DEQ / TorchDEQ variant).

    Iteration k >= 1 mixes the last n = min(k, m) iterates x_i and residuals g_i = f(x_i) - x_i:
        alpha = argmin ||sum_i alpha_i g_i||^2 + lam ||alpha||^2  s.t.  sum_i alpha_i = 1
        z_k   = sum_i alpha_i (x_i + beta g_i) = beta sum a_i f(x_i) + (1 - beta) sum a_i x_i
    (z_1 is therefore the damped step z0 + beta g_0). The Gram matrix of the residuals gets one new
    row per iteration and the small bordered system is solved in float64 for the whole batch; a
    singular/ill-conditioned system falls back to a regularised solve (``stats.safeguard``).

    Args:
        f: callable mapping a tensor shaped like z0 (batch first) to the same shape and dtype.
        z0: (B, ...) finite initial state (warm start: any z0).
        m: history size (>= 1). lam: Tikhonov regularisation of the Gram matrix (>= 0).
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
    beta = resolve_damping("anderson", beta, tau)
    its = check_trajectory(trajectory, max_iter)
    use_ref = check_backend(backend)
    feval = FEval(f, f_subset, z0)
    B, d = feval.B, feval.d
    z = z0.detach().reshape(B, d).contiguous()
    X = z.new_empty(m, B, d)
    G = z.new_empty(m, B, d)
    H = torch.zeros(B, m, m, dtype=torch.float64, device=z.device)
    X[0].copy_(z)
    tr = _Tracker(z, max_iter, tol, stop_mode, eps, its, "anderson")
    for k in range(max_iter):
        slot = k % m
        if k > 0:
            n = min(k, m)
            alpha, fallback = K.anderson_solve(H, n, lam, (k - 1) % m, use_reference=use_ref)
            tr.flag(fallback)
            tr.evict(slot)  # X[slot] is overwritten next: save lowest iterates that live there
            K.anderson_mix(X, G, alpha, beta, slot, n, tr.active, use_reference=use_ref)
        fz = feval(X[slot], tr.active, tr.n_active)
        res_sq, fz_sq = K.anderson_update(X, G, fz, H, slot, min(k + 1, m), tr.active,
                                          use_reference=use_ref)
        tr.record(k, res_sq.sqrt(), fz_sq.sqrt(), slot, X[slot])
        if tr.n_active == 0:
            break
    return tr.finish(z0.shape)
