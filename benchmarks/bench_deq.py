"""DEQ training-step benchmarks: peak memory vs max_iter (IFT vs explicit unrolling) and
forward+backward time vs TorchDEQ's ``get_deq`` (same cell, same solver, IFT backward).

Memory (each point in a fresh process; peak RSS from /proc/self/status VmHWM, reset with
/proc/self/clear_refs just before the step; glibc's mmap threshold is pinned so freed large
blocks go back to the OS and RSS follows live memory). Two metrics: "allocated" (MALLOC_PERTURB_
makes glibc write every fresh block, so RSS counts all allocated bytes, as an allocator's peak
would) and "touched" (only pages actually written, e.g. the used part of a solver's history):
    python benchmarks/bench_deq.py memory --metric allocated --modes ift jfb unrolled
    python benchmarks/bench_deq.py memory --metric touched --modes ift jfb unrolled
    python benchmarks/bench_deq.py plot      # docs/img/deq_memory.png from both JSON files
Time (one process, our layer and TorchDEQ interleaved in rounds on the same inputs, median wall
and process-CPU time per step; CPU time is less disturbed by other processes on a shared machine):
    python benchmarks/bench_deq.py time
pytest-benchmark entry points (small sizes): pytest benchmarks/bench_deq.py --benchmark-only
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
from _memory import reset_peak_rss, status_kb
from torch import nn

from ldeq._io import atomic_savefig, atomic_write_json

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


class ConvCell(nn.Module):
    """LDEQ-like cell: z -> GN(conv(relu(GN(conv(z)))) + x), a (B, C, H, W) state with the
    injection x added. Weights are scaled down so the map is contractive and solves converge."""

    def __init__(self, C=32, groups=4, scale=0.5):
        super().__init__()
        self.conv1 = nn.Conv2d(C, C, 3, padding=1)
        self.conv2 = nn.Conv2d(C, C, 3, padding=1)
        self.gn1 = nn.GroupNorm(groups, C)
        self.gn2 = nn.GroupNorm(groups, C)
        with torch.no_grad():
            self.conv1.weight.mul_(scale)
            self.conv2.weight.mul_(scale)

    def forward(self, z, x):
        h = torch.relu(self.gn1(self.conv1(z)))
        return torch.tanh(0.5 * self.gn2(self.conv2(h)) + x)


def make_problem(B=8, C=32, H=64, seed=0):
    torch.manual_seed(seed)
    cell = ConvCell(C)
    x = torch.randn(B, C, H, H)
    return cell, x, torch.zeros(B, C, H, H)


def ldeq_step(cell, x, z0, k, solver="anderson", grad="ift"):
    """One training step of our layer: solve k iterations (tol=0), backward solve k iterations."""
    from ldeq.solvers.deq import deq
    z, stats = deq(cell, z0, args=(x,), solver=solver, max_iter=k, tol=0.0, grad=grad,
                   b_max_iter=k, b_tol=0.0, on_backward_fail="zero")
    z.pow(2).mean().backward()
    return stats


def unrolled_step(cell, x, z0, k):
    """Explicit unrolling: k tracked applications of the same cell, full autograd."""
    z = z0
    for _ in range(k):
        z = cell(z, x)
    z.pow(2).mean().backward()


def _child_memory(mode, k, B, C, H, threads):
    """Runs in a fresh process: one training step; prints a JSON line with the RSS figures."""
    torch.set_num_threads(threads)
    cell, x, z0 = make_problem(B, C, H)
    before = status_kb("VmRSS")
    reset_peak_rss()  # the peak below belongs to this step only
    t0 = time.perf_counter()
    if mode == "unrolled":
        unrolled_step(cell, x, z0, k)
    else:
        ldeq_step(cell, x, z0, k, grad=mode)
    dt = time.perf_counter() - t0
    peak = status_kb("VmHWM")
    print(json.dumps(dict(mode=mode, k=k, rss_before_mb=before / 1024, peak_mb=peak / 1024,
                          step_peak_mb=(peak - before) / 1024, seconds=dt)))


def run_memory(args):
    from tqdm import tqdm
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072",
               OMP_NUM_THREADS=str(args.threads))
    if args.metric == "allocated":
        # glibc fills every fresh block (MALLOC_PERTURB_), so a buffer counts in RSS as soon as it
        # is allocated, touched or not: RSS then follows the allocator's figures.
        env["MALLOC_PERTURB_"] = "1"
    rows = []
    points = [(m, k) for m in args.modes for k in args.ks]
    for mode, k in tqdm(points, desc="memory points"):
        vals = []
        for _ in range(args.repeats):
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "_child", mode, str(k),
                                  str(args.B), str(args.C), str(args.H), str(args.threads)],
                                 env=env, cwd=ROOT, capture_output=True, text=True, check=True)
            vals.append(json.loads(out.stdout.strip().splitlines()[-1]))
        best = min(vals, key=lambda v: v["step_peak_mb"])  # least disturbed by the other processes
        rows.append(best)
    state_mb = args.B * args.C * args.H * args.H * 4 / 2 ** 20
    result = dict(config=dict(B=args.B, C=args.C, H=args.H, threads=args.threads, state_mb=state_mb,
                              solver="anderson", repeats=args.repeats, metric=args.metric), rows=rows)
    atomic_write_json(args.json, result, indent=1)
    print(f"state z: {args.B}x{args.C}x{args.H}x{args.H} float32 = {state_mb:.1f} MB")
    print("| mode | max_iter | step peak (MB over pre-step RSS) | process peak RSS (MB) | step time (s) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['k']} | {r['step_peak_mb']:.1f} | {r['peak_mb']:.1f} | {r['seconds']:.2f} |")


def run_plot(args):
    """One figure from the JSON files of `memory` runs (e.g. the allocated and touched metrics)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    names = {"ift": "ldeq IFT", "jfb": "ldeq JFB", "unrolled": "explicit unrolling"}
    colors = {"ift": "tab:blue", "jfb": "tab:green", "unrolled": "tab:red"}
    state_mb = None
    for path in args.inputs:
        with open(path) as fh:
            res = json.load(fh)
        metric = res["config"]["metric"]
        state_mb = res["config"]["state_mb"]
        for mode in names:
            pts = [(r["k"], r["step_peak_mb"]) for r in res["rows"] if r["mode"] == mode]
            if pts:
                ax.plot(*zip(*pts), "o-" if metric == "allocated" else "s--", color=colors[mode],
                        alpha=1.0 if metric == "allocated" else 0.6,
                        label=f"{names[mode]} ({'allocated' if metric == 'allocated' else 'touched pages'})")
    ax.set_xlabel("max_iter (forward iterations; IFT backward uses as many)")
    ax.set_ylabel("peak RSS of one step over pre-step RSS (MB)")
    ax.set_title(f"DEQ training step memory, CPU (state z {state_mb:.0f} MB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = atomic_savefig(fig, args.out)
    print(f"plot written to {path}")


# ---- time vs TorchDEQ -------------------------------------------------------------------------

def torchdeq_layer(k, solver="anderson"):
    from torchdeq import get_deq
    return get_deq(core="sliced", ift=True, f_solver=solver, b_solver=solver, f_max_iter=k, b_max_iter=k,
                   f_tol=0.0, b_tol=0.0, f_stop_mode="abs", b_stop_mode="abs")


def torchdeq_step(layer, cell, x, z0):
    zs, info = layer(lambda z: cell(z, x), z0)
    zs[-1].pow(2).mean().backward()


class PointwiseCell(nn.Module):
    """A cheap cell on a large state: z -> tanh(0.5 * conv1x1(z) + x). Per-channel mixing only, so
    the solver's own work (Anderson history, mixing, residual norms) is a large part of a step."""

    def __init__(self, C=98):
        super().__init__()
        self.mix = nn.Conv2d(C, C, 1)
        with torch.no_grad():
            self.mix.weight.mul_(0.5 / torch.linalg.matrix_norm(self.mix.weight[:, :, 0, 0], 2))

    def forward(self, z, x):
        return torch.tanh(self.mix(z) + x)


def make_time_problem(cell_name, B, C, H, seed=0):
    if cell_name == "conv":
        return make_problem(B, C, H, seed)
    torch.manual_seed(seed)
    return PointwiseCell(C), torch.randn(B, C, H, H), torch.zeros(B, C, H, H)


def _measure(fn, reps):
    """(wall seconds, process CPU seconds) per call, median over ``reps`` calls."""
    walls, cpus = [], []
    for _ in range(reps):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return sorted(walls)[reps // 2], sorted(cpus)[reps // 2]


def run_time(args):
    from tqdm import tqdm
    torch.set_num_threads(args.threads)
    rows = []
    for cell_name, (B, C, H) in [(c, s) for c in args.cells for s in args.sizes[c]]:
        cell, x, z0 = make_time_problem(cell_name, B, C, H)
        layer = torchdeq_layer(args.k)
        layer.train()

        def ours():
            cell.zero_grad()
            ldeq_step(cell, x, z0, args.k)

        def theirs():
            cell.zero_grad()
            torchdeq_step(layer, cell, x, z0)

        def f_only():
            with torch.no_grad():
                cell(z0, x)
        for fn in (ours, theirs, f_only):  # warm-up (allocator, oneDNN primitives)
            fn()
        res = {"ldeq": [], "torchdeq": [], "f": []}
        # Rounds interleave the two layers so that load from other processes hits both alike.
        for _ in tqdm(range(args.rounds), desc=f"{cell_name} {B}x{C}x{H}x{H}"):
            res["ldeq"].append(_measure(ours, args.reps))
            res["torchdeq"].append(_measure(theirs, args.reps))
            res["f"].append(_measure(f_only, 3))
        med = {n: (sorted(w for w, _ in v)[len(v) // 2], sorted(c for _, c in v)[len(v) // 2])
               for n, v in res.items()}
        rows.append(dict(cell=cell_name, B=B, C=C, H=H, k=args.k,
                         f_ms=med["f"][0] * 1e3, ldeq_ms=med["ldeq"][0] * 1e3, torchdeq_ms=med["torchdeq"][0] * 1e3,
                         ldeq_cpu_ms=med["ldeq"][1] * 1e3, torchdeq_cpu_ms=med["torchdeq"][1] * 1e3,
                         speedup_wall=med["torchdeq"][0] / med["ldeq"][0],
                         speedup_cpu=med["torchdeq"][1] / med["ldeq"][1],
                         ldeq_cpu_min_ms=min(c for _, c in res["ldeq"]) * 1e3,
                         torchdeq_cpu_min_ms=min(c for _, c in res["torchdeq"]) * 1e3,
                         rounds_ratio_wall=[t[0] / o[0] for o, t in zip(res["ldeq"], res["torchdeq"])],
                         rounds_ratio_cpu=[t[1] / o[1] for o, t in zip(res["ldeq"], res["torchdeq"])]))
        print(rows[-1], flush=True)
    atomic_write_json(args.json, dict(threads=args.threads, load=os.getloadavg(), rows=rows), indent=1)
    print(f"threads={args.threads}, load average at the end {os.getloadavg()[0]:.1f}")
    print("| cell | state (B,C,H,W) | iters fwd/bwd | f alone (ms) | ldeq step wall / CPU (ms) "
          "| torchdeq step wall / CPU (ms) | speed-up wall / CPU (median) | CPU speed-up per round |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        per = ", ".join(f"{v:.2f}" for v in r["rounds_ratio_cpu"])
        print(f"| {r['cell']} | {r['B']}x{r['C']}x{r['H']}x{r['H']} | {r['k']}/{r['k']} | {r['f_ms']:.1f} "
              f"| {r['ldeq_ms']:.0f} / {r['ldeq_cpu_ms']:.0f} | {r['torchdeq_ms']:.0f} / {r['torchdeq_cpu_ms']:.0f} "
              f"| {r['speedup_wall']:.2f}x / {r['speedup_cpu']:.2f}x | {per} |")


# ---- pytest-benchmark entry points (small; `pytest benchmarks/bench_deq.py --benchmark-only`) --

def _small():
    # One thread: on a shared 2-core machine two OpenMP threads wait at every op's barrier for a
    # descheduled peer (measured: a 4x16x32x32 step took 5.6 s with 2 threads, 0.07 s with 1).
    torch.set_num_threads(int(os.environ.get("LDEQ_BENCH_THREADS", "1")))
    return make_problem(B=4, C=16, H=32)


def test_bench_ldeq_ift_step(benchmark):
    cell, x, z0 = _small()
    benchmark(lambda: (cell.zero_grad(), ldeq_step(cell, x, z0, 10)))


def test_bench_torchdeq_ift_step(benchmark):
    cell, x, z0 = _small()
    layer = torchdeq_layer(10)
    benchmark(lambda: (cell.zero_grad(), torchdeq_step(layer, cell, x, z0)))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        mode, k, B, C, H, threads = argv[1], *map(int, argv[2:7])
        _child_memory(mode, k, B, C, H, threads)
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10, 20])
    m.add_argument("--modes", nargs="+", default=["ift", "unrolled"], choices=["ift", "jfb", "unrolled"])
    m.add_argument("--B", type=int, default=8)
    m.add_argument("--C", type=int, default=32)
    m.add_argument("--H", type=int, default=64)
    m.add_argument("--threads", type=int, default=2)
    m.add_argument("--repeats", type=int, default=2)
    m.add_argument("--metric", default="allocated", choices=["allocated", "touched"],
                   help="allocated: every allocated byte counts (MALLOC_PERTURB_); touched: only written pages")
    m.add_argument("--json", default=None, help="default benchmarks/results/deq_memory_<metric>.json")
    pl = sub.add_parser("plot")
    pl.add_argument("--inputs", nargs="+", default=[os.path.join(HERE, "results", f"deq_memory_{m}.json")
                                                    for m in ("allocated", "touched")])
    pl.add_argument("--out", default=os.path.join(ROOT, "docs", "img", "deq_memory.png"))
    t = sub.add_parser("time")
    t.add_argument("--k", type=int, default=20)
    t.add_argument("--cells", nargs="+", default=["conv", "pointwise"], choices=["conv", "pointwise"])
    t.add_argument("--conv-sizes", type=lambda s: tuple(map(int, s.split("x"))), nargs="+",
                   default=[(4, 32, 64)], help="BxCxH cases for the conv cell")
    t.add_argument("--pointwise-sizes", type=lambda s: tuple(map(int, s.split("x"))), nargs="+",
                   default=[(8, 98, 64)], help="BxCxH cases for the pointwise cell")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--rounds", type=int, default=5)
    t.add_argument("--reps", type=int, default=1)
    t.add_argument("--json", default=os.path.join(HERE, "results", "deq_time.json"))
    a = p.parse_args(argv)
    if a.cmd == "time":
        a.sizes = {"conv": a.conv_sizes, "pointwise": a.pointwise_sizes}
        return run_time(a)
    if a.cmd == "memory":
        a.json = a.json or os.path.join(HERE, "results", f"deq_memory_{a.metric}.json")
        return run_memory(a)
    return run_plot(a)


if __name__ == "__main__":
    sys.exit(main() or 0)
