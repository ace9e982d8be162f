"""List/tuple states (multi-scale DEQs): every solver, deq / DEQ and the three gradient modes on a
state of several batch-first tensors of different shapes, checked against the single-tensor path
on the concatenation of the pieces (same map, same solver, float64)."""
import pytest
import torch

import ldeq.solvers as S
from ldeq.solvers._common import StatePack

F64 = torch.float64
SHAPES = [(3, 4), (5,), (2, 2, 2)]  # d = 12 + 5 + 8 = 25
SOLVERS = ["anderson", "broyden", "fixed_point", "fixed_point_last"]
# Both paths run the same kernels on the same (B, d) buffer: only the packing (a copy) differs,
# so the results agree to rounding of the packing (none) and of f; 1e-12 leaves room for
# a different summation order in the matmul of an (unlikely) different memory layout.
ATOL = 1e-12


def problem(B=3, rho=0.7, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = sum(int(torch.tensor(s).prod()) for s in SHAPES)
    W = torch.randn(d, d, generator=g, dtype=F64)
    W = (rho * W / torch.linalg.matrix_norm(W, 2)).requires_grad_()
    x = torch.randn(B, d, generator=g, dtype=F64, requires_grad=True)
    z0_list = [torch.zeros((B,) + s, dtype=F64) for s in SHAPES]
    pack = StatePack(z0_list)

    def f_flat(z, x_=None):
        return torch.tanh(z @ W.t() + (x if x_ is None else x_))

    def f_list(zs, x_=None):
        assert isinstance(zs, list) and [tuple(z.shape[1:]) for z in zs] == SHAPES
        return pack.unpack(f_flat(pack.pack(zs), x_))
    return f_flat, f_list, z0_list, pack, W, x


@pytest.mark.parametrize("name", SOLVERS)
def test_list_state_matches_the_concatenated_state(name):
    f_flat, f_list, z0_list, pack, _, _ = problem()
    solver = S.get_solver(name)
    with torch.no_grad():
        zf, sf = solver(f_flat, pack.pack(z0_list), max_iter=40, tol=1e-10, trajectory=[3, 7])
        zl, sl = solver(f_list, z0_list, max_iter=40, tol=1e-10, trajectory=[3, 7])
    assert isinstance(zl, list) and [tuple(z.shape) for z in zl] == [(3,) + s for s in SHAPES]
    torch.testing.assert_close(pack.pack(zl), zf, rtol=0, atol=ATOL)
    torch.testing.assert_close(sl.abs_trace, sf.abs_trace, rtol=0, atol=ATOL)
    assert torch.equal(sl.nstep, sf.nstep) and torch.equal(sl.converged, sf.converged)
    assert sorted(sl.trajectory) == [3, 7]
    for k in (3, 7):
        torch.testing.assert_close(pack.pack(sl.trajectory[k]), sf.trajectory[k], rtol=0, atol=ATOL)


def test_tuple_state_comes_back_as_a_tuple_and_f_subset_works():
    f_flat, f_list, z0_list, pack, W, x = problem(B=4)
    xd = x.detach()
    calls = []

    def f_sub(zs, idx):
        calls.append(idx.numel())
        return tuple(pack.unpack(torch.tanh(pack.pack(zs) @ W.detach().t() + xd[idx])))
    f_tuple = lambda zs: tuple(f_list(list(zs), xd))
    zt, st = S.anderson(f_tuple, tuple(z0_list), max_iter=60, tol=1e-11, f_subset=f_sub)
    assert isinstance(zt, tuple) and bool(st.converged.all())
    assert calls and min(calls) < 4  # the subset path ran on the list state
    z_ref, _ = S.anderson(lambda z: f_flat(z, xd), pack.pack(z0_list), max_iter=60, tol=1e-11)
    torch.testing.assert_close(pack.pack(zt), z_ref, rtol=0, atol=1e-9)


def test_list_state_f_must_return_the_same_structure():
    _, f_list, z0_list, _, _, _ = problem()
    with pytest.raises(TypeError, match="f must return a list/tuple of 3 tensors like z0"):
        S.anderson(lambda zs: zs[:2], z0_list, max_iter=3)
    with pytest.raises(ValueError, match=r"f\[1\] must have shape \(B,\) \+ \(5,\)"):
        S.broyden(lambda zs: [zs[0], zs[1][:, :4], zs[2]], z0_list, max_iter=3)
    with pytest.raises(ValueError, match=r"z0\[1\] has batch size 2, z0\[0\] has 3"):
        S.fixed_point(f_list, [z0_list[0], torch.zeros(2, 5, dtype=F64)], max_iter=3)
    with pytest.raises(TypeError, match=r"z0\[1\] is torch.float32 .* a list state must have one dtype"):
        S.fixed_point(f_list, [z0_list[0], torch.zeros(3, 5)], max_iter=3)


@pytest.mark.parametrize("grad", ["ift", "jfb", "phantom"])
@pytest.mark.parametrize("name", ["anderson", "broyden", "fixed_point"])
def test_deq_list_state_gradients_match_the_concatenated_state(name, grad):
    f_flat, f_list, z0_list, pack, W, x = problem()
    g = torch.Generator().manual_seed(5)
    wt = torch.randn(3, pack.d, generator=g, dtype=F64)
    kw = dict(solver=name, max_iter=60, tol=1e-11, grad=grad, b_tol=1e-11, state_iters=[2])

    zf, sf = S.deq(f_flat, pack.pack(z0_list), args=(x,), **kw)
    loss_f = (zf * wt).sum() + (sf.states[0] * wt).sum()
    gW_f, gx_f = torch.autograd.grad(loss_f, (W, x))

    zl, sl = S.deq(f_list, z0_list, args=(x,), **kw)
    assert isinstance(zl, list) and len(sl.states) == 2 and isinstance(sl.states[0], list)
    loss_l = (pack.pack(zl) * wt).sum() + (pack.pack(sl.states[0]) * wt).sum()
    gW_l, gx_l = torch.autograd.grad(loss_l, (W, x))

    torch.testing.assert_close(pack.pack(zl), zf, rtol=0, atol=ATOL)
    # The backward solves see the same vectors too; their stopping rule is the same.
    torch.testing.assert_close(gW_l, gW_f, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(gx_l, gx_f, rtol=1e-9, atol=1e-11)
    if grad == "ift":
        assert sl.backward.ok and sf.backward.ok


def test_deq_module_list_state_train_and_eval():
    f_flat, f_list, z0_list, pack, W, x = problem()
    layer = S.DEQ(f_list, max_iter=50, eval_max_iter=50, tol=1e-11, solver="broyden")
    z, st = layer(z0_list, x)
    (pack.pack(z) ** 2).sum().backward()
    assert W.grad is not None and x.grad is not None and st.backward.ok
    layer.eval()
    with torch.no_grad():
        z_eval, _ = layer(z0_list, x)
    torch.testing.assert_close(pack.pack(z_eval), pack.pack(z).detach(), rtol=0, atol=1e-9)
