"""Anderson's defaults: type-I mixing, regularisation relative to the Gram matrix's scale, restarts.

Measured claims (issue 12), checked here on small instances of the benchmark's problems:
on a contractive tanh map Anderson with default settings never needs more f-evaluations than plain
fixed-point iteration; on the transformer instances of ``bench_time_to_tol.py --probe`` (weight
gains 2.5, 3, 4 x seeds 0, 1) default Anderson (type I) converges wherever Broyden does, which
type-II Anderson with restarts (the previous default) does not; on one transformer instance where
plain type-II Anderson stalls, restarts rescue it. (Not on every instance: docs/solvers.md lists
the wider probe grid.)"""
import sys

import pytest
import torch

import ldeq.solvers as S
from ldeq.solvers._anderson_safeguard import resolve_kind, type1_bordered_solve
from ldeq.solvers.anderson import masked_bordered_solve

F64 = torch.float64


@pytest.mark.parametrize("rho", [0.5, 0.8, 0.95])
@pytest.mark.parametrize("d", [64, 400])
def test_default_anderson_never_needs_more_evaluations_than_fixed_point_on_a_contraction(rho, d):
    g = torch.Generator().manual_seed(int(rho * 100) + d)
    B = 8
    W = torch.randn(B, d, d, generator=g, dtype=F64)
    W = rho * W / torch.linalg.matrix_norm(W, 2)[:, None, None]
    x = torch.randn(B, d, generator=g, dtype=F64)
    f = lambda z: torch.tanh((W @ z[..., None])[..., 0] + x)
    z0 = torch.zeros(B, d, dtype=F64)
    _, s_fp = S.fixed_point(f, z0, max_iter=500, tol=1e-6)
    _, s_aa = S.anderson(f, z0, max_iter=500, tol=1e-6)
    _, s_abs = S.anderson(f, z0, max_iter=500, tol=1e-6, lam=1e-4, lam_mode="abs", restart=0)
    assert bool(s_fp.converged.all()) and bool(s_aa.converged.all())
    assert bool((s_aa.nstep <= s_fp.nstep).all()), (s_aa.nstep.tolist(), s_fp.nstep.tolist())
    # TorchDEQ's absolute lam = 1e-4 is what made Anderson slower than plain iteration here.
    assert int(s_abs.nstep.max()) > int(s_fp.nstep.max())


def transformer(gain):
    sys.path.insert(0, "benchmarks")
    import bench_time_to_tol as BT
    torch.manual_seed(0)
    cell = BT.TransformerCell().eval()
    with torch.no_grad():
        for p in cell.parameters():
            if p.dim() == 2:
                p.mul_(gain)
    x = torch.randn(4, 64, 128)  # the global stream after the cell's weights (the measured instance)
    return (lambda z: cell(z, x)), torch.zeros_like(x)


def test_restarts_rescue_type2_anderson_on_the_measured_transformer_instance():
    f, z0 = transformer(3.0)
    with torch.no_grad():
        _, s_br = S.broyden(f, z0, max_iter=200, tol=1e-4)
        _, s_aa = S.anderson(f, z0, max_iter=200, tol=1e-4, kind="II", restart=1.5)
        _, s_plain = S.anderson(f, z0, max_iter=200, tol=1e-4, restart=0)
    assert bool(s_br.converged.all())
    assert bool(s_aa.converged.all()), s_aa.summary()
    assert not bool(s_plain.converged.all())  # the failure the restarts fix (else this test proves nothing)


def test_masked_bordered_solve_ignores_forgotten_slots_and_matches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    B, m, n, d = 3, 5, 4, 9
    R = torch.randn(B, n, d, generator=g, dtype=F64)
    H = torch.zeros(B, m, m, dtype=F64)
    H[:, :n, :n] = R @ R.transpose(1, 2)
    valid = torch.tensor([[True] * 4, [False, True, False, True], [False, False, False, True]])
    lam = 1e-3
    alpha, fb = masked_bordered_solve(H, n, lam, False, 3, valid)
    assert not bool(fb.any())
    for b in range(B):
        idx = valid[b].nonzero().flatten()
        M = H[b][idx][:, idx] + lam * torch.eye(idx.numel(), dtype=F64)
        a = torch.linalg.solve(M, torch.ones(idx.numel(), dtype=F64))
        ref = torch.zeros(n, dtype=F64)
        ref[idx] = a / a.sum()
        torch.testing.assert_close(alpha[b], ref, rtol=1e-9, atol=1e-12)
        assert bool((alpha[b][~valid[b]] == 0).all())


def test_masked_bordered_solve_falls_back_instead_of_nan():
    H = torch.zeros(2, 3, 3, dtype=F64)
    H[0, :2, :2] = 1.0  # duplicate residuals, lam = 0: singular
    H[1, :2, :2] = float("nan")
    alpha, fb = masked_bordered_solve(H, 2, 0.0, True, 1, torch.ones(2, 2, dtype=torch.bool))
    assert bool(torch.isfinite(alpha).all()) and fb.tolist() == [True, True]
    torch.testing.assert_close(alpha.sum(1), torch.ones(2, dtype=F64))
    torch.testing.assert_close(alpha[1], torch.tensor([0.0, 1.0], dtype=F64))  # plain step from the newest


def test_default_anderson_converges_wherever_broyden_does_on_the_probe_grid():
    """The count-based check of bench_time_to_tol.py --probe (f-evaluations, not time).

    Broyden gets the benchmark's 200 evaluations; Anderson 220. The benchmark measured the tightest
    instance (gain 2.5, seed 0) converging at 184 of 200: a chaotic-ish map where another CPU path's
    rounding moves the count by a few evaluations, so the test keeps a 10% margin rather than
    failing on rounding; a real regression (type II + restarts misses 3 of these) is far larger."""
    sys.path.insert(0, "benchmarks")
    import bench_time_to_tol as BT
    misses, misses_type2, n_broyden = [], [], 0
    try:
        torch.set_flush_denormal(True)  # as the benchmark (the process default is off)
        for gain in (2.5, 3.0, 4.0):
            for seed in (0, 1):
                f, z0 = BT.probe_instance(gain, seed)
                with torch.no_grad():
                    ok = {name: bool(S.get_solver(s)(f, z0, max_iter=n, tol=1e-4, **kw)[1].converged.all())
                          for name, s, n, kw in (("broyden", "broyden", 200, {}), ("default", "anderson", 220, {}),
                                                 ("type2", "anderson", 220, dict(kind="II", restart=1.5)))}
                n_broyden += ok["broyden"]
                if ok["broyden"] and not ok["default"]:
                    misses.append((gain, seed))
                if ok["broyden"] and not ok["type2"]:
                    misses_type2.append((gain, seed))
    finally:
        torch.set_flush_denormal(False)
    assert n_broyden >= 4, n_broyden  # the grid has instances Broyden solves
    assert not misses, f"Broyden converges and default Anderson does not on {misses}"
    assert misses_type2, "the grid no longer separates type I from the old default (type II + restarts)"


def test_kind_defaults_keep_every_explicit_call_meaning():
    assert resolve_kind(None, "rel", None) == "I"
    assert resolve_kind(None, "abs", None) == "II"  # TorchDEQ's computation
    assert resolve_kind(None, "rel", 1.5) == "II" and resolve_kind(None, "rel", 0) == "II"
    assert resolve_kind("I", "abs", 0) == "I"
    with pytest.raises(ValueError, match="kind"):
        resolve_kind("III", "rel", None)


def test_type1_solve_meets_the_secant_conditions_and_ignores_forgotten_slots():
    g = torch.Generator().manual_seed(1)
    B, m, n, d = 3, 5, 4, 11
    X = torch.randn(m, B, d, generator=g, dtype=F64)
    G = torch.randn(m, B, d, generator=g, dtype=F64)
    C = torch.zeros(B, m, m, dtype=F64)
    C[:, :n, :n] = torch.einsum("ibd,jbd->bij", X[:n], G[:n])  # C_ij = <x_i, g_j> (the kernels: test_solvers_kernels)
    newest = 2
    valid = torch.tensor([[True] * 4, [False, True, True, True], [False, False, True, False]])
    alpha, fb = type1_bordered_solve(C, n, newest, valid)
    assert not bool(fb.any())
    torch.testing.assert_close(alpha.sum(1), torch.ones(B, dtype=F64))
    mixed = torch.einsum("bj,jbd->bd", alpha, G[:n])
    for b in range(B):
        assert bool((alpha[b][~valid[b]] == 0).all())
        for i in valid[b].nonzero().flatten().tolist():
            if i != newest:
                assert abs(float((X[i, b] - X[newest, b]) @ mixed[b])) < 1e-9
    torch.testing.assert_close(alpha[2], torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=F64))  # one slot: plain step


def test_type1_solve_falls_back_instead_of_nan():
    C = torch.zeros(2, 3, 3, dtype=F64)
    C[1] = float("nan")
    alpha, fb = type1_bordered_solve(C, 2, 1, torch.ones(2, 2, dtype=torch.bool))
    assert bool(torch.isfinite(alpha).all()) and fb.tolist() == [True, True]
    torch.testing.assert_close(alpha[1], torch.tensor([0.0, 1.0], dtype=F64))
