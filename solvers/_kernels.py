"""Python entry points of the fused solver kernels (``torch.ops.ldeq.anderson_*``/``broyden_*``).

Each wrapper dispatches to the compiled kernel for the tensor's device when ``ldeq._C`` has one and
to the pure-PyTorch reference (:mod:`._reference`) otherwise; ``use_reference=True`` forces the
reference (the tests compare the two). Fake (meta) kernels are registered so the ops trace under
``torch.compile``. See csrc/anderson/anderson.h and csrc/broyden/broyden.h for the contracts.
"""
import torch

from . import _reference as ref

try:  # ldeq.solvers must not import the landmark model; ldeq._ext is the light extension loader
    from ldeq._ext import use_kernel
except ImportError:  # pragma: no cover - solvers used without the ldeq package
    def use_kernel(op, device_type):
        return False


def _compiled(op: str, t: torch.Tensor, use_reference: bool) -> bool:
    return not use_reference and use_kernel(op, t.device.type)


def anderson_update(X, G, F, fz, H, slot, n, active, C=None, use_reference=False):
    """G[slot] = fz - X[slot], F[slot] = fz and one new row of the Gram matrix H (with C, also the
    cross Gram row and column of type-I Anderson); returns (||g||^2, ||fz||^2) (B,) f64."""
    if _compiled("anderson_update", X, use_reference):
        return torch.ops.ldeq.anderson_update(X, G, F, fz.contiguous(), H, C, slot, n, active)
    return ref.anderson_update(X, G, F, fz, H, slot, n, active, C)


def anderson_solve(H, n, lam, newest, use_reference=False):
    """Mixing coefficients alpha (B, n) f64 of the bordered Anderson system and a fallback flag (B,)."""
    if _compiled("anderson_solve", H, use_reference):
        return torch.ops.ldeq.anderson_solve(H, n, float(lam), newest)
    return ref.bordered_solve(H, n, float(lam), newest)


def anderson_mix(X, F, G, alpha, beta, slot, n, active, z_best, best_key, use_reference=False):
    """X[slot] = sum_i alpha_i (F[i] - (1 - beta) G[i]) for the active samples, in one pass; first
    copies X[slot] of the active samples with best_key == slot to z_best."""
    if _compiled("anderson_mix", X, use_reference):
        return torch.ops.ldeq.anderson_mix(X, F, G, alpha, float(beta), slot, n, active, z_best, best_key)
    return ref.anderson_mix(X, F, G, alpha, float(beta), slot, n, active, z_best, best_key)


def broyden_pass1(V, dx, fz, z, g_new, n, active, use_reference=False):
    """g_new = fz - z and the (B, n + 3) f64 dot products [<v_i, g_new> | <dx, g_new>, ||g_new||^2,
    ||fz||^2] of the rank-one update."""
    if _compiled("broyden_pass1", fz, use_reference):
        return torch.ops.ldeq.broyden_pass1(V, dx, fz.contiguous(), z, g_new, n, active)
    return ref.broyden_pass1(V, dx, fz, z, g_new, n, active)


def broyden_pass2(U, V, dx, dx_next, z, z_next, g_new, g_old, coef, slot, n, active, z_best, best_key, evict_key,
                  use_reference=False):
    """Writes the new factor pair at ``slot`` (only u when V is None), the next step dx_next and
    z_next = z + dx_next (saving z_next's lowest iterates to z_best first); returns (B, n' + 2) f64,
    n' = min(n + 1, L): the next pass 1's <u_i, dx_next> over n' columns, then <V[slot], g_new> (0
    without V) and <dx_next, g_new> (g_new: the next g_old)."""
    if _compiled("broyden_pass2", z, use_reference):
        return torch.ops.ldeq.broyden_pass2(U, V, dx, dx_next, z, z_next, g_new, g_old, coef, slot, n, active,
                                            z_best, best_key, evict_key)
    return ref.broyden_pass2(U, V, dx, dx_next, z, z_next, g_new, g_old, coef, slot, n, active, z_best, best_key,
                             evict_key)


def _register_fakes():
    if not hasattr(torch.ops, "ldeq") or not hasattr(torch.ops.ldeq, "anderson_update"):
        return
    lib = torch.library

    @lib.register_fake("ldeq::anderson_update")
    def _(X, G, F, fz, H, C, slot, n, active):
        B = X.shape[1]
        return X.new_empty(B, dtype=torch.float64), X.new_empty(B, dtype=torch.float64)

    @lib.register_fake("ldeq::anderson_solve")
    def _(H, n, lam, newest):
        return H.new_empty(H.shape[0], n), H.new_empty(H.shape[0], dtype=torch.bool)

    @lib.register_fake("ldeq::anderson_mix")
    def _(X, F, G, alpha, beta, slot, n, active, z_best, best_key):
        return None

    @lib.register_fake("ldeq::broyden_pass1")
    def _(V, dx, fz, z, g_new, n, active):
        return fz.new_empty(fz.shape[0], n + 3, dtype=torch.float64)

    @lib.register_fake("ldeq::broyden_pass2")
    def _(U, V, dx, dx_next, z, z_next, g_new, g_old, coef, slot, n, active, z_best, best_key, evict_key):
        return z.new_empty(z.shape[0], min(n + 1, U.shape[0]) + 2, dtype=torch.float64)


try:
    import ldeq._ext  # noqa: F401  (loads the extension so the schemas exist)
    _register_fakes()
except (ImportError, RuntimeError):  # pragma: no cover - no extension, or fakes already registered
    pass
