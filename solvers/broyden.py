"""Limited-memory ("good") Broyden's method with fused low-rank updates (csrc/broyden)."""
from typing import Callable, Optional, Sequence, Tuple

import torch

from . import _kernels as K
from ._common import (FEval, StateLike, _Tracker, accepts_state_lists, check_common, check_int,
                      check_trajectory, history_empty, reject_unknown)
from ._stats import SolverStats
from .anderson import check_backend


@accepts_state_lists
@torch.no_grad()
def broyden(f: Callable, z0: StateLike, *, max_iter: int = 50, tol: float = 1e-3, stop_mode: str = "rel",
            memory: Optional[int] = None, eps: float = 1e-9, f_subset: Optional[Callable] = None,
            trajectory: Optional[Sequence[int]] = None, backend: str = "auto",
            **unknown) -> Tuple[StateLike, SolverStats]:
    """Solve g(z) = f(z) - z = 0 by Broyden's method without line search (the DEQ / TorchDEQ variant).

    The inverse Jacobian of g is kept as J^-1 ~ -I + sum_i s_i u_i v_i^T (identity start, so the
    first step is plain fixed-point iteration z_1 = f(z_0)); each step z <- z - J^-1 g(z) is
    followed by the rank-one update of J^-1 from (dz, dg). With ``memory`` = L the updates live in
    a ring buffer of L columns and the oldest is dropped (TorchDEQ's ``LBFGS_thres``). Two fused
    passes per iteration: dot products with V (+ the residual), then the update, the next step and
    its dot products with U together (so U is streamed once per iteration, V twice). When no column
    is ever dropped (memory None or >= max_iter - 2) V is not stored at all: each v_i is a float64
    combination of the past steps, which pass 1 reads in V's place, and pass 2 streams U alone.

    Args:
        f, z0, max_iter, tol, stop_mode, eps, f_subset, trajectory, backend: as in :func:`anderson`.
        memory: number of rank-one updates kept (>= 1); None keeps them all (max_iter - 1).

    Returns:
        (z_star, stats): the lowest-residual iterate per sample and a :class:`SolverStats`.
        A degenerate update (<v, dg> = 0 or not finite) is skipped and flagged in stats.safeguard.
    """
    reject_unknown(broyden, unknown)
    check_common(z0, max_iter, tol, stop_mode, eps)
    if memory is not None:
        check_int("memory", memory, 1)
    its = check_trajectory(trajectory, max_iter)
    use_ref = check_backend(backend)
    feval = FEval(f, f_subset, z0)
    B, d = feval.B, feval.d
    L = min(max_iter if memory is None else memory, max(1, max_iter - 1))
    # Updates happen at iterations 1 .. max_iter - 2: with L >= max_iter - 2 no column is ever
    # evicted, and each v_i is kept as float64 coefficients over the past steps instead of a stored
    # row (v_i = sum_j R_ij dx_j, see below): pass 2 then streams U only (n + 7 rows, not 2n + 8).
    implicit_v = L >= max_iter - 2
    z = z0.detach().reshape(B, d).contiguous()
    # The (B, d) state buffers come from the workspace too (no page faults per call): the ping-pong
    # iterates Z[0], Z[1] (Z[1] is fully written by the first step below), g_old, g_new.
    work = history_empty((4, B, d), z)
    Z = [work[0], work[1]]
    Z[0].copy_(z)
    g_old, g_new = work[2], work[3]
    tr = _Tracker(z, max_iter, tol, stop_mode, eps, its, "broyden")
    f64 = torch.float64

    U = history_empty((L, B, d), z)
    # The steps: with implicit v every step dx_0, dx_1, ... keeps its row D[j] (pass 1 reads the
    # past ones where it would read V, and the current one as dx); otherwise V is stored and the
    # step ping-pongs between two rows.
    V = None if implicit_v else history_empty((L, B, d), z)
    D = history_empty((max(1, max_iter - 1) if implicit_v else 2, B, d), z)
    fz = feval(Z[0], tr.active, tr.n_active, tr.active_host)
    # g0 = f(z0) - z0 and its norms in one fused pass (pass 1 with no columns; its dx input only
    # feeds a dot product unused here, so z0 stands in for it).
    dots = K.broyden_pass1(U, Z[0], fz, Z[0], g_old, 0, tr.active, use_reference=use_ref)
    tr.record(0, dots[:, 1].sqrt(), dots[:, 2].sqrt(), 0, Z[0])
    if tr.n_active == 0 or max_iter == 1:
        return tr.finish(z0.shape)
    D[0].copy_(g_old)  # first step: -J0^-1 g = g
    # Stopped samples keep z0 here, so the rows f sees stay finite.
    torch.add(Z[0], D[0], out=Z[1])
    torch.where(tr.active[:, None], Z[1], Z[0], out=Z[1])
    S = torch.zeros(L, B, dtype=f64, device=z.device)  # per-column scales s_i = 1 / <v_i, dg_i>
    udx = torch.zeros(B, 0, dtype=f64, device=z.device)  # <u_i, dx> of the columns in use (from pass 2)
    # Dots with g_old, kept from the passes that saw it as g_new: <v_i, g_old> per column and
    # <dx, g_old> (dx = g_old = g0 here). Then dg = g_new - g_old enters only through differences of
    # float64 dot products, and pass 1 never reads g_old.
    vg_old = torch.zeros(B, L, dtype=f64, device=z.device)
    dxg_old = dots[:, 1].clone()
    # implicit v: v_i = sum_j R[:, i, j] D[j] (j <= i). v_new = -dx + sum_i a_i v_i gives row n of R.
    R = torch.zeros(B, L, D.shape[0], dtype=f64, device=z.device) if implicit_v else None
    cur, n, nupd, step = 1, 0, 0, 0
    for k in range(1, max_iter):
        fz = feval(Z[cur], tr.active, tr.n_active, tr.active_host)
        dx = D[step]
        if implicit_v:  # dots with the past steps D[0..n-1], then c_i = <v_i, g_new> through R
            dots = K.broyden_pass1(D, dx, fz, Z[cur], g_new, n, tr.active, use_reference=use_ref)
            c = torch.einsum("bij,bj->bi", R[:, :n, :n], dots[:, :n])
        else:
            dots = K.broyden_pass1(V, dx, fz, Z[cur], g_new, n, tr.active, use_reference=use_ref)
            c = dots[:, :n]  # <v_i, g_new>
        tr.record(k, dots[:, n + 1].sqrt(), dots[:, n + 2].sqrt(), cur, Z[cur])
        if tr.n_active == 0 or k == max_iter - 1:
            break
        s_old = S[:n].t()  # (B, n)
        # u_i is stored unnormalised: <s_i u_i, dx> is the coefficient of v_i in the rmatvec.
        a, b = s_old * udx, c - vg_old[:, :n]  # b_i = <v_i, dg>
        slot = nupd % L
        vdg = -(dots[:, n] - dxg_old) + (a * b).sum(1)  # <v_new, dg>, v_new = -dx + V a, from dots only
        vg = -dots[:, n] + (a * c).sum(1)  # <v_new, g_new>
        ok = torch.isfinite(vdg) & (vdg != 0) & torch.isfinite(vg)
        tr.flag(~ok)
        s_new = torch.where(ok, 1.0 / torch.where(ok, vdg, torch.ones_like(vdg)), torch.zeros_like(vdg))
        sc = s_old * c
        if n == L:
            sc[:, slot] = 0.0  # the evicted column no longer belongs to J^-1 for the next step
        coef = torch.cat([a, s_old * b, sc, (s_new * torch.where(ok, vg, torch.zeros_like(vg)))[:, None]],
                         1).contiguous()
        # Z[1 - cur] is overwritten: pass 2 saves the lowest iterates living there in the same pass.
        z_best, best_key = tr.evict_target()
        nxt = step + 1 if implicit_v else 1 - step
        out = K.broyden_pass2(U, V, dx, D[nxt], Z[cur], Z[1 - cur], g_new, g_old, coef, slot, n, tr.active, z_best,
                              best_key, 1 - cur, use_reference=use_ref)
        n_next = min(n + 1, L)
        udx = out[:, :n_next]
        vg_old[:, :n] = c  # g_new becomes g_old: the columns kept, then the one written at slot
        if implicit_v:  # slot == n: R's row n, and <v_new, g_new> from the same dots (no stored v)
            R[:, n, :n] = torch.einsum("bi,bij->bj", a, R[:, :n, :n])
            R[:, n, n] = -1.0
            vg_old[:, slot] = vg
        else:
            vg_old[:, slot] = out[:, n_next]
        dxg_old = out[:, n_next + 1]
        tr.evicted(1 - cur, tr.active)
        S[slot] = torch.where(tr.active, s_new, S[slot])
        n, nupd = n_next, nupd + 1
        g_old, g_new = g_new, g_old
        cur, step = 1 - cur, nxt
    return tr.finish(z0.shape)
