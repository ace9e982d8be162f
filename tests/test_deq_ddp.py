"""DistributedDataParallel with the DEQ layer: 2 CPU processes on gloo, each with half of the batch,
must produce the gradients of the full batch computed in one process (float64, IFT backward)."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ldeq.solvers.deq import DEQ

DT = torch.float64
B, DX, D = 8, 4, 6


class Cell(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(D, D, dtype=DT)
        with torch.no_grad():
            self.lin.weight.mul_(0.6 / torch.linalg.matrix_norm(self.lin.weight, 2))

    def forward(self, z, inj):
        return torch.tanh(self.lin(z) + inj)


class Net(nn.Module):
    """Encoder -> DEQ(cell) with the encoding injected -> head: parameters before, inside and
    after the equilibrium all need the right gradient."""

    def __init__(self, solver):
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Linear(DX, D, dtype=DT)
        self.deq = DEQ(Cell(), max_iter=200, solver=solver, tol=1e-13, stop_mode="abs",
                       b_max_iter=200, b_tol=1e-13, b_stop_mode="abs", on_backward_fail="raise")
        self.head = nn.Linear(D, 1, dtype=DT)

    def forward(self, x):
        inj = self.enc(x)
        z, stats = self.deq(torch.zeros(x.shape[0], D, dtype=DT), inj)
        return self.head(z).squeeze(1), stats


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, DX, generator=g, dtype=DT), torch.randn(B, generator=g, dtype=DT)


def _solver_name():
    return "anderson"


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _worker(rank, world, init_file, out_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        net = Net(_solver_name())
        ddp = nn.parallel.DistributedDataParallel(net)
        x, y = _data()
        n = B // world
        pred, stats = ddp(x[rank * n:(rank + 1) * n])
        loss = ((pred - y[rank * n:(rank + 1) * n]) ** 2).mean()
        loss.backward()
        assert stats.backward.ok, "backward solve failed in a DDP rank"
        if rank == 0:
            torch.save(_grads(net), out_file)
        # Both ranks reach this point before either tears gloo down: destroying the group while the
        # peer still has traffic in flight aborted the peer ("terminate called without an active
        # exception", seen once in CI).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_single_process(tmp_path):
    assert dist.is_available() and dist.is_gloo_available(), "torch.distributed with gloo is required"
    out = tmp_path / "grads.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    ddp_grads = torch.load(out)

    net = Net(_solver_name())
    x, y = _data()
    pred, stats = net(x)
    ((pred - y) ** 2).mean().backward()
    ref = _grads(net)
    assert set(ddp_grads) == set(ref) == {"enc.weight", "enc.bias", "deq.f.lin.weight", "deq.f.lin.bias",
                                          "head.weight", "head.bias"}
    for name in ref:
        assert ref[name].abs().max() > 0
        torch.testing.assert_close(ddp_grads[name], ref[name], atol=1e-11, rtol=1e-9, msg=name)
