"""The typed API of ldeq.solvers: the Solver protocol, py.typed, the option groups of deq (and
that the flat keyword spelling the model and train code use gives the same result)."""
import os

import pytest
import torch

import ldeq.solvers as S
from ldeq.solvers import BackwardOptions, GradOptions, RegOptions, SolveOptions

F64 = torch.float64


def test_every_registered_solver_meets_the_protocol_and_the_package_is_typed():
    for name in S.available_solvers():
        assert isinstance(S.get_solver(name), S.Solver), name
    assert os.path.isfile(os.path.join(os.path.dirname(S.__file__), "py.typed"))
    for fn in (S.anderson, S.broyden, S.fixed_point, S.fixed_point_last, S.deq):
        ann = fn.__wrapped__.__annotations__ if hasattr(fn, "__wrapped__") else fn.__annotations__
        assert "return" in ann and "z0" in ann, fn


def _problem():
    g = torch.Generator().manual_seed(0)
    W = (0.4 * torch.randn(8, 8, generator=g, dtype=F64) / 8 ** 0.5).requires_grad_()
    x = torch.randn(3, 8, generator=g, dtype=F64)
    return (lambda z, x_: torch.tanh(z @ W.t() + x_)), W, x


def test_option_groups_equal_the_flat_keywords():
    f, W, x = _problem()
    flat = dict(solver="broyden", max_iter=40, tol=1e-10, grad="phantom", phantom_steps=3, phantom_tau=0.7,
                jac_reg_samples=1)
    z1, s1 = S.deq(f, torch.zeros_like(x), args=(x,), generator=torch.Generator().manual_seed(1), **flat)
    z2, s2 = S.deq(f, torch.zeros_like(x), args=(x,), generator=torch.Generator().manual_seed(1),
                   solve=SolveOptions(solver="broyden", max_iter=40, tol=1e-10),
                   gradient=GradOptions(grad="phantom", phantom_steps=3, phantom_tau=0.7),
                   regularise=RegOptions(jac_reg_samples=1))
    torch.testing.assert_close(z1, z2, rtol=0, atol=0)
    torch.testing.assert_close(s1.jac_loss, s2.jac_loss, rtol=0, atol=0)
    g1 = torch.autograd.grad(z1.sum(), W)[0]
    g2 = torch.autograd.grad(z2.sum(), W)[0]
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(solve=SolveOptions(), max_iter=3), TypeError, r"give \['max_iter'\] inside solve=SolveOptions"),
    (dict(backward=GradOptions()), TypeError, "backward must be a BackwardOptions"),
    (dict(max_iters=3), TypeError, r"unknown option\(s\) \['max_iters'\]; valid options are: solve, backward"),
])
def test_option_group_misuse_is_named(kwargs, err, match):
    f, _, x = _problem()
    with pytest.raises(err, match=match):
        S.deq(f, torch.zeros_like(x), args=(x,), **kwargs)


@pytest.mark.parametrize("cls,kw,match", [
    (SolveOptions, dict(max_iter=0), "max_iter must be an int >= 1"),
    (SolveOptions, dict(stop_mode="max"), "stop_mode must be 'rel' or 'abs'"),
    (BackwardOptions, dict(on_backward_fail="ignore"), "on_backward_fail must be one of"),
    (GradOptions, dict(grad="hook"), "grad must be one of"),
    (GradOptions, dict(phantom_steps=0), "phantom_steps must be an int >= 1"),
])
def test_option_groups_validate_on_construction(cls, kw, match):
    with pytest.raises(ValueError, match=match):
        cls(**kw)


def test_backward_options_reach_the_backward_solve():
    f, W, x = _problem()
    z, st = S.deq(f, torch.zeros_like(x), args=(x,), max_iter=40, tol=1e-10,
                  backward=BackwardOptions(b_solver="fixed_point", b_max_iter=2, b_tol=1e-14,
                                           on_backward_fail="zero"))
    z.sum().backward()
    assert st.backward.stats.solver == "fixed_point" and st.backward.stats.abs_trace.shape[1] == 2
    assert bool(st.backward.zeroed.all()) and float(W.grad.abs().max()) == 0.0


def test_huge_pages_change_no_result(monkeypatch):
    """LDEQ_SOLVER_HUGEPAGES (1 always, 0 never, unset: when the workspace keeps buffers) only advises
    the kernel about fresh history buffers' pages; a bad value is an error naming it."""
    import ldeq.solvers._common as C
    x = torch.randn(2, 600_000, generator=torch.Generator().manual_seed(0))  # history 29 MB > 8 MB
    f = lambda z: torch.tanh(0.5 * z + x)
    limit = S.workspace_limit() / 2 ** 20
    S.set_workspace_limit(0)  # fresh buffers every call, so each run allocates (and advises) anew
    try:
        monkeypatch.setenv("LDEQ_SOLVER_HUGEPAGES", "0")
        z_plain, _ = S.anderson(f, torch.zeros_like(x), max_iter=6, tol=0)
        monkeypatch.setenv("LDEQ_SOLVER_HUGEPAGES", "1")
        monkeypatch.setattr(C, "_libc", None)
        z_huge, _ = S.anderson(f, torch.zeros_like(x), max_iter=6, tol=0)
        assert C._libc is not False  # Linux: madvise was found and used
        torch.testing.assert_close(z_huge, z_plain, rtol=0, atol=0)
        monkeypatch.setenv("LDEQ_SOLVER_HUGEPAGES", "yes")
        with pytest.raises(ValueError, match="LDEQ_SOLVER_HUGEPAGES must be 1"):
            S.anderson(f, torch.zeros_like(x), max_iter=2, tol=0)
    finally:
        S.set_workspace_limit(limit)
        monkeypatch.setattr(C, "_libc", None)
