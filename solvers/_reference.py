"""Pure-PyTorch reference of every solver kernel: the oracle the tests compare the fused C++/CUDA
kernels against, and the fallback when ``ldeq._C`` is not built.

Shapes (B = batch, d = flattened state size, m / L = history length, n = slots in use):
  Anderson: X, F, G (m, B, d) iterates x_i, f(x_i) and residuals g_i = f(x_i) - x_i; H (B, m, m) float64 Gram
            matrix H_ij = <g_i, g_j>; active (B,) bool (inactive samples are left untouched).
  Broyden:  U, V (L, B, d) the low-rank inverse-Jacobian factors J^-1 ~ -I + sum_i s_i u_i v_i^T.
Reductions accumulate in float64 whatever the state dtype.
"""
import torch

F64 = torch.float64


def _rows(active):
    return active.nonzero().flatten()


# ---------------------------------------------------------------------------------------------
# Anderson
# ---------------------------------------------------------------------------------------------
def anderson_update(X, G, F, fz, H, slot: int, n: int, active, C=None):
    """G[slot] = fz - X[slot], F[slot] = fz; H[:, slot, i] = H[:, i, slot] = <G[slot], G[i]> for i < n;
    with C (B, m, m) f64 also C[:, slot, i] = <X[slot], G[i]> and C[:, i, slot] = <X[i], G[slot]>.

    Returns (res_sq, fz_sq): (B,) float64 squared norms ||fz - X[slot]||^2 and ||fz||^2
    (zero for inactive samples).
    """
    B = fz.shape[0]
    res_sq = torch.zeros(B, dtype=F64, device=fz.device)
    fz_sq = torch.zeros_like(res_sq)
    r = _rows(active)
    if r.numel() == 0:
        return res_sq, fz_sq
    g = fz[r] - X[slot][r]
    G[slot, r] = g
    F[slot, r] = fz[r]
    g64 = g.to(F64)
    row = torch.einsum("bd,nbd->bn", g64, G[:n][:, r].to(F64))  # (b, n)
    Hr = H[r]
    Hr[:, slot, :n] = row
    Hr[:, :n, slot] = row
    H[r] = Hr
    if C is not None:
        Gn = G[:n][:, r].to(F64)
        Cr = C[r]
        Cr[:, slot, :n] = torch.einsum("bd,nbd->bn", X[slot][r].to(F64), Gn)
        Cr[:, :n, slot] = torch.einsum("nbd,bd->bn", X[:n][:, r].to(F64), g64)
        C[r] = Cr
    res_sq[r] = (g64 * g64).sum(1)
    f64 = fz[r].to(F64)
    fz_sq[r] = (f64 * f64).sum(1)
    return res_sq, fz_sq


def bordered_solve(H, n: int, lam: float, newest: int):
    """Anderson coefficients for every sample: alpha = argmin ||sum_i alpha_i g_i||^2 + lam||alpha||^2
    subject to sum(alpha) = 1, via the bordered system [[0, 1^T], [1, H + lam I]] [nu; alpha] = [1; 0].

    A singular or ill-conditioned system (duplicate residuals, lam = 0, overflow) retries with a
    larger regularisation (scaled to trace(H)/n); if H itself is not finite the coefficients fall
    back to a plain step from the newest iterate (alpha = e_newest). Never returns NaN.
    Returns alpha (B, n) float64 and fallback (B,) bool.
    """
    B = H.shape[0]
    Hn = H[:, :n, :n].to(F64)
    alpha = torch.zeros(B, n, dtype=F64, device=H.device)
    fallback = torch.zeros(B, dtype=torch.bool, device=H.device)
    for b in range(B):
        a, fb = _solve_one(Hn[b], n, lam, newest)
        alpha[b], fallback[b] = a, fb
    return alpha, fallback


def _solve_one(Hb, n, lam, newest):
    e = torch.zeros(n, dtype=F64, device=Hb.device)
    e[newest] = 1.0
    if not bool(torch.isfinite(Hb).all()):
        return e, True
    s0 = float(torch.diagonal(Hb).max())
    for i, reg in enumerate((lam, lam + 1e-10 * s0, lam + 1e-6 * s0, lam + 1e-2 * s0)):
        M = Hb + reg * torch.eye(n, dtype=F64, device=Hb.device)
        s = float(torch.diagonal(M).max())
        if not s > 0 or s == float("inf"):
            return e, True
        # alpha is invariant to scaling H + reg I: scale it to O(1) so that the pivot test below
        # measures conditioning, not the size of the residuals.
        A = torch.zeros(n + 1, n + 1, dtype=F64, device=Hb.device)
        A[0, 1:] = 1.0
        A[1:, 0] = 1.0
        A[1:, 1:] = M / s
        rhs = torch.zeros(n + 1, dtype=F64, device=Hb.device)
        rhs[0] = 1.0
        sol = _gauss(A, rhs)
        if sol is not None:
            return sol[1:], i > 0
    return e, True


def _gauss(A, rhs, tiny=1e-13):
    """Gaussian elimination with partial pivoting, the same algorithm as the C++ kernel; None when
    a pivot is below ``tiny`` (A is O(1)) or the result is not finite."""
    A, x = A.clone(), rhs.clone()
    N = A.shape[0]
    for c in range(N):
        p = c + int(A[c:, c].abs().argmax())
        if float(A[p, c].abs()) <= tiny:
            return None
        if p != c:
            A[[c, p]] = A[[p, c]]
            x[[c, p]] = x[[p, c]]
        for r in range(c + 1, N):
            fac = A[r, c] / A[c, c]
            A[r, c:] -= fac * A[c, c:]
            x[r] -= fac * x[c]
    for c in range(N - 1, -1, -1):
        x[c] = (x[c] - (A[c, c + 1:] * x[c + 1:]).sum()) / A[c, c]
    if not bool(torch.isfinite(x).all()):
        return None
    return x


def anderson_mix(X, F, G, alpha, beta: float, slot: int, n: int, active, z_best, best_key):
    """X[slot] = sum_{i<n} alpha_i (F_i - (1 - beta) G_i)  (= sum a_i (X_i + beta G_i)), for active
    samples; alpha (B, n) float64. In place: slot may be one of the mixed slots. First, X[slot] of
    the active samples with best_key == slot (their lowest iterate) is copied to z_best."""
    r = _rows(active)
    if r.numel() == 0:
        return
    ev = _rows(active & (best_key == slot))
    if ev.numel():
        z_best[ev] = X[slot][ev]
    a = alpha[r].to(X.dtype if X.dtype == F64 else torch.float32)
    mixed = F[:n][:, r].to(a.dtype)
    if beta != 1.0:
        mixed = mixed - (1.0 - beta) * G[:n][:, r].to(a.dtype)
    X[slot, r] = torch.einsum("bn,nbd->bd", a, mixed).to(X.dtype)


# ---------------------------------------------------------------------------------------------
# Broyden
# ---------------------------------------------------------------------------------------------
def broyden_pass1(V, dx, fz, z, g_new, n: int, active):
    """g_new = fz - z, then the dot products the rank-one update needs, per active sample:
    c_i = <v_i, g_new> (i < n), <dx, g_new>, ||g_new||^2, ||fz||^2. (a_i = <u_i, dx>, <v_i, g_old>
    and <dx, g_old> come from the previous :func:`broyden_pass2` or this pass one iteration earlier.)
    Returns (B, n + 3) float64 [c | scalars] (zero rows for inactive samples)."""
    B = fz.shape[0]
    out = torch.zeros(B, n + 3, dtype=F64, device=fz.device)
    r = _rows(active)
    if r.numel() == 0:
        return out
    g = fz[r] - z[r]
    g_new[r] = g
    g64, dx64 = g.to(F64), dx[r].to(F64)
    if n > 0:
        out[r, :n] = torch.einsum("nbd,bd->bn", V[:n][:, r].to(F64), g64)
    out[r, n] = (dx64 * g64).sum(1)
    out[r, n + 1] = (g64 * g64).sum(1)
    f64 = fz[r].to(F64)
    out[r, n + 2] = (f64 * f64).sum(1)
    return out


def broyden_pass2(U, V, dx, dx_next, z, z_next, g_new, g_old, coef, slot: int, n: int, active, z_best, best_key,
                  evict_key: int):
    """The rank-one update and the next step in one pass, per active sample; coef (B, 3n + 1)
    float64 = [a | sb | sc | k_new]:
      v  = -dx + sum_i a_i v_i                    -> V[slot]   (only when V is not None)
      u~ = dx + (g_new - g_old) - sum_i sb_i u_i  -> U[slot]   (unnormalised; scale kept outside)
      dx_next = g_new - sum_i sc_i u_i - k_new u~ (the next step, -J^-1 g_new)
      z_next = z + dx_next
    All reads of the old columns (slot may be one of them) happen before the writes. z_next of the
    active samples with best_key == evict_key is first copied to z_best. Returns [<u_i, dx_next>
    over the n' = min(n + 1, L) columns in use afterwards | <V[slot], g_new> (0 without V) |
    <dx_next, g_new>] (the new values as stored): (B, n' + 2) float64, zero for inactive rows."""
    n_next = min(n + 1, U.shape[0])
    out = torch.zeros(z.shape[0], n_next + 2, dtype=F64, device=z.device)
    r = _rows(active)
    if r.numel() == 0:
        return out
    ev = _rows(active & (best_key == evict_key))
    if ev.numel():
        z_best[ev] = z_next[ev]
    acc = F64 if U.dtype == F64 else torch.float32
    c = coef[r].to(acc)
    a, sb, sc, kn = c[:, :n], c[:, n:2 * n], c[:, 2 * n:3 * n], c[:, 3 * n:3 * n + 1]
    dxr, gn, go = dx[r].to(acc), g_new[r].to(acc), g_old[r].to(acc)
    v, u, upd = -dxr, dxr + (gn - go), gn.clone()
    if n > 0:
        Ur = U[:n][:, r].to(acc)
        if V is not None:
            v = v + torch.einsum("bn,nbd->bd", a, V[:n][:, r].to(acc))
        u = u - torch.einsum("bn,nbd->bd", sb, Ur)
        upd = upd - torch.einsum("bn,nbd->bd", sc, Ur)
    u = u.to(U.dtype)  # the next step uses u as stored
    upd = upd - kn * u.to(acc)
    if V is not None:
        V[slot, r] = v.to(V.dtype)
    U[slot, r] = u
    dx_next[r] = upd.to(dx_next.dtype)
    z_next[r] = (z[r].to(acc) + upd).to(z.dtype)
    dx64, g64 = dx_next[r].to(F64), g_new[r].to(F64)
    out[r, :n_next] = torch.einsum("nbd,bd->bn", U[:n_next][:, r].to(F64), dx64)
    if V is not None:
        out[r, n_next] = (V[slot, r].to(F64) * g64).sum(1)
    out[r, n_next + 1] = (dx64 * g64).sum(1)
    return out
