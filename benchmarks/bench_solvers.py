"""ldeq.solvers against TorchDEQ, same process, same problem, same number of f evaluations.

    .venv/bin/python benchmarks/bench_solvers.py [--device cpu|cuda] [--batch 8 32] [--iters 20]
                                                 [--m 6] [--repeats 3] [--threads N] [--json out.json]

Problem: z of 98x64x64 per sample, f(z) = tanh(0.5 z + x) (a cheap elementwise contraction), float32,
tol=0 so every solver runs exactly its iteration budget (and ldeq's loop reads nothing back to the
host). Ours runs TorchDEQ's computation: Anderson with lam_mode='abs', restart=0. Both sides get the same number of f
evaluations (TorchDEQ's broyden_solver evaluates f max_iter + 1 times, ours max_iter).

Reported per solver: total time, the time spent inside f (timed around every call, synchronised on
GPU), the solver's own time (total - f), the speed-up of the total and of the solver's own time, and
the memory-traffic floor of the solver's own work: the bytes its fused passes must read and write
(summed over the actual iterations, see docs/benchmarks.md) over the bandwidth of a measured
read (sum), copy and triad over tensors the size of the solver history: the best of the three,
so the floor is as low (strict) as this machine's measured bandwidth allows. "bound on speed-up
total" is TorchDEQ's total over (our f time + the floor): what these passes could reach at best.
Ours runs with its CPU workspace (history buffers reused across calls, as in a training loop:
solvers/workspace.py); "fresh buffers" repeats it with the workspace off (every call allocates and
page-faults its history, as TorchDEQ's does). [--threads N] sets torch's thread count.
"""
import argparse
import json
import os
import sys
import time

import torch

import ldeq.solvers as S


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


class TimedF:
    """f(z) = tanh(0.5 z + x), with the wall time of every call accumulated."""

    def __init__(self, x):
        self.x, self.t, self.calls = x, 0.0, 0

    def __call__(self, z):
        _sync(self.x.device)
        t0 = time.perf_counter()
        out = torch.tanh(torch.add(self.x, z, alpha=0.5))
        _sync(self.x.device)
        self.t += time.perf_counter() - t0
        self.calls += 1
        return out


def run(solver, x, z0, repeats):
    """Best of `repeats` (total, f time, f calls)."""
    best = None
    for _ in range(repeats):
        f = TimedF(x)
        _sync(x.device)
        t0 = time.perf_counter()
        solver(f, z0)
        _sync(x.device)
        total = time.perf_counter() - t0
        if best is None or total < best[0]:
            best = (total, f.t, f.calls)
    return best


def anderson_bytes(B, d, m, iters, elt, beta=1.0):
    """Bytes the fused Anderson passes touch: per iteration k >= 1, mixing reads n = min(k, m)
    rows of F (2n with damping: F and G) and writes X[slot]; the update pass reads f(z) and z,
    writes G[slot] and F[slot] and reads the other n' - 1 residual rows (n' = min(k + 1, m)):
    n' + 3. Iteration 0 only has the update pass (n' = 1). The lowest iterate is saved inside the
    mix (only rows that are evicted, none on this monotone problem)."""
    rows = 4  # k = 0: read fz, z, write g, F
    for k in range(1, iters):
        n, n2 = min(k, m), min(k + 1, m)
        rows += ((n if beta == 1.0 else 2 * n) + 1) + (n2 + 3)
    return rows * B * d * elt


def broyden_bytes(B, d, iters, elt, memory=None):
    """Bytes the fused Broyden passes touch: per iteration with n stored columns, pass 1 reads
    V (n rows; the past steps in V's place when v is implicit), dx, f(z), z and writes g_new
    (n + 4; its dots with g_old come from earlier passes). Pass 2 reads U (n rows), dx, g_new,
    g_old, z and writes u, dx_next, z_next: n + 7 when no column is ever evicted (memory None or
    >= iters - 2: v is kept as float64 coefficients over the steps, not stored), else it also
    reads V and writes v: 2n + 8. The next <u_i, dx> and <dx_next, g_new> are summed from the
    block just written, in cache. Iteration 0 computes g0 = f(z0) - z0 and the first step
    (~ 6 rows); the last iteration only runs pass 1."""
    L = min(iters if memory is None else memory, max(1, iters - 1))
    implicit_v = L >= iters - 2
    rows, n = 6, 0
    for k in range(1, iters):
        rows += n + 4
        if k < iters - 1:
            rows += n + 7 if implicit_v else 2 * n + 8
            n = min(n + 1, L)
    return rows * B * d * elt


def bandwidth(B, d, dev, dtype, rows=12, repeats=5):
    """Best bytes/s of three streaming torch ops over buffers the size of the solver history
    ((rows, B, d): larger than the last-level cache, as the history is), warm, best of `repeats`:
    a read-only sum, a copy, and a triad c = a + 0.5 b over (rows / 3, B, d) thirds. The maximum
    is used, which makes the floor strict."""
    h = torch.randn(rows, B, d, device=dev, dtype=dtype)
    h2 = torch.empty_like(h)
    k = max(1, rows // 3)
    a, b, c = h[:k], h[k:2 * k], h2[:k]
    nb = h.numel() * h.element_size()
    cases = [(lambda: h.sum(), nb), (lambda: h2.copy_(h), 2 * nb),
             (lambda: torch.add(a, b, alpha=0.5, out=c), 3 * a.numel() * a.element_size())]
    best = 0.0
    for fn, nbytes in cases:
        for _ in range(repeats):
            _sync(dev)
            t0 = time.perf_counter()
            fn()
            _sync(dev)
            best = max(best, nbytes / (time.perf_counter() - t0))
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--m", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--solvers", nargs="+", default=["anderson", "broyden"])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    from torchdeq.solver import anderson_solver, broyden_solver

    dev, dtype, d = torch.device(a.device), torch.float32, 98 * 64 * 64
    T, m = a.iters, a.m
    ours = {
        # TorchDEQ's computation: absolute lam, no restarts (the fused kernel solve).
        "anderson": lambda f, z0: S.anderson(f, z0, m=m, lam=1e-4, lam_mode="abs", restart=0, max_iter=T, tol=0,
                                             stop_mode="abs"),
        "broyden": lambda f, z0: S.broyden(f, z0, max_iter=T, tol=0, stop_mode="abs"),
    }
    theirs = {
        "anderson": lambda f, z0: anderson_solver(f, z0, m=m, lam=1e-4, max_iter=T, tol=0, stop_mode="abs"),
        "broyden": lambda f, z0: broyden_solver(f, z0, max_iter=T - 1, tol=0, stop_mode="abs"),
    }
    rows = []
    print(f"load average at start {os.getloadavg()[0]:.2f}, ", end="")
    print(f"device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"d = 98*64*64 = {d}, {T} f evaluations, m = {m}, float32", flush=True)
    for B in a.batch:
        torch.manual_seed(0)
        x = torch.randn(B, 98, 64, 64, device=dev, dtype=dtype)
        z0 = torch.zeros_like(x)
        bw = bandwidth(B, d, dev, dtype, rows=3 * m)
        for name in a.solvers:
            # Interleaved repeats, best of each: a shared machine's load hits both sides alike.
            t_o = t_t = t_c = None
            limit = S.workspace_limit() / 2 ** 20
            run(ours[name], x, z0, 1)  # untimed: fills the workspace, as the first training step does
            for _ in range(a.repeats):
                o, t = run(ours[name], x, z0, 1), run(theirs[name], x, z0, 1)
                t_o = o if t_o is None or o[0] < t_o[0] else t_o
                t_t = t if t_t is None or t[0] < t_t[0] else t_t
            S.set_workspace_limit(0)  # fresh history buffers every call, as TorchDEQ allocates
            for _ in range(a.repeats):
                c = run(ours[name], x, z0, 1)
                t_c = c if t_c is None or c[0] < t_c[0] else t_c
            S.set_workspace_limit(limit)
            bw = max(bw, bandwidth(B, d, dev, dtype, rows=3 * m))
            nbytes = (anderson_bytes(B, d, m, T, 4) if name == "anderson" else broyden_bytes(B, d, T, 4))
            floor = nbytes / bw
            row = dict(solver=name, B=B, ours_total=t_o[0], ours_f=t_o[1], ours_calls=t_o[2],
                       torchdeq_total=t_t[0], torchdeq_f=t_t[1], torchdeq_calls=t_t[2],
                       ours_self=t_o[0] - t_o[1], torchdeq_self=t_t[0] - t_t[1],
                       speedup_total=t_t[0] / t_o[0], speedup_self=(t_t[0] - t_t[1]) / (t_o[0] - t_o[1]),
                       floor=floor, self_over_floor=(t_o[0] - t_o[1]) / floor, bandwidth_GBs=bw / 1e9,
                       bytes=nbytes,
                       # the most any solver with these passes could reach: our f time + the floor
                       speedup_bound=t_t[0] / (t_o[1] + floor),
                       ours_total_fresh=t_c[0], speedup_total_fresh=t_t[0] / t_c[0])
            rows.append(row)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}),
                  flush=True)
    print("\n| solver | B | ours total s | ours f s | ours self s | TorchDEQ total s | TorchDEQ self s | "
          "speed-up total | speed-up self | floor s | self / floor | bound on speed-up total | "
          "ours total, fresh buffers s | speed-up total, fresh buffers |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['solver']} | {r['B']} | {r['ours_total']:.3f} | {r['ours_f']:.3f} | {r['ours_self']:.3f} | "
              f"{r['torchdeq_total']:.3f} | {r['torchdeq_self']:.3f} | {r['speedup_total']:.2f}x | "
              f"{r['speedup_self']:.2f}x | {r['floor']:.3f} | {r['self_over_floor']:.2f} | "
              f"{r['speedup_bound']:.2f}x | {r['ours_total_fresh']:.3f} | {r['speedup_total_fresh']:.2f}x |")
    print("\nstreaming bandwidth (best of sum, copy, triad): " + ", ".join(f"B={r['B']}: {r['bandwidth_GBs']:.1f} GB/s" for r in rows[::len(a.solvers)]))
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


# pytest-benchmark entry points (`make bench`): B=8, same problem and budget as main(), ours and
# TorchDEQ's side by side (pytest-benchmark's table gives the ratio of the means).
import pytest  # noqa: E402


def _problem(B=8):
    torch.manual_seed(0)
    x = torch.randn(B, 98, 64, 64)
    return (lambda z: torch.tanh(torch.add(x, z, alpha=0.5))), torch.zeros_like(x)


@pytest.mark.parametrize("solver", ["anderson", "broyden"])
def test_ldeq_solver(benchmark, solver):
    f, z0 = _problem()
    fn = {"anderson": lambda: S.anderson(f, z0, m=6, lam=1e-4, lam_mode="abs", restart=0, max_iter=20, tol=0,
                                         stop_mode="abs"),
          "broyden": lambda: S.broyden(f, z0, max_iter=20, tol=0, stop_mode="abs")}[solver]
    benchmark(fn)


@pytest.mark.parametrize("solver", ["anderson", "broyden"])
def test_torchdeq_solver(benchmark, solver):
    from torchdeq.solver import anderson_solver, broyden_solver
    f, z0 = _problem()
    fn = {"anderson": lambda: anderson_solver(f, z0, m=6, lam=1e-4, max_iter=20, tol=0, stop_mode="abs"),
          "broyden": lambda: broyden_solver(f, z0, max_iter=19, tol=0, stop_mode="abs")}[solver]
    benchmark(fn)


if __name__ == "__main__":
    sys.exit(main())
