"""DEQ layer conveniences (stochastic / eval max_iter, extra final step, intermediate states) and
the Jacobian regularisers, checked against hand-computed or dense references in float64."""
import pytest
import torch
from torch import nn

from ldeq.solvers._stats import SolverStats
from ldeq.solvers.deq import DEQ, deq
from ldeq.solvers.regularization import jacobian_frobenius, spectral_radius, tracked_apply

torch.set_num_threads(2)
DT = torch.float64


def ref_fpi(f, z0, *, max_iter, tol, stop_mode="rel", **kw):
    """Plain fixed-point iteration (oracle, independent of ldeq's solvers); ignores save_iters."""
    z, B, a_tr = z0, z0.shape[0], []
    for _ in range(max_iter):
        fz = f(z)
        a_tr.append((fz - z).reshape(B, -1).norm(dim=1))
        z = fz
        if bool((a_tr[-1] <= tol).all()):
            break
    a = torch.stack(a_tr, 1)
    return z, SolverStats(nstep=torch.full((B,), len(a_tr)), abs_lowest=a.amin(1),
                          rel_lowest=a.amin(1), abs_trace=a, rel_trace=a,
                          converged=a.amin(1) <= tol, safeguard=torch.zeros(B, dtype=torch.bool),
                          stop_mode="abs")


class BudgetSpy:
    """Records the max_iter each solve was given."""

    def __init__(self):
        self.budgets = []

    def __call__(self, f, z0, *, max_iter, tol, **kw):
        self.budgets.append(max_iter)
        return ref_fpi(f, z0, max_iter=max_iter, tol=tol)


def _cell(d=5, scale=0.6, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d, d, generator=g, dtype=DT)
    W = nn.Parameter(W / torch.linalg.matrix_norm(W, 2) * scale)
    x = torch.randn(3, d, generator=g, dtype=DT)
    return W, x, (lambda z: torch.tanh(z @ W.T + x))


def test_stochastic_max_iter_is_uniform_and_only_when_training():
    W, x, f = _cell()
    spy = BudgetSpy()
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        deq(f, torch.zeros(3, 5, dtype=DT), solver=spy, grad="jfb", max_iter=6, tol=1e-30,
            stochastic_max_iter=True, generator=gen)
    counts = torch.bincount(torch.tensor(spy.budgets), minlength=7)
    assert counts[0] == 0 and counts[1:].sum() == 150 and len(counts) == 7
    assert counts[1:].min() > 10  # each of 1..6 is drawn (expected 25 each; fixed seed)
    spy.budgets.clear()
    with torch.no_grad():  # inference: always the full budget
        deq(f, torch.zeros(3, 5, dtype=DT), solver=spy, max_iter=6, tol=1e-30, stochastic_max_iter=True)
    assert spy.budgets == [6]


def test_module_train_vs_eval_budget():
    W, x, f = _cell()
    spy = BudgetSpy()
    layer = DEQ(max_iter=7, eval_max_iter=3, stochastic_max_iter=True, solver=spy, b_solver=ref_fpi, tol=1e-30)
    torch.manual_seed(0)
    for _ in range(20):
        z, stats = layer(torch.zeros(3, 5, dtype=DT), f=f)
        assert 1 <= stats.max_iter <= 7 and stats.max_iter == spy.budgets[-1]
    layer.eval()
    z, stats = layer(torch.zeros(3, 5, dtype=DT), f=f)
    assert spy.budgets[-1] == 3 and stats.max_iter == 3


def test_extra_step_at_inference():
    W, x, f = _cell()
    z0 = torch.zeros(3, 5, dtype=DT)
    with torch.no_grad():
        z_with, st = deq(f, z0, solver=ref_fpi, max_iter=4, tol=1e-30)
        z_without, _ = deq(f, z0, solver=ref_fpi, max_iter=4, tol=1e-30, extra_step=False)
        # hand-unrolled: 4 solver iterations, then one more application
        zz = z0
        for _ in range(4):
            zz = f(zz)
    torch.testing.assert_close(z_without, zz, atol=0, rtol=0)
    torch.testing.assert_close(z_with, f(zz), atol=0, rtol=0)
    assert not z_with.requires_grad and st.grad == ""


def test_intermediate_states_for_fixed_point_correction():
    W, x, f = _cell()
    z0 = torch.zeros(3, 5, dtype=DT)
    z, stats = deq(f, z0, solver=ref_fpi, max_iter=6, tol=1e-30, grad="jfb", state_iters=[2, 4, 9])
    # iteration 9 is beyond the budget: states = [state@2, state@4, output]
    assert len(stats.states) == 3 and stats.states[-1] is z
    iters = [z0]
    for _ in range(6):
        iters.append(f(iters[-1]).detach())
    # f's i-th call sees iterate z_{i-1}; the state is one tracked step from it.
    for s, i in zip(stats.states[:2], (2, 4)):
        torch.testing.assert_close(s.detach(), iters[i], atol=1e-14, rtol=0)
    loss = sum((s ** 2).sum() for s in stats.states)
    g = torch.autograd.grad(loss, W)[0]
    g_def = torch.autograd.grad(sum((f(iters[i - 1]) ** 2).sum() for i in (2, 4, 7)), W)[0]
    torch.testing.assert_close(g, g_def, atol=1e-12, rtol=1e-10)


def test_stats_jac_loss_and_sradius_present():
    W, x, f = _cell()
    z, stats = deq(f, torch.zeros(3, 5, dtype=DT), solver=ref_fpi, max_iter=100, tol=1e-12,
                   b_solver=ref_fpi, b_tol=1e-12, b_max_iter=100, jac_reg_samples=2, sradius_iters=10)
    assert stats.jac_loss.shape == (3,) and stats.jac_loss.requires_grad
    assert stats.sradius.shape == (3,) and (stats.sradius < 0.6 + 1e-9).all()
    (z.sum() + stats.jac_loss.sum()).backward()
    assert torch.isfinite(W.grad).all()
    with torch.no_grad():  # the monitor also works at inference
        _, st = deq(f, torch.zeros(3, 5, dtype=DT), solver=ref_fpi, max_iter=100, tol=1e-12, sradius_iters=50)
    # ||J^T v|| / ||v|| <= ||J||_2 <= ||D||_2 ||W||_2 <= 0.6 (tanh' <= 1), and > 0
    assert st.sradius.shape == (3,) and ((st.sradius > 0) & (st.sradius < 0.6 + 1e-9)).all()


def test_backward_options_checked_before_the_forward_solve():
    W, x, f = _cell()
    spy = BudgetSpy()
    with pytest.raises(ValueError, match="b_stop_mode"):
        deq(f, torch.zeros(3, 5, dtype=DT), solver=spy, b_stop_mode="max")
    assert spy.budgets == []


# ---- regularisers ------------------------------------------------------------------------------

def _dense_jac(f, z):
    """(B, d, d) per-sample Jacobians: row b of f's output depends only on row b of z."""
    def row(b):
        def fb(v):
            zz = z.detach().clone()
            zz = torch.cat([zz[:b], v[None], zz[b + 1:]])
            return f(zz)[b]
        return fb
    return torch.stack([torch.autograd.functional.jacobian(row(b), z[b]) for b in range(z.shape[0])])


def test_hutchinson_exact_for_diagonal_jacobian_rademacher():
    a = torch.tensor([[0.5, -2.0, 3.0], [1.0, 0.1, -0.2]], dtype=DT, requires_grad=True)
    f = lambda z: a * z  # J_b = diag(a_b): ||J_b||_F^2 = sum a_b^2, Rademacher probes are exact
    z_req, fz = tracked_apply(f, torch.randn(2, 3, dtype=DT))
    est = jacobian_frobenius(fz, z_req, n_samples=1, distribution="rademacher")
    torch.testing.assert_close(est, (a ** 2).sum(1), atol=1e-14, rtol=0)
    est.sum().backward()  # create_graph: d/da sum a^2 = 2a
    torch.testing.assert_close(a.grad, 2 * a.detach(), atol=1e-14, rtol=0)
    torch.testing.assert_close(jacobian_frobenius(fz, z_req, normalize=True, distribution="rademacher"),
                               (a ** 2).sum(1).detach() / 3)


def test_hutchinson_unbiased_vs_dense_jacobian():
    W, x, f = _cell(d=6, scale=0.9)
    z = torch.randn(3, 6, dtype=DT)
    J = _dense_jac(f, z)
    exact = J.pow(2).sum((1, 2))
    z_req, fz = tracked_apply(f, z)
    est = jacobian_frobenius(fz, z_req, n_samples=4000, create_graph=False,
                             generator=torch.Generator().manual_seed(0))
    # Gaussian Hutchinson: var = 2||J J^T||_F^2 / n, so 4000 probes put it within a few percent.
    torch.testing.assert_close(est, exact, rtol=0.06, atol=0)


def test_spectral_radius_vs_eigenvalues():
    g = torch.Generator().manual_seed(1)
    Q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=DT))
    A = torch.stack([Q @ torch.diag(torch.tensor(ev, dtype=DT)) @ Q.T
                     for ev in ([0.9, -0.5, 0.3, 0.1, 0.0], [-0.7, 0.2, 0.2, 0.1, 0.05])])
    f = lambda z: torch.einsum("bij,bj->bi", A, z)
    z_req, fz = tracked_apply(f, torch.randn(2, 5, dtype=DT))
    rho = spectral_radius(fz, z_req, n_iter=200, generator=g)
    exact = torch.linalg.eigvals(A).abs().max(dim=1).values
    torch.testing.assert_close(rho, exact, atol=1e-8, rtol=0)


def test_regulariser_bad_input():
    z = torch.randn(2, 3)
    with pytest.raises(ValueError, match="z must require grad"):
        jacobian_frobenius(z * 2, z)
    z_req, fz = tracked_apply(lambda v: v * 2, z)
    with pytest.raises(ValueError, match="fz must have the shape"):
        jacobian_frobenius(fz[:, :2], z_req)
    with pytest.raises(ValueError, match="n_samples"):
        jacobian_frobenius(fz, z_req, n_samples=0)
    with pytest.raises(ValueError, match="distribution"):
        jacobian_frobenius(fz, z_req, distribution="uniform")
    with pytest.raises(ValueError, match="n_iter"):
        spectral_radius(fz, z_req, n_iter=0)


# ---- with the library's solvers ----------------------------------------------------------------

def _lib(name):
    from ldeq.solvers import get_solver
    return get_solver(name)


@pytest.mark.parametrize("which", ["recorder", "trajectory"])
def test_states_from_recorder_and_from_solver_trajectory_agree(which):
    """ref_fpi has no ``trajectory`` option (deq records f's inputs); ldeq's fixed_point returns the
    lowest-residual iterate after k iterations, which for a contraction is the same iterate."""
    W, x, f = _cell()
    solver = ref_fpi if which == "recorder" else _lib("fixed_point")
    z0 = torch.zeros(3, 5, dtype=DT)
    z, stats = deq(f, z0, solver=solver, max_iter=6, tol=0.0, grad="jfb", state_iters=[3, 5])
    iters = [z0]
    for _ in range(6):
        iters.append(f(iters[-1]).detach())
    for s, i in zip(stats.states[:2], (3, 5)):
        torch.testing.assert_close(s.detach(), iters[i], atol=1e-14, rtol=0)
    assert stats.states[-1] is z


def test_subset_args_evaluates_only_unconverged_samples():
    W, _, _ = _cell()
    # different injections: the samples converge after different numbers of iterations
    x = torch.tensor([[0.0] * 5, [3.0] * 5, [-2.0, 1.0, 0.5, 2.0, -1.0]], dtype=DT)
    sizes = []

    def f(z, xx):
        sizes.append(z.shape[0])
        return torch.tanh(z @ W.T + xx)
    z0 = torch.zeros(3, 5, dtype=DT)
    with torch.no_grad():
        ref, st_ref = deq(f, z0, args=(x,), solver="anderson", max_iter=60, tol=1e-10, extra_step=False)
        sizes.clear()
        out, st = deq(f, z0, args=(x,), solver="anderson", max_iter=60, tol=1e-10, extra_step=False,
                      subset_args=True)
    assert min(sizes) < 3  # the solver called f on the unconverged samples only
    assert st.converged.all() and st_ref.converged.all()
    torch.testing.assert_close(out, ref, atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match="subset_args=True needs every arg"):
        deq(f, z0, args=(x[:2],), solver="anderson", subset_args=True)


@pytest.mark.parametrize("name", ["anderson", "broyden", "fixed_point"])
def test_library_solvers_under_autocast(name):
    torch.manual_seed(0)
    lin = nn.Linear(16, 16)
    with torch.no_grad():
        lin.weight.mul_(0.5 / torch.linalg.matrix_norm(lin.weight, 2))
    x = torch.randn(4, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, stats = deq(lambda z, xx: torch.tanh(lin(z) + xx), torch.zeros(4, 16), args=(x,), solver=name,
                       max_iter=40, tol=1e-2, b_max_iter=40, b_tol=1e-2)
    assert z.dtype == torch.float32 and stats.converged.all()
    z.sum().backward()
    assert stats.backward.ok and torch.isfinite(lin.weight.grad).all() and lin.weight.grad.dtype == torch.float32
