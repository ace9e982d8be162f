"""TorchDEQ interop both ways (ldeq.solvers.torchdeq_compat, TorchDEQ 0.1.0 pinned).

TorchDEQ's own DEQ layer (get_deq, cores 'sliced' and 'indexing', IFT and phantom gradients)
run with ldeq's solvers must give the fixed point and parameter gradients that the same layer
gives with TorchDEQ's solvers, on a single-tensor and on a list state. And a TorchDEQ solver
runs under ldeq.solvers.deq.

Tolerances (float64, cell f(z) = tanh(W z + U x) with ||W||_2 = RHO): every solve stops at an
absolute residual below TOL, so each library's z is within TOL / (1 - RHO) of z* per sample and
the two within 2 TOL / (1 - RHO); the IFT backward solves stop below TOL too, and the gradients
are Lipschitz in (z, g) with constants O(||x||) = O(10) here, hence ATOL_GRAD = 100 TOL / (1 - RHO).
Phantom gradients are a smooth function of z* alone.
"""
import importlib.metadata

import pytest
import torch

import ldeq.solvers as S

import torchdeq as td  # noqa: E402  (a test dependency: missing = failure, never a skip)
import ldeq.solvers.torchdeq_compat as C  # noqa: E402  (registers both ways)
from torchdeq import get_deq  # noqa: E402

F64 = torch.float64
RHO, TOL = 0.5, 1e-11
ATOL_Z = 2 * TOL / (1 - RHO) * 10  # x10: a solve's last residual is reported before its final step
ATOL_GRAD = 100 * TOL / (1 - RHO)
PAIRS = [("ldeq_anderson", "anderson"), ("ldeq_broyden", "broyden"), ("ldeq_fixed_point", "fixed_point_iter")]
SHAPES = [(2, 3), (4,)]


def test_torchdeq_version_is_the_pinned_one():
    assert importlib.metadata.version("torchdeq") == C.TORCHDEQ_TESTED == "0.1.0"


class Cell(torch.nn.Module):
    def __init__(self, d=10, seed=0, list_state=False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(d, d, generator=g, dtype=F64)
        self.W = torch.nn.Parameter(RHO * W / torch.linalg.matrix_norm(W, 2))
        self.U = torch.nn.Parameter(torch.randn(d, d, generator=g, dtype=F64) / d ** 0.5)
        self.list_state = list_state

    def forward(self, z, x):
        if self.list_state:  # z = [a (B, 2, 3), b (B, 4)], coupled through W
            B = x.shape[0]
            zc = torch.cat([z[0].reshape(B, -1), z[1]], 1)
            out = torch.tanh(zc @ self.W.t() + x @ self.U.t())
            return [out[:, :6].reshape(B, 2, 3), out[:, 6:]]
        return torch.tanh(z @ self.W.t() + x @ self.U.t())


def run_layer(f_solver, b_solver, core, grad, list_state, train=True):
    cell = Cell(list_state=list_state)
    x = torch.randn(3, 10, generator=torch.Generator().manual_seed(1), dtype=F64)
    kw = dict(core=core, f_solver=f_solver, b_solver=b_solver, f_max_iter=120, b_max_iter=120,
              f_tol=TOL, b_tol=TOL)
    kw.update(dict(ift=True) if grad == "ift" else dict(grad=grad, tau=0.8))
    layer = get_deq(**kw)
    layer.train(train)
    z0 = [torch.zeros(3, *s, dtype=F64) for s in SHAPES] if list_state else torch.zeros(3, 10, dtype=F64)
    # TorchDEQ calls a list-state f as f(*pieces)
    func = (lambda *zs: cell(list(zs), x)) if list_state else (lambda z: cell(z, x))
    z_out, info = layer(func, z0)
    z = z_out[-1]
    flat = torch.cat([t.reshape(3, -1) for t in z], 1) if list_state else z
    wt = torch.linspace(-1, 1, 10, dtype=F64)
    if not train:
        return flat.detach(), None, info
    gW, gU = torch.autograd.grad((flat * wt).sum(), (cell.W, cell.U))
    return flat.detach(), (gW, gU), info


@pytest.mark.parametrize("list_state", [False, True])
@pytest.mark.parametrize("grad", ["ift", 3])
@pytest.mark.parametrize("core", ["sliced", "indexing"])
@pytest.mark.parametrize("ours,theirs", PAIRS)
def test_torchdeq_layer_with_ldeq_solvers_matches_torchdeq_solvers(ours, theirs, core, grad, list_state):
    z_o, (gW_o, gU_o), info_o = run_layer(ours, ours, core, grad, list_state)
    z_t, (gW_t, gU_t), info_t = run_layer(theirs, theirs, core, grad, list_state)
    assert float(info_o["abs_lowest"].max()) < TOL  # TorchDEQ's info dict, from ldeq's stats
    torch.testing.assert_close(z_o, z_t, rtol=0, atol=ATOL_Z)
    torch.testing.assert_close(gW_o, gW_t, rtol=0, atol=ATOL_GRAD)
    torch.testing.assert_close(gU_o, gU_t, rtol=0, atol=ATOL_GRAD)


@pytest.mark.parametrize("ours,theirs", PAIRS)
def test_torchdeq_layer_eval_mode(ours, theirs):
    z_o, _, info = run_layer(ours, ours, "sliced", "ift", False, train=False)
    z_t, _, _ = run_layer(theirs, theirs, "sliced", "ift", False, train=False)
    torch.testing.assert_close(z_o, z_t, rtol=0, atol=ATOL_Z)
    assert set(info) >= {"abs_lowest", "rel_lowest", "abs_trace", "rel_trace", "nstep", "sradius"}


def test_adapter_honours_torchdeq_defaults_and_indexing():
    solver = td.solver.get_solver("ldeq_fixed_point")
    c = torch.tensor([[1.0, -2.0]], dtype=F64)
    f = lambda z: 0.5 * z + c  # z* = 2c; residual halves each step
    # stop_mode defaults to 'abs' (TorchDEQ's default): an abs tol of 1e-3 stops later than rel would.
    z, traj, info = solver(f, torch.zeros(1, 2, dtype=F64), max_iter=100, tol=1e-3, indexing=[2, 4, 500])
    assert abs(float(info["abs_lowest"][0])) < 1e-3
    assert float((f(z) - z).norm()) < 1e-3
    assert len(traj) == 2  # iterations 2 and 4 were reached, 500 was not
    torch.testing.assert_close(traj[0], torch.zeros(1, 2, dtype=F64) + c, rtol=0, atol=1e-15)  # z_1 = c
    # no requested iteration reached -> the final estimate alone (TorchDEQ's convention)
    z, traj, _ = solver(f, torch.zeros(1, 2, dtype=F64), max_iter=100, tol=1e-3, indexing=[500])
    assert len(traj) == 1 and torch.equal(traj[0], z)
    _, traj, _ = solver(f, torch.zeros(1, 2, dtype=F64), max_iter=10, tol=1e-3)
    assert traj == []


def test_adapter_maps_torchdeq_option_names():
    f = lambda z: torch.tanh(0.5 * z + 1.0)
    z0 = torch.zeros(2, 5, dtype=F64)
    # LBFGS_thres -> memory; tau -> beta; lam -> absolute lam (TorchDEQ's meaning)
    zb, _, _ = td.solver.get_solver("ldeq_broyden")(f, z0, max_iter=40, tol=1e-12, LBFGS_thres=3)
    zr, _ = S.broyden(f, z0, max_iter=40, tol=1e-12, stop_mode="abs", memory=3)
    torch.testing.assert_close(zb, zr, rtol=0, atol=0)
    za, _, _ = td.solver.get_solver("ldeq_anderson")(f, z0, max_iter=12, tol=0, m=4, lam=1e-3, tau=0.7)
    zr, _ = S.anderson(f, z0, max_iter=12, tol=0, stop_mode="abs", m=4, lam=1e-3, lam_mode="abs", beta=0.7)
    torch.testing.assert_close(za, zr, rtol=0, atol=0)


@pytest.mark.parametrize("kw,err,match", [
    (dict(ls=True), ValueError, r"ls=True \(Broyden line search\) is not supported"),
    (dict(return_final=True), ValueError, "return_final=True is not supported"),
    (dict(LBFGS_thres=3, memory=3), TypeError, "give LBFGS_thres or memory, not both"),
    (dict(typo_option=1), TypeError, r"unknown option\(s\) 'typo_option'; valid options are"),
])
def test_adapter_refuses_what_it_cannot_honour(kw, err, match):
    with pytest.raises(err, match=match):
        td.solver.get_solver("ldeq_broyden")(lambda z: 0.5 * z, torch.ones(1, 3), **kw)


def test_adapter_ls_false_and_return_final_false_are_accepted():
    z, _, _ = td.solver.get_solver("ldeq_broyden")(lambda z: 0.5 * z + 1, torch.zeros(1, 3, dtype=F64),
                                                   ls=False, return_final=False, tol=1e-12)
    torch.testing.assert_close(z, torch.full((1, 3), 2.0, dtype=F64), rtol=0, atol=1e-11)


@pytest.mark.parametrize("name", ["torchdeq_anderson", "torchdeq_broyden", "torchdeq_fixed_point_iter"])
@pytest.mark.parametrize("grad", ["ift", "phantom"])
def test_torchdeq_solver_under_ldeq_deq(name, grad):
    cell = Cell()
    x = torch.randn(3, 10, generator=torch.Generator().manual_seed(1), dtype=F64)
    kw = dict(max_iter=120, tol=TOL, stop_mode="abs", grad=grad, b_tol=TOL, b_stop_mode="abs")
    wt = torch.linspace(-1, 1, 10, dtype=F64)
    res = {}
    for solver in (name, name.split("_", 1)[1].replace("fixed_point_iter", "fixed_point")):
        z, st = S.deq(lambda z: cell(z, x), torch.zeros(3, 10, dtype=F64), solver=solver, **kw)
        res[solver] = (z.detach(), torch.autograd.grad((z * wt).sum(), (cell.W, cell.U)), st)
    (z_t, g_t, st_t), (z_o, g_o, _) = res.values()
    assert bool(st_t.converged.all()) and st_t.solver == name
    torch.testing.assert_close(z_t, z_o, rtol=0, atol=ATOL_Z)
    for a, b in zip(g_t, g_o):
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL_GRAD)
