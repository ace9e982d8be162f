"""The judge of benchmarks/bench_time_to_tol.py: one true-residual check, the same for both libraries,
at the point each solver returned (not the solver's own report)."""
import torch

import benchmarks_path  # noqa: F401  (puts benchmarks/ on sys.path)
import bench_time_to_tol as BT

torch.manual_seed(0)


def _linear(B=3, d=40, rho=0.9):
    """f(z) = A z + b, a contraction with spectral norm rho (float64: the judge is exact to ~1e-15)."""
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    A = rho * q  # orthogonal x rho: every eigenvalue has modulus rho
    b = torch.randn(B, d, dtype=torch.float64)
    return (lambda z: z @ A.T + b), torch.zeros(B, d, dtype=torch.float64)


def test_true_residual_tensor_and_list_states_match_the_formula():
    f, z0 = _linear()
    z = torch.randn_like(z0)
    fz = f(z)
    want = (fz - z).norm(dim=1) / (fz.norm(dim=1) + 1e-9)
    torch.testing.assert_close(BT.true_residual(f, z0, z), want, rtol=1e-12, atol=0)
    # the same map on a list state of two pieces (3, 10) and (3, 5, 6): the judge sees the concatenation

    def f_list(zs):
        flat = torch.cat([t.reshape(3, -1) for t in zs], 1)
        out = f(flat)
        return [out[:, :10], out[:, 10:].reshape(3, 5, 6)]
    z0_list = [torch.zeros(3, 10, dtype=torch.float64), torch.zeros(3, 5, 6, dtype=torch.float64)]
    torch.testing.assert_close(BT.true_residual(f_list, z0_list, z), want, rtol=1e-12, atol=0)


def test_judge_overrules_torchdeq_damped_report():
    """TorchDEQ's damped fixed point tests tau (f(x) - x) and returns the point after it; on a map whose
    Jacobian is -rho Q (oscillating), the true residual there is above the damped one: the row must
    say "not converged" where TorchDEQ's own report says converged."""
    d, B, rho, tau = 40, 3, 0.9, 0.5
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    b = torch.randn(B, d, dtype=torch.float64)
    f = lambda z: -rho * (z @ q.T) + b  # noqa: E731
    z0 = torch.zeros(B, d, dtype=torch.float64)
    tol = 1e-3
    row = BT.run_torchdeq(f, z0, "fixed_point_iter", dict(tau=tau), tol, 200, torch.device("cpu"))
    assert row["reported"] < tol  # TorchDEQ stopped on its own test
    # the judge: one more f at the returned point (computed here independently)
    import torchdeq.solver as T
    z, _, _ = T.get_solver("fixed_point_iter")(f, z0, max_iter=200, tol=tol, stop_mode="rel", tau=tau)
    fz = f(z)
    true = float(((fz - z).norm(dim=1) / (fz.norm(dim=1) + 1e-9)).max())
    assert abs(row["worst"] - true) <= 1e-12 * max(true, 1.0)
    assert true > row["reported"]  # the damped step understates the residual here
    assert row["converged"] == (true < tol) and not row["converged"]
    # ldeq's row is judged the same way and agrees with its own report (it returns the iterate it measured)
    lrow = BT.run_ldeq(f, z0, "fixed_point", dict(beta=tau), tol, 200, torch.device("cpu"))
    assert abs(lrow["worst"] - lrow["reported"]) <= 1e-9 * lrow["reported"]
    assert lrow["converged"]
