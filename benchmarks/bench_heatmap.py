"""Fused heatmap soft-argmax + decode, forward and backward, against the eager reference:
mean, median and p95 over >= 20 timed runs of each path, interleaved.

    .venv/bin/python benchmarks/bench_heatmap.py [--device cpu|cuda] [--batch 32] [--runs 30] [--json out.json]
    pytest benchmarks/bench_heatmap.py --benchmark-only        (B=8 version, for `make bench`)

Every path computes heatmaps = exp(beta (l - max)), coords and std, then backpropagates a loss on
coords and std into logits and a per-landmark beta. Same inputs, same process. Paths: the eager
reference; the two ops one after the other (heatmap_softargmax then heatmap_decode); the single
fused op heatmap_softargmax_decode; heatmap_softargmax_coords (coordinates only: heatmaps never
stored, recomputed in the backward). On CPU the kernel paths run twice, with the transparent-huge-
page hint on large outputs (csrc/common/cpu_alloc.h) on and off, toggled in this process
(`--huge-pages on|off` keeps one). Runs are interleaved round-robin over the paths, so load drift
hits all alike; every run is one full step with fresh outputs (page faults included, as in use).

The floor is the memory traffic the fused op cannot avoid (5 passes over the (B, K, H, W) tensor:
forward reads logits and writes heatmaps, backward reads logits and heatmaps and writes
grad_logits) at the bandwidth of a measured tensor copy, plus the exponentials at the rate
torch.exp achieves beyond that copy; the coords op's floor is 3 passes plus the exponentials twice.
"""
import argparse
import os
import platform
import sys
import time

import numpy as np
import torch

from ldeq import _ext
from ldeq._io import atomic_write_json
from ldeq.ops import _reference as ref
from ldeq.ops import heatmap_decode, heatmap_softargmax, heatmap_softargmax_coords, heatmap_softargmax_decode


def coords_only(logits, beta):
    """Coordinates and std without materialising heatmaps (backward recomputes them)."""
    return (None,) + heatmap_softargmax_coords(logits, beta)


def separate(logits, beta):
    """The two fused ops one after the other (what the LDEQ cell + decoder call)."""
    h = heatmap_softargmax(logits, beta)
    return (h,) + heatmap_decode(h)


def step(forward, logits, beta, gc, gs):
    logits.grad = beta.grad = None  # no accumulation pass: both paths write fresh gradients
    _, c, s = forward(logits, beta)
    ((c * gc).sum() + (s * gs).sum()).backward()


def eager(logits, beta):
    """The eager reference, as the LDEQ decoder runs it: softargmax, then decode."""
    h = ref.heatmap_softargmax(logits, beta)
    return (h,) + ref.heatmap_decode(h)


def stats(times_s):
    """mean, median, p95, max in ms of a list of seconds."""
    t = np.asarray(times_s) * 1e3
    return dict(mean_ms=float(t.mean()), median_ms=float(np.median(t)), p95_ms=float(np.percentile(t, 95)),
                max_ms=float(t.max()), runs=len(t))


def time_interleaved(cases, runs, warmup, sync):
    """cases: {name: (fn, set_up)}; set_up() runs untimed before each of name's runs. Round-robin."""
    times = {name: [] for name in cases}
    for i in range(warmup + runs):
        for name, (fn, set_up) in cases.items():
            set_up()
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    thp = "n/a"
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            thp = f.read().split("[")[1].split("]")[0]
        with open("/sys/kernel/mm/transparent_hugepage/defrag") as f:
            thp += ", defrag " + f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        pass
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else []
    return dict(cpu=cpu, cpus=os.cpu_count(), thp=thp, loadavg=" ".join(load))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--keypoints", type=int, default=98)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--runs", type=int, default=30, help="timed runs per path (at least 20)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--huge-pages", choices=["both", "on", "off"], default="both",
                   help="CPU: run the kernel paths with the huge-page hint on, off, or both (interleaved)")
    p.add_argument("--json", default=None, help="write the results here too")
    a = p.parse_args(argv)
    if a.runs < 20:
        p.error(f"--runs must be at least 20 (mean, median and p95 need them), got {a.runs}")
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(0)
    shape = (a.batch, a.keypoints, a.size, a.size)
    logits = (torch.randn(shape, device=dev) * 3).requires_grad_()
    beta = (torch.rand(a.keypoints, device=dev) + 0.5).requires_grad_()
    gc = torch.randn(a.batch, a.keypoints, 2, device=dev)
    gs = torch.randn(a.batch, a.keypoints, device=dev)
    paths = {"eager": eager, "two ops": separate, "fused op": heatmap_softargmax_decode, "coords op": coords_only}
    hint_modes = ["on", "off"] if a.huge_pages == "both" else [a.huge_pages]
    if cuda or not _ext.extension_loaded():
        hint_modes = [None]
    initial_hint = _ext.huge_pages() if _ext.extension_loaded() else None
    noop = lambda: None  # noqa: E731
    cases = {}
    for name, fwd in paths.items():
        for mode in ([None] if name == "eager" else hint_modes):
            label = name if mode is None else f"{name} [hint {mode}]"
            set_up = noop if mode is None else (lambda on=(mode == "on"): _ext.set_huge_pages(on))
            cases[label] = ((lambda fwd=fwd: step(fwd, logits, beta, gc, gs)), set_up)
    before = machine()
    times = time_interleaved(cases, a.runs, a.warmup, sync)
    if initial_hint is not None:
        _ext.set_huge_pages(initial_hint)

    src = torch.randn(shape, device=dev)
    dst = torch.empty_like(src)
    floor_t = time_interleaved({"copy": (lambda: dst.copy_(src), noop),
                                "exp": (lambda: torch.exp(src, out=dst), noop)}, a.runs, a.warmup, sync)
    t_copy, t_exp = float(np.median(floor_t["copy"])), float(np.median(floor_t["exp"]))
    nbytes = src.numel() * src.element_size()
    bandwidth = 2 * nbytes / t_copy  # a copy reads and writes the tensor once each
    exp_extra = max(t_exp - t_copy, 0.0)
    floors = {"fused op": 5 * nbytes / bandwidth + exp_extra, "coords op": 3 * nbytes / bandwidth + 2 * exp_extra}
    after = machine()

    rows = {label: stats(t) for label, t in times.items()}
    eager_mean = rows["eager"]["mean_ms"]
    for label, r in rows.items():
        r["speedup_mean"] = eager_mean / r["mean_ms"]
        r["p95_over_median"] = r["p95_ms"] / r["median_ms"]
        base = label.split(" [")[0]
        if base in floors:
            r["mean_over_floor"] = r["mean_ms"] / (floors[base] * 1e3)
    res = dict(device=str(dev), shape=list(shape), threads=torch.get_num_threads(),
               cpu_capability=_ext.cpu_capability(), machine=before, loadavg_after=after["loadavg"], rows=rows,
               copy_ms=t_copy * 1e3, exp_ms=t_exp * 1e3, bandwidth_GBps=bandwidth / 1e9,
               floor_ms={k: v * 1e3 for k, v in floors.items()}, runs=a.runs)
    print(f"device {dev}, shape {tuple(shape)}, {res['threads']} threads, CPU capability {res['cpu_capability']}, "
          f"{a.runs} runs per path (interleaved, {a.warmup} warm-up)")
    print(f"machine: {before['cpu']} ({before['cpus']} CPUs), THP {before['thp']}; "
          f"loadavg before {before['loadavg']}, after {after['loadavg']}")
    print("| path | mean ms | median ms | p95 ms | p95/median | max ms | speedup (means) | mean/floor |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, r in rows.items():
        fl = f"{r['mean_over_floor']:.2f}" if "mean_over_floor" in r else ""
        print(f"| {label} | {r['mean_ms']:.1f} | {r['median_ms']:.1f} | {r['p95_ms']:.1f} | "
              f"{r['p95_over_median']:.2f} | {r['max_ms']:.1f} | {r['speedup_mean']:.1f}x | {fl} |")
    print(f"floor: fused {floors['fused op'] * 1e3:.1f} ms, coords {floors['coords op'] * 1e3:.1f} ms (copy of "
          f"{nbytes / 1e6:.1f} MB: {t_copy * 1e3:.2f} ms = {bandwidth / 1e9:.1f} GB/s read+write; torch.exp "
          f"{t_exp * 1e3:.2f} ms)")
    if a.json:
        atomic_write_json(a.json, res, indent=1)
    return 0


# pytest-benchmark entry points (`make bench`): a smaller problem, fused and eager side by side.
def _bench_inputs(batch=8):
    torch.manual_seed(0)
    logits = (torch.randn(batch, 98, 64, 64) * 3).requires_grad_()
    beta = (torch.rand(98) + 0.5).requires_grad_()
    return logits, beta, torch.randn(batch, 98, 2), torch.randn(batch, 98)


def test_heatmap_fused(benchmark):
    benchmark(step, heatmap_softargmax_decode, *_bench_inputs())


def test_heatmap_coords_only(benchmark):
    benchmark(step, coords_only, *_bench_inputs())


def test_heatmap_two_ops(benchmark):
    benchmark(step, separate, *_bench_inputs())


def test_heatmap_eager(benchmark):
    benchmark(step, eager, *_bench_inputs())


if __name__ == "__main__":
    sys.exit(main())
