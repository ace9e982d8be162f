"""ldeq.solvers correctness in float64 against independent references: direct linear solves,
scipy.optimize, TorchDEQ iterate for iterate, and single-sample solves for per-sample stopping."""
import subprocess
import sys

import numpy as np
import pytest
import scipy.optimize
import torch

import ldeq.solvers as S

F64 = torch.float64
SOLVERS = ["anderson", "broyden", "fixed_point"]


def linear_problem(B=4, d=24, rho=0.7, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(B, d, d, generator=g, dtype=F64)
    A = rho * A / torch.linalg.matrix_norm(A, 2)[:, None, None]
    b = torch.randn(B, d, generator=g, dtype=F64)
    z_exact = torch.linalg.solve(torch.eye(d, dtype=F64) - A, b)
    return (lambda z: (A @ z[..., None])[..., 0] + b), z_exact


def tanh_problem(B=3, d=30, rho=0.8, seed=1):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(B, d, d, generator=g, dtype=F64)
    W = rho * W / torch.linalg.matrix_norm(W, 2)[:, None, None]
    x = torch.randn(B, d, generator=g, dtype=F64)
    return (lambda z: torch.tanh((W @ z[..., None])[..., 0] + x)), W, x


@pytest.mark.parametrize("name", SOLVERS)
def test_linear_contraction_matches_direct_solve(name, device):
    f, z_exact = linear_problem()
    f_dev = lambda z: f(z.cpu()).to(z.device)
    z0 = torch.zeros_like(z_exact, device=device)
    z, st = S.get_solver(name)(f_dev, z0, max_iter=300, tol=1e-11, stop_mode="abs")
    assert bool(st.converged.all()), st.summary()
    assert float(st.abs_lowest.max()) < 1e-11
    # ||z - z*|| <= ||f(z) - z|| / (1 - rho) for a rho-contraction
    assert torch.allclose(z.cpu(), z_exact, atol=1e-11 / 0.3, rtol=0)
    # the reported residual is the residual of the returned iterate
    res = torch.linalg.vector_norm(f(z.cpu()) - z.cpu(), dim=1)
    torch.testing.assert_close(res, st.abs_lowest.cpu(), rtol=1e-6, atol=1e-14)


@pytest.mark.parametrize("name", SOLVERS)
def test_tanh_contraction_agrees_with_scipy_root(name):
    f, W, x = tanh_problem()
    z, st = S.get_solver(name)(f, torch.zeros_like(x), max_iter=200, tol=1e-12, stop_mode="rel", lam=1e-12) \
        if name == "anderson" else S.get_solver(name)(f, torch.zeros_like(x), max_iter=200, tol=1e-12)
    assert bool(st.converged.all()), st.summary()
    for b in range(x.shape[0]):
        Wb, xb = W[b].numpy(), x[b].numpy()
        sol = scipy.optimize.root(lambda v: np.tanh(Wb @ v + xb) - v, np.zeros(x.shape[1]), tol=1e-14)
        assert sol.success
        np.testing.assert_allclose(z[b].numpy(), sol.x, atol=1e-10)


def test_agrees_with_scipy_anderson_and_broyden1():
    f, W, x = tanh_problem(B=1, d=12)
    Wb, xb = W[0].numpy(), x[0].numpy()
    F = lambda v: np.tanh(Wb @ v + xb) - v
    za = scipy.optimize.anderson(F, np.zeros(12), f_tol=1e-12, M=6)
    zb = scipy.optimize.broyden1(F, np.zeros(12), f_tol=1e-12)
    ours_a, _ = S.anderson(f, torch.zeros_like(x), m=6, lam=1e-12, max_iter=200, tol=1e-13, stop_mode="abs")
    ours_b, _ = S.broyden(f, torch.zeros_like(x), max_iter=200, tol=1e-13, stop_mode="abs")
    np.testing.assert_allclose(ours_a[0].numpy(), za, atol=1e-10)
    np.testing.assert_allclose(ours_b[0].numpy(), zb, atol=1e-10)


# ---- TorchDEQ, iterate for iterate ----------------------------------------------------------
@pytest.fixture(scope="module")
def torchdeq_solver():
    """TorchDEQ (a test dependency, pinned in the `test` extra): missing means these tests fail."""
    import torchdeq.solver
    return torchdeq.solver


@pytest.mark.parametrize("m,lam", [(5, 1e-4), (3, 1e-2), (6, 0.0)])
def test_anderson_matches_torchdeq_iterate_for_iterate(m, lam, torchdeq_solver):
    f, W, x = tanh_problem()
    z0 = 0.1 * torch.ones_like(x)
    T = 14
    zt, _, it = torchdeq_solver.anderson_solver(f, z0, max_iter=T, tol=0, stop_mode="abs", m=m, lam=lam)
    z, st = S.anderson(f, z0, max_iter=T, tol=0, stop_mode="abs", m=m, lam=lam, lam_mode="abs", restart=0)
    # TorchDEQ records from its third evaluation on (column 0 is its 1e8 placeholder).
    torch.testing.assert_close(st.abs_trace[:, 2:], it["abs_trace"][:, 1:], rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(st.rel_trace[:, 2:], it["rel_trace"][:, 1:], rtol=1e-9, atol=1e-13)
    # TorchDEQ returns f(z) at the lowest residual, we return z itself.
    torch.testing.assert_close(f(z), zt, rtol=0, atol=1e-12)
    assert (st.nstep == T).all()


@pytest.mark.parametrize("memory", [None, 3, 1])
@pytest.mark.parametrize("stop_mode", ["abs", "rel"])
def test_broyden_matches_torchdeq_iterate_for_iterate(memory, stop_mode, torchdeq_solver):
    f, W, x = tanh_problem()
    z0 = torch.zeros_like(x)
    T = 12
    zt, _, it = torchdeq_solver.broyden_solver(f, z0, max_iter=T, tol=0, stop_mode=stop_mode,
                                               LBFGS_thres=memory)
    z, st = S.broyden(f, z0, max_iter=T + 1, tol=0, stop_mode=stop_mode, memory=memory)
    # Ours also records the residual at z0; TorchDEQ starts at its first step.
    torch.testing.assert_close(st.abs_trace[:, 1:], it["abs_trace"][:, 1:], rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(st.rel_trace[:, 1:], it["rel_trace"][:, 1:], rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(z, zt, rtol=0, atol=1e-12)


def test_broyden_implicit_v_matches_stored_v():
    """memory >= max_iter - 2 keeps no V (v_i as float64 coefficients over the steps); one less
    stores V and evicts only at the last update. Every residual before that update's effect must
    agree (float64: to rounding), and the eviction must change the last one."""
    f, _, x = tanh_problem(rho=0.95)
    z0 = torch.zeros_like(x)
    T = 12
    _, s_impl = S.broyden(f, z0, max_iter=T, tol=0, stop_mode="abs", memory=T - 2)
    _, s_stored = S.broyden(f, z0, max_iter=T, tol=0, stop_mode="abs", memory=T - 3)
    torch.testing.assert_close(s_impl.abs_trace[:, :T - 1], s_stored.abs_trace[:, :T - 1], rtol=1e-10, atol=1e-14)
    assert not torch.allclose(s_impl.abs_trace[:, T - 1], s_stored.abs_trace[:, T - 1], rtol=1e-10, atol=0)


@pytest.mark.parametrize("tau", [1.0, 0.6])
def test_fixed_point_matches_torchdeq_iterate_for_iterate(tau, torchdeq_solver):
    f, W, x = tanh_problem()
    z0 = torch.zeros_like(x)
    zt, _, it = torchdeq_solver.fixed_point_iter(f, z0, max_iter=10, tol=0, stop_mode="abs", tau=tau)
    z, st = S.fixed_point(f, z0, max_iter=10, tol=0, stop_mode="abs", tau=tau)
    # TorchDEQ's residual is that of the damped map, tau * ||f(z) - z||; the iterates coincide.
    torch.testing.assert_close(tau * st.abs_trace, it["abs_trace"][:, 1:], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(z + tau * (f(z) - z), zt, rtol=0, atol=1e-13)


# ---- per-sample convergence ----------------------------------------------------------------
def hetero_problem():
    """Per-sample contraction rates 0.1 .. 0.95: very different iteration counts."""
    g = torch.Generator().manual_seed(3)
    rates = torch.tensor([0.1, 0.85, 0.5, 0.7, 0.3], dtype=F64)
    B, d = len(rates), 16
    Q = torch.linalg.qr(torch.randn(B, d, d, generator=g, dtype=F64))[0]
    A = rates[:, None, None] * Q
    b = torch.randn(B, d, generator=g, dtype=F64)
    calls = {"rows": 0}

    # Row-wise products, so a sample's f(z) is bitwise the same in any batch.
    def f(z):
        calls["rows"] += z.shape[0]
        return (A * z[:, None, :]).sum(-1) + b

    def f_subset(z, idx):
        calls["rows"] += z.shape[0]
        return (A[idx] * z[:, None, :]).sum(-1) + b[idx]

    def f_one(i):
        return lambda z: (A[i:i + 1] * z[:, None, :]).sum(-1) + b[i:i + 1]

    return f, f_subset, f_one, b, calls


HETERO_RATE_MAX = 0.85  # the largest contraction rate in hetero_problem()


def batch_shape_bounds(z, nsteps):
    """Rounding bounds for one sample solved inside different batch shapes (float64).

    Batched reductions (dot products, Gram matrices, small solves) may round differently for a
    batch of 5 and a batch of 1 (other BLAS kernels, other chunking, other ISA), so iterates are
    equal only up to rounding, never bitwise. Each step adds at most ~eps * ||z|| of rounding, and
    the linear map's condition number kappa = (1 + rho) / (1 - rho) (singular values of I - rho Q
    lie in [1 - rho, 1 + rho]) bounds how much the solve amplifies it, so after n steps
    ||dz|| <= n * kappa * eps * ||z||. The residual ||f(z) - z|| changes by at most
    (1 + rho) ||dz||, and the relative residual by that over ||f(z)|| ~ ||z||. A safety factor of 10
    covers the constants the bound leaves out. Returns (bound on |dz| per entry, bound on |d rel|).
    Both are far below what a wrongly frozen or wrongly continued sample would change (about
    tol * ||z|| = 1e-9 * ||z||).
    """
    eps = torch.finfo(F64).eps
    rho = HETERO_RATE_MAX
    kappa = (1 + rho) / (1 - rho)
    dz = 10 * nsteps * kappa * eps * float(torch.linalg.vector_norm(z))
    drel = 10 * nsteps * kappa * (1 + rho) * eps
    return dz, drel


@pytest.mark.parametrize("name", SOLVERS)
def test_heterogeneous_batch_matches_single_sample_solves(name):
    f, f_subset, f_one, b, calls = hetero_problem()
    solver = S.get_solver(name)
    tol = 1e-9
    kw = dict(max_iter=400, tol=tol, stop_mode="rel", **({"lam": 1e-12} if name == "anderson" else {}))
    z, st = solver(f, torch.zeros_like(b), **kw)
    assert bool(st.converged.all())
    assert len(set(st.nstep.tolist())) >= 3  # genuinely different stopping points
    for i in range(b.shape[0]):
        zi, sti = solver(f_one(i), torch.zeros_like(b[i:i + 1]), **kw)
        n = int(sti.nstep[0])
        dz, drel = batch_shape_bounds(zi[0], n)
        if int(st.nstep[i]) != n:
            # Only possible when the residual lands within rounding of tol at the stopping step.
            k = min(int(st.nstep[i]), n) - 1
            assert abs(float(sti.rel_trace[0, k]) - tol) <= drel, (int(st.nstep[i]), n)
        else:  # a stopped sample costs no more steps, and its iterate is frozen
            torch.testing.assert_close(z[i], zi[0], rtol=0, atol=dz)
        m = min(int(st.nstep[i]), n)
        torch.testing.assert_close(st.rel_trace[i, :m], sti.rel_trace[0, :m], rtol=0, atol=drel)
        # after stopping, the trace repeats the last value
        assert bool((st.rel_trace[i, int(st.nstep[i]):] == st.rel_trace[i, int(st.nstep[i]) - 1]).all())


@pytest.mark.parametrize("name", SOLVERS)
def test_f_subset_evaluates_only_active_samples(name):
    f, f_subset, f_one, b, calls = hetero_problem()
    solver = S.get_solver(name)
    kw = dict(max_iter=400, tol=1e-9, stop_mode="rel", **({"lam": 1e-12} if name == "anderson" else {}))
    z_full, st_full = solver(f, torch.zeros_like(b), **kw)
    rows_full = calls["rows"]
    calls["rows"] = 0
    z_sub, st_sub = solver(f, torch.zeros_like(b), f_subset=f_subset, **kw)
    dz, _ = batch_shape_bounds(z_full.abs().amax(0), int(st_full.nstep.max()))  # subsets: other batch shapes
    torch.testing.assert_close(z_sub, z_full, rtol=0, atol=dz)
    assert torch.equal(st_sub.nstep, st_full.nstep)
    # Full-batch calls while more than half the batch is active, then only the active rows.
    B, T = b.shape[0], int(st_full.nstep.max())
    assert rows_full == B * T
    n_act = [int((st_full.nstep > k).sum()) for k in range(T)]
    assert calls["rows"] == sum(n if n <= B / 2 else B for n in n_act)
    assert calls["rows"] < rows_full


# ---- options ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SOLVERS)
def test_warm_start_from_the_fixed_point_stops_at_once(name):
    f, z_exact = linear_problem()
    z, st = S.get_solver(name)(f, z_exact.clone(), max_iter=50, tol=1e-10, stop_mode="abs")
    assert (st.nstep == 1).all()
    torch.testing.assert_close(z, z_exact, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", SOLVERS)
def test_trajectory_holds_the_lowest_iterate_so_far(name):
    f, W, x = tanh_problem()
    solver = S.get_solver(name)
    z, st = solver(f, torch.zeros_like(x), max_iter=9, tol=0, trajectory=[3, 6])
    assert sorted(st.trajectory) == [3, 6]
    for k in (3, 6):
        zk, _ = solver(f, torch.zeros_like(x), max_iter=k, tol=0)
        torch.testing.assert_close(st.trajectory[k], zk, rtol=0, atol=0)


@pytest.mark.parametrize("tol", [0.0, 1e-12])
@pytest.mark.parametrize("name,kw", [("anderson", dict(m=2, restart=0, lam=1e-4, lam_mode="abs")),
                                     ("anderson", dict(m=2)), ("broyden", dict(memory=2)),
                                     ("anderson", dict(m=3, backend="reference"))])
def test_lowest_iterate_survives_its_buffer_being_overwritten(name, kw, tol):
    """A map the solvers do not converge on (gain 5: residuals go up and down), a short history:
    the lowest-residual iterate is overwritten in the solver's buffers many times over, so the
    returned z must have been saved by the overwriting pass. Oracle: ||f(z) - z|| recomputed in
    float64 equals the smallest residual in the trace, per sample."""
    f, W, x = tanh_problem(B=4, rho=5.0, seed=4)
    z, st = S.get_solver(name)(f, torch.zeros_like(x), max_iter=40, tol=tol, stop_mode="abs", **kw)
    res = (f(z) - z).norm(dim=1)
    lowest = st.abs_trace.min(1).values
    torch.testing.assert_close(res, lowest, rtol=1e-12, atol=0)
    # some sample's minimum came more than a history length before the end, so its buffer was
    # overwritten afterwards: the case this test exists for
    assert bool((39 - st.abs_trace.argmin(1) > 4).any())


def test_anderson_damping_and_shapes():
    f, W, x = tanh_problem(B=2, d=36)
    f4 = lambda z: f(z.reshape(2, 36)).reshape(2, 3, 3, 4)
    z, st = S.anderson(f4, torch.zeros(2, 3, 3, 4, dtype=F64), beta=0.5, max_iter=200, tol=1e-10, lam=1e-12)
    assert z.shape == (2, 3, 3, 4) and bool(st.converged.all())
    torch.testing.assert_close(f4(z), z, rtol=0, atol=1e-8)
    assert st.abs_trace.shape == (2, int(st.nstep.max()))


def test_solver_kernels_and_reference_give_the_same_solve():
    f, W, x = tanh_problem()
    for name in ("anderson", "broyden"):
        solver = S.get_solver(name)
        za, sa = solver(f, torch.zeros_like(x), max_iter=15, tol=0)
        zr, sr = solver(f, torch.zeros_like(x), max_iter=15, tol=0, backend="reference")
        torch.testing.assert_close(za, zr, rtol=0, atol=1e-12)
        torch.testing.assert_close(sa.rel_trace, sr.rel_trace, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", SOLVERS)
def test_low_precision_state_converges(name, dtype):
    f64, W, x = tanh_problem(rho=0.5)
    f = lambda z: f64(z.double()).to(dtype)
    z, st = S.get_solver(name)(f, torch.zeros_like(x, dtype=dtype), max_iter=60, tol=2e-2)
    assert z.dtype == dtype and bool(torch.isfinite(z.float()).all())
    assert bool(st.converged.all()), st.summary()
    z_ref, _ = S.fixed_point(f64, torch.zeros_like(x), max_iter=200, tol=1e-12)
    assert float((z.double() - z_ref).abs().max()) < 0.1


# ---- registry ---------------------------------------------------------------------------------
def test_registry_names_aliases_and_errors():
    assert S.get_solver("fixed_point_last") is S.fixed_point_last
    assert S.get_solver("fixed_point") is S.fixed_point is S.get_solver("Fixed_Point")
    with pytest.raises(ValueError, match="ambiguous.*fixed_point_last"):
        S.get_solver("fpi")
    assert S.get_solver("anderson") is S.anderson and S.get_solver("broyden") is S.broyden
    with pytest.raises(ValueError, match="unknown solver 'newton'.*anderson, broyden"):
        S.get_solver("newton")
    with pytest.raises(ValueError, match="already registered"):
        S.register_solver("anderson", S.fixed_point)
    S.register_solver("my_fpi_test", S.fixed_point)
    assert S.get_solver("my_fpi_test") is S.fixed_point
    with pytest.raises(TypeError, match="callable"):
        S.register_solver("x_test", 3)


def test_solvers_package_does_not_import_the_landmark_model():
    code = ("import sys, ldeq.solvers; bad = [m for m in sys.modules if m.startswith(('ldeq.model', "
            "'ldeq.data', 'ldeq.video', 'ldeq.train'))]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
