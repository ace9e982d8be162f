"""Implicit / JFB / phantom gradients of the DEQ layer, in float64, against independent references:
the dense implicit-function-theorem formula dL/dz* (I - J)^-1 df/dtheta built from
torch.autograd.functional.jacobian, backprop through a long unrolled iteration, gradcheck, and
the literal definitions of JFB and phantom gradients."""
import gc
import warnings
import weakref

import pytest
import torch
from torch import nn

from ldeq.solvers._stats import SolverStats
from ldeq.solvers.deq import DEQ, deq
from ldeq.solvers.implicit import BackwardSolveError

torch.set_num_threads(2)
DT = torch.float64


def ref_fpi(f, z0, *, max_iter, tol, stop_mode="rel", **kw):
    """Plain fixed-point iteration written here, independent of ldeq's solvers (oracle)."""
    z, B, a_tr, r_tr = z0, z0.shape[0], [], []
    for _ in range(max_iter):
        fz = f(z)
        d = (fz - z).reshape(B, -1).norm(dim=1)
        r = d / (fz.reshape(B, -1).norm(dim=1) + 1e-12)
        a_tr.append(d), r_tr.append(r)
        z = fz
        if bool(((r if stop_mode == "rel" else d) <= tol).all()):
            break
    a, r = torch.stack(a_tr, 1), torch.stack(r_tr, 1)
    low = (r if stop_mode == "rel" else a).amin(1)
    return z, SolverStats(nstep=torch.full((B,), len(a_tr)), abs_lowest=a.amin(1),
                          rel_lowest=r.amin(1), abs_trace=a, rel_trace=r, converged=low <= tol,
                          safeguard=torch.zeros(B, dtype=torch.bool), solver="ref_fpi", stop_mode=stop_mode)


def _library_solvers():
    from ldeq.solvers import get_solver  # a broken ldeq.solvers fails the suite, never shrinks it
    return [(n, get_solver(n)) for n in ("anderson", "broyden", "fixed_point")]


SOLVERS = [("ref_fpi", ref_fpi)] + _library_solvers()
SOLVER_IDS = [n for n, _ in SOLVERS]
TIGHT = dict(max_iter=300, tol=1e-13, stop_mode="abs", b_max_iter=300, b_tol=1e-13, b_stop_mode="abs",
             on_backward_fail="raise")


class Cell(nn.Module):
    """z -> tanh(W z + U x + b), contractive (||W|| < 1) so the fixed point is unique."""

    def __init__(self, d=6, dx=4, scale=0.5, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(d, d, generator=g, dtype=DT)
        self.W = nn.Parameter(W / torch.linalg.matrix_norm(W, 2) * scale)
        self.U = nn.Parameter(torch.randn(d, dx, generator=g, dtype=DT))
        self.b = nn.Parameter(torch.randn(d, generator=g, dtype=DT) * 0.1)

    def forward(self, z, x):
        return torch.tanh(z @ self.W.T + x @ self.U.T + self.b)


def _data(B=3, d=6, dx=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, dx, generator=g, dtype=DT, requires_grad=True)
    target = torch.randn(B, d, generator=g, dtype=DT)
    return x, target


def _loss(z, target):
    return ((z - target) ** 2).sum() + (z ** 3).sum()


def _dense_ift_grads(cell, x, target):
    """dL/dtheta and dL/dx from (I - J)^-T with dense Jacobians (per sample, scipy-free, no DEQ code):
    z* by a long plain iteration, J = df/dz, then v = (I - J)^-T dL/dz*, grad = v^T df/dparam."""
    with torch.no_grad():
        z = torch.zeros(x.shape[0], cell.W.shape[0], dtype=DT)
        for _ in range(2000):
            z = cell(z, x)
    params = [cell.W, cell.U, cell.b]
    grads = [torch.zeros_like(p) for p in params]
    gx = torch.zeros_like(x)
    for b in range(x.shape[0]):
        zb, xb = z[b].clone().requires_grad_(), x[b].detach()
        dLdz = torch.autograd.functional.jacobian(lambda zz: _loss(zz[None], target[b:b + 1]), zb)
        J = torch.autograd.functional.jacobian(lambda zz: cell(zz[None], xb[None])[0], zb)
        v = torch.linalg.solve((torch.eye(J.shape[0], dtype=DT) - J).T, dLdz)
        for i, p in enumerate(params):
            def fp(pp, i=i):
                ps = list(params)
                ps[i] = pp
                return torch.tanh(z[b] @ ps[0].T + xb @ ps[1].T + ps[2])
            Jp = torch.autograd.functional.jacobian(fp, p.detach())  # (d, *p.shape)
            grads[i] += torch.tensordot(v, Jp, dims=1)
        Jx = torch.autograd.functional.jacobian(lambda xx: cell(z[b:b + 1], xx[None])[0], xb)
        gx[b] = v @ Jx
    return z, grads, gx


@pytest.mark.parametrize("name,solver", SOLVERS, ids=SOLVER_IDS)
def test_ift_matches_dense_formula(name, solver):
    cell = Cell()
    x, target = _data()
    z_ref, g_ref, gx_ref = _dense_ift_grads(cell, x, target)
    z, stats = deq(cell, torch.zeros_like(z_ref), args=(x,), solver=solver, **TIGHT)
    torch.testing.assert_close(z.detach(), z_ref, atol=1e-10, rtol=0)
    _loss(z, target).backward()
    assert stats.backward.ok and stats.backward.calls == 1
    for p, g in zip([cell.W, cell.U, cell.b], g_ref):
        torch.testing.assert_close(p.grad, g, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(x.grad, gx_ref, atol=1e-9, rtol=1e-9)


def test_ift_matches_long_unrolled_backprop():
    cell = Cell(scale=0.7, seed=3)
    x, target = _data(seed=4)
    z, _ = deq(cell, torch.zeros(3, 6, dtype=DT), args=(x,), solver=ref_fpi, **TIGHT)
    g_ift = torch.autograd.grad(_loss(z, target), [cell.W, cell.U, cell.b, x])
    zu = torch.zeros(3, 6, dtype=DT)
    for _ in range(400):  # contraction 0.7: 0.7^400 is far below float64 precision
        zu = cell(zu, x)
    g_unr = torch.autograd.grad(_loss(zu, target), [cell.W, cell.U, cell.b, x])
    for a, b in zip(g_ift, g_unr):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)


def test_gradcheck_small_deq():
    cell = Cell(d=3, dx=2, seed=5)
    x = torch.randn(2, 2, dtype=DT, requires_grad=True)
    W = cell.W.detach().clone().requires_grad_()
    U = cell.U.detach().clone().requires_grad_()

    def fn(x, W, U):
        f = lambda z, xx: torch.tanh(z @ W.T + xx @ U.T)
        return deq(f, torch.zeros(2, 3, dtype=DT), args=(x,), solver=ref_fpi, **TIGHT)[0]

    assert torch.autograd.gradcheck(fn, (x, W, U), eps=1e-6, atol=1e-7, rtol=1e-6)


def _fixed_point(cell, x):
    with torch.no_grad():
        z = torch.zeros(x.shape[0], cell.W.shape[0], dtype=DT)
        for _ in range(2000):
            z = cell(z, x)
    return z


def test_jfb_equals_definition():
    cell = Cell(seed=7)
    x, target = _data(seed=8)
    z, _ = deq(cell, torch.zeros(3, 6, dtype=DT), args=(x,), solver=ref_fpi, grad="jfb", **TIGHT)
    g = torch.autograd.grad(_loss(z, target), [cell.W, cell.U, cell.b, x])
    zstar = _fixed_point(cell, x)  # definition: gradient of L(f(z*)) with z* a constant
    g_def = torch.autograd.grad(_loss(cell(zstar, x), target), [cell.W, cell.U, cell.b, x])
    for a, b in zip(g, g_def):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("k,tau", [(1, 1.0), (3, 0.5), (6, 0.8)])
def test_phantom_equals_definition(k, tau):
    cell = Cell(seed=9)
    x, target = _data(seed=10)
    z, _ = deq(cell, torch.zeros(3, 6, dtype=DT), args=(x,), solver=ref_fpi, grad="phantom",
               phantom_steps=k, phantom_tau=tau, **TIGHT)
    g = torch.autograd.grad(_loss(z, target), [cell.W, cell.U, cell.b, x])
    zd = _fixed_point(cell, x)
    for _ in range(k):  # definition: k damped tracked steps from the constant z*
        zd = tau * cell(zd, x) + (1 - tau) * zd
    g_def = torch.autograd.grad(_loss(zd, target), [cell.W, cell.U, cell.b, x])
    torch.testing.assert_close(z.detach(), zd.detach(), atol=1e-10, rtol=0)
    for a, b in zip(g, g_def):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)


def test_phantom_and_ift_differ():
    """Guards against a mode silently falling back to another: phantom/jfb are approximations."""
    cell = Cell(scale=0.9, seed=11)
    x, target = _data(seed=12)
    grads = {}
    for mode in ("ift", "jfb", "phantom"):
        z, _ = deq(cell, torch.zeros(3, 6, dtype=DT), args=(x,), solver=ref_fpi, grad=mode, **TIGHT)
        grads[mode] = torch.autograd.grad(_loss(z, target), cell.W)[0]
    assert (grads["ift"] - grads["jfb"]).abs().max() > 1e-4
    assert (grads["ift"] - grads["phantom"]).abs().max() > 1e-4


# ---- backward-solve failures -------------------------------------------------------------------

def _hard_problem():
    cell = Cell(scale=0.97, seed=13)  # slow contraction: 2 backward iterations cannot reach 1e-12
    x, target = _data(seed=14)
    return cell, x, target


def test_backward_failure_raises():
    cell, x, target = _hard_problem()
    z, stats = deq(cell, torch.zeros(3, 6, dtype=DT), args=(x,), solver=ref_fpi, max_iter=500,
                   tol=1e-12, b_max_iter=2, b_tol=1e-12, on_backward_fail="raise")
    with pytest.raises(BackwardSolveError, match="b_max_iter=2"):
        _loss(z, target).backward()
    assert stats.backward.failed.all()


def test_backward_failure_warns_and_flags():
    cell, x, target = _hard_problem()
    z, stats = deq(cell, torch.zeros(3, 6, dtype=DT), args=(x,), solver=ref_fpi, max_iter=500,
                   tol=1e-12, b_max_iter=2, b_tol=1e-12, on_backward_fail="warn")
    with pytest.warns(RuntimeWarning, match="not converged"):
        _loss(z, target).backward()
    assert stats.backward.ok is False and stats.backward.failed.all()
    assert not stats.backward.zeroed.any() and torch.isfinite(cell.W.grad).all()


def test_backward_failure_zero_mode_zeroes_gradient():
    cell, x, target = _hard_problem()
    z, stats = deq(cell, torch.zeros(3, 6, dtype=DT), args=(x,), solver=ref_fpi, max_iter=500,
                   tol=1e-12, b_max_iter=2, b_tol=1e-12, on_backward_fail="zero")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _loss(z, target).backward()
    assert stats.backward.zeroed.all()
    for p in (cell.W, cell.U, cell.b):
        assert torch.count_nonzero(p.grad) == 0


class _NaNGradOnSample(torch.autograd.Function):
    """Identity whose backward writes NaN into sample ``bad`` (a broken f's backward)."""

    @staticmethod
    def forward(ctx, z, bad):
        ctx.bad = bad
        return z.clone()

    @staticmethod
    def backward(ctx, g):
        g = g.clone()
        g[ctx.bad] = float("nan")
        return g, None


@pytest.mark.parametrize("mode", ["warn", "zero"])
def test_nonfinite_backward_never_reaches_parameters(mode):
    cell = Cell(seed=15)
    x, target = _data(seed=16)
    f = lambda z, xx: cell(_NaNGradOnSample.apply(z, 1), xx)
    z, stats = deq(f, torch.zeros(3, 6, dtype=DT), args=(x,), solver=ref_fpi, max_iter=300, tol=1e-13,
                   stop_mode="abs", b_max_iter=50, b_tol=1e-10, on_backward_fail=mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _loss(z, target).backward()
    assert stats.backward.nonfinite.tolist() == [False, True, False]
    assert stats.backward.zeroed[1]
    for p in (cell.W, cell.U, cell.b, x):
        assert torch.isfinite(p.grad).all()
    # Sample 1 contributes nothing; samples 0 and 2 keep their exact implicit gradient.
    _, g_ref, gx_ref = _dense_ift_grads(cell, x.detach()[[0, 2]].requires_grad_(), target[[0, 2]])
    torch.testing.assert_close(cell.W.grad, g_ref[0], atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(x.grad[[0, 2]], gx_ref, atol=1e-8, rtol=1e-8)
    assert torch.count_nonzero(x.grad[1]) == 0


def test_nonfinite_backward_raises():
    cell = Cell(seed=15)
    x, target = _data(seed=16)
    f = lambda z, xx: cell(_NaNGradOnSample.apply(z, 0), xx)
    z, stats = deq(f, torch.zeros(3, 6, dtype=DT), args=(x,), solver=ref_fpi, max_iter=300, tol=1e-13,
                   b_max_iter=50, b_tol=1e-10, on_backward_fail="raise")
    with pytest.raises(BackwardSolveError, match="1 non-finite"):
        _loss(z, target).backward()


# ---- no leaked state ---------------------------------------------------------------------------

def test_no_leak_when_backward_is_skipped():
    cell = Cell()
    x, _ = _data()
    z, stats = deq(cell, torch.zeros(3, 6, dtype=DT), args=(x,), solver=ref_fpi, max_iter=50, tol=1e-8)
    node = z.grad_fn
    assert type(node).__name__ == "_IFTBackwardBackward"
    ref = weakref.ref(node.fz)  # the tracked f(z*) the backward would take VJPs through
    del z, node, stats
    gc.collect()
    assert ref() is None
    for p in cell.parameters():
        assert not p._backward_hooks
    assert cell.W.grad is None


def test_output_matches_extra_step_and_forward_stats():
    cell = Cell()
    x, _ = _data()
    z, stats = deq(cell, torch.zeros(3, 6, dtype=DT), args=(x,), solver=ref_fpi, max_iter=500, tol=1e-12,
                   stop_mode="abs")
    torch.testing.assert_close(z.detach(), _fixed_point(cell, x), atol=1e-11, rtol=0)
    assert stats.converged.all() and stats.grad == "ift" and stats.max_iter == 500


def test_module_params_and_two_backward_calls_accumulate():
    cell = Cell()
    x, target = _data()
    layer = DEQ(cell, max_iter=300, solver=ref_fpi, tol=1e-13, stop_mode="abs", b_max_iter=300, b_tol=1e-13)
    assert [n for n, _ in layer.named_parameters()] == ["f.W", "f.U", "f.b"]
    z, _ = layer(torch.zeros(3, 6, dtype=DT), x)
    _loss(z, target).backward()
    g1 = cell.W.grad.clone()
    z, _ = layer(torch.zeros(3, 6, dtype=DT), x)
    _loss(z, target).backward()
    torch.testing.assert_close(cell.W.grad, 2 * g1)


# ---- autocast ----------------------------------------------------------------------------------

def test_autocast_bf16_solver_state_stays_fp32():
    torch.manual_seed(0)
    lin = nn.Linear(16, 16)
    with torch.no_grad():
        lin.weight.mul_(0.5 / torch.linalg.matrix_norm(lin.weight, 2))
    x = torch.randn(4, 16, requires_grad=True)
    f = lambda z, xx: torch.tanh(lin(z) + xx)
    seen = []

    def spy(fn, z0, **kw):
        seen.append((z0.dtype, fn(z0).dtype, torch.is_autocast_enabled("cpu")))
        return ref_fpi(fn, z0, **kw)

    z_ref, _ = deq(f, torch.zeros(4, 16), args=(x,), solver=ref_fpi, max_iter=100, tol=1e-6)
    g_ref = torch.autograd.grad(z_ref.sum(), [lin.weight, x])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, stats = deq(f, torch.zeros(4, 16), args=(x,), solver=spy, b_solver=spy, max_iter=100, tol=1e-2)
        assert z.dtype == torch.float32
    g = torch.autograd.grad(z.sum(), [lin.weight, x])
    # forward and backward solves both saw fp32 state and fp32 f outputs with autocast off.
    assert seen == [(torch.float32, torch.float32, False)] * 2
    assert stats.backward.ok is not None
    for a, b in zip(g, g_ref):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=0.05 * float(b.abs().max()), rtol=0.05)


# ---- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,z0,err,match", [
    (dict(), torch.zeros(2, 3, dtype=torch.int64), TypeError, "z0 must be a floating-point"),
    (dict(), torch.zeros(2, 3, dtype=torch.bfloat16), TypeError, "float32 or float64"),
    (dict(), torch.full((2, 3), float("nan")), ValueError, "z0 contains NaN"),
    (dict(), torch.zeros(0, 3), ValueError, "B >= 1"),
    (dict(max_iter=0), torch.zeros(2, 3), ValueError, "max_iter must be an int >= 1"),
    (dict(grad="hook"), torch.zeros(2, 3), ValueError, "grad must be one of"),
    (dict(on_backward_fail="ignore"), torch.zeros(2, 3), ValueError, "on_backward_fail must be one of"),
    (dict(tol=-1.0), torch.zeros(2, 3), ValueError, "tol must be >= 0"),
    (dict(b_tol=float("nan")), torch.zeros(2, 3), ValueError, "b_tol must be >= 0"),
    (dict(b_max_iter=0), torch.zeros(2, 3), ValueError, "b_max_iter must be >= 1"),
    (dict(grad="phantom", phantom_tau=1.5), torch.zeros(2, 3), ValueError, "phantom_tau"),
])
def test_bad_input_is_named(kwargs, z0, err, match):
    W = torch.eye(3, requires_grad=True)
    with pytest.raises(err, match=match):
        deq(lambda z: torch.tanh(z @ W * 0.5), z0, solver=ref_fpi, **kwargs)


def test_f_returning_wrong_shape_is_named():
    W = torch.ones(3, 4, requires_grad=True)
    with pytest.raises(ValueError, match=r"f\(z\) must return the shape of z"):
        deq(lambda z: z @ W, torch.zeros(2, 3), solver=ref_fpi, max_iter=3)


def test_f_not_callable_and_unknown_module_option():
    with pytest.raises(TypeError, match="f must be callable"):
        deq(3, torch.zeros(2, 3))
    with pytest.raises(TypeError, match="unknown option"):
        DEQ(nn.Identity(), bogus=1)


def test_ift_on_device_matches_cpu(device):
    """The layer is device-agnostic: on CUDA (where present) it must give the CPU gradients."""
    cell = Cell()
    x, target = _data()
    grads = []
    for dev in (torch.device("cpu"), device):
        c = Cell().to(dev)
        c.load_state_dict(cell.state_dict())
        xx = x.detach().to(dev).requires_grad_()
        z, stats = deq(c, torch.zeros(3, 6, dtype=DT, device=dev), args=(xx,), solver="anderson", **TIGHT)
        _loss(z, target.to(dev)).backward()
        assert stats.backward.ok
        grads.append([c.W.grad.cpu(), xx.grad.cpu()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)
