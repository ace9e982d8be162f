"""Sync-free fixed budget: with tol = 0 a forward solve reads nothing back to the host (every
solver, deq, tensor and list states), torch.compile(fullgraph=True) of a DEQ forward traces and
matches eager, and with a tolerance the loop reads back at most once per iteration."""
import pytest
import torch

import ldeq.solvers as S

F64 = torch.float64
SOLVERS = ["anderson", "broyden", "fixed_point", "fixed_point_last"]
# Every way a tensor's value reaches Python.
READ_BACKS = ["item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "nonzero",
              "__len__"]


class HostReads:
    """Counts (or forbids) the Tensor methods that copy a value to the host."""

    def __init__(self, monkeypatch, forbid):
        self.count = 0
        for name in READ_BACKS:
            orig = getattr(torch.Tensor, name)

            def spy(self_t, *a, _orig=orig, _name=name, **k):
                if forbid:
                    raise AssertionError(f"host read-back: Tensor.{_name}")
                self.count += 1
                return _orig(self_t, *a, **k)
            monkeypatch.setattr(torch.Tensor, name, spy)


def cell(B=4, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(d, d).double()
    with torch.no_grad():
        lin.weight.copy_(0.3 * torch.randn(d, d, generator=g, dtype=F64) / d ** 0.5)
    x = torch.randn(B, d, generator=g, dtype=F64)
    return (lambda z, x_: torch.tanh(lin(z) + x_)), x


@pytest.mark.parametrize("list_state", [False, True])
@pytest.mark.parametrize("name", SOLVERS)
def test_fixed_budget_reads_nothing_back(name, list_state, monkeypatch):
    f, x = cell()
    if list_state:
        fl = lambda zs, x_: list(f(torch.cat(zs, 1), x_).split([6, 10], 1))
        z0 = [torch.zeros(4, 6, dtype=F64), torch.zeros(4, 10, dtype=F64)]
    else:
        fl, z0 = f, torch.zeros_like(x)
    with torch.no_grad():
        z_ref, st_ref = S.deq(fl, z0, args=(x,), solver=name, max_iter=7, tol=0)
        HostReads(monkeypatch, forbid=True)
        z, st = S.deq(fl, z0, args=(x,), solver=name, max_iter=7, tol=0)  # raises on any read-back
        S.get_solver(name)(lambda z_: fl(z_, x), z0, max_iter=7, tol=0)
    monkeypatch.undo()
    assert st.abs_trace.shape[1] == 7 and int(st.nstep.max()) == 7
    zc = torch.cat(z, 1) if list_state else z
    zc_ref = torch.cat(z_ref, 1) if list_state else z_ref
    torch.testing.assert_close(zc, zc_ref, rtol=0, atol=0)  # same process, same shapes


@pytest.mark.parametrize("name", ["anderson", "broyden", "fixed_point"])
def test_with_a_tolerance_at_most_one_read_back_per_iteration(name, monkeypatch):
    f, x = cell(B=6)
    x = x * torch.linspace(0.1, 3, 6, dtype=F64)[:, None]  # samples converge at different iterations
    with torch.no_grad():
        reads = HostReads(monkeypatch, forbid=False)
        _, st = S.get_solver(name)(lambda z: f(z, x), torch.zeros_like(x), max_iter=60, tol=1e-10)
    monkeypatch.undo()
    iters = st.abs_trace.shape[1]
    assert bool(st.converged.all()) and iters > 5
    # check_common's finiteness test of z0 reads once before the loop.
    assert reads.count <= iters + 1, (reads.count, iters)


@pytest.mark.parametrize("name", SOLVERS)
def test_compiled_fixed_budget_deq_forward_matches_eager(name):
    torch._dynamo.reset()
    f, x = cell()

    def forward(x_):
        z, st = S.deq(f, torch.zeros_like(x_), args=(x_,), solver=name, max_iter=6, tol=0)
        return z, st.abs_trace

    with torch.no_grad():
        z_e, tr_e = forward(x)
        # fullgraph=True: any graph break (a host read, an untraceable call) is an error.
        # aot_eager traces and functionalises the whole forward (custom ops included) like
        # inductor does, without its minutes of C++ compilation on a CPU runner.
        z_c, tr_c = torch.compile(forward, fullgraph=True, backend="aot_eager")(x)
    # Same ops in the same order on the same shapes: equal up to rounding of a re-traced graph.
    torch.testing.assert_close(z_c, z_e, rtol=0, atol=1e-14)
    torch.testing.assert_close(tr_c, tr_e, rtol=0, atol=1e-14)


def test_compiled_list_state_deq_forward_matches_eager():
    torch._dynamo.reset()
    f, x = cell()
    fl = lambda zs, x_: list(f(torch.cat(zs, 1), x_).split([6, 10], 1))

    def forward(x_):
        z, _ = S.deq(fl, [x_.new_zeros(4, 6), x_.new_zeros(4, 10)], args=(x_,), solver="anderson",
                     max_iter=6, tol=0)
        return z

    with torch.no_grad():
        z_e = forward(x)
        z_c = torch.compile(forward, fullgraph=True, backend="aot_eager")(x)
    for a, b in zip(z_c, z_e):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)
