"""Plain (optionally damped) fixed-point iteration z <- (1 - beta) z + beta f(z)."""
import torch

from ._common import (FEval, _Tracker, check_common, check_trajectory, reject_unknown,
                      resolve_damping)


@torch.no_grad()
def fixed_point(f, z0, *, beta=None, tau=None, max_iter=50, tol=1e-3, stop_mode="rel", eps=1e-9,
                f_subset=None, trajectory=None, **unknown):
    """Solve z = f(z) by fixed-point iteration, with per-sample stopping.

    Args: as in :func:`anderson` (beta / tau: damping in (0, 1]).
    Returns: (z_star, stats), z_star the lowest-residual iterate per sample (not f of it).
    """
    reject_unknown(fixed_point, unknown)
    check_common(z0, max_iter, tol, stop_mode, eps)
    beta = resolve_damping("fixed_point", beta, tau)
    its = check_trajectory(trajectory, max_iter)
    feval = FEval(f, f_subset, z0)
    B, d = feval.B, feval.d
    z = z0.detach().reshape(B, d).clone(memory_format=torch.contiguous_format)
    tr = _Tracker(z, max_iter, tol, stop_mode, eps, its, "fixed_point")
    f64 = torch.float64
    for k in range(max_iter):
        fz = feval(z, tr.active, tr.n_active)
        g = fz - z
        tr.record(k, torch.linalg.vector_norm(g, dim=1, dtype=f64),
                  torch.linalg.vector_norm(fz, dim=1, dtype=f64), k % 2, z)
        if tr.n_active == 0 or k == max_iter - 1:
            break
        z_next = fz if beta == 1.0 else torch.add(z, g, alpha=beta)
        if tr.n_active < B:  # frozen samples keep their iterate
            z_next = torch.where(tr.active[:, None], z_next, z)
        z = z_next
    return tr.finish(z0.shape)
