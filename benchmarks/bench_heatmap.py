"""Fused heatmap soft-argmax + decode, forward and backward, against the eager reference.

    .venv/bin/python benchmarks/bench_heatmap.py [--device cpu|cuda] [--batch 32] [--json out.json]
    pytest benchmarks/bench_heatmap.py --benchmark-only        (B=8 version, for `make bench`)

Both paths compute heatmaps = exp(beta (l - max)), coords and std, then backpropagate a loss on
coords and std into logits and a per-landmark beta. Same inputs, same process. Three paths: the
eager reference, the two fused ops one after the other (heatmap_softargmax then heatmap_decode),
the single fused op heatmap_softargmax_decode, and heatmap_softargmax_coords (coordinates only:
heatmaps never stored, recomputed in the backward). The floor is the memory traffic the single op
cannot avoid (5 passes over the (B, K, H, W) tensor: forward reads logits and writes heatmaps,
backward reads logits and heatmaps and writes grad_logits) at the bandwidth of a measured tensor
copy, plus the exponentials at the rate torch.exp achieves beyond that copy; the coords op's floor
is 3 passes (forward reads logits; backward reads logits and writes grad_logits) plus the
exponentials twice.
"""
import argparse
import json
import sys

import torch
import torch.utils.benchmark as tb

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


def measure(stmt, globals_, min_run_time):
    # torch.utils.benchmark.Timer runs on ONE thread unless told otherwise: pass the process's count
    timer = tb.Timer(stmt, globals=globals_, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--keypoints", type=int, default=98)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--min-run-time", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--json", default=None, help="write the results here too")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    shape = (a.batch, a.keypoints, a.size, a.size)
    logits = (torch.randn(shape, device=dev) * 3).requires_grad_()
    beta = (torch.rand(a.keypoints, device=dev) + 0.5).requires_grad_()
    gc = torch.randn(a.batch, a.keypoints, 2, device=dev)
    gs = torch.randn(a.batch, a.keypoints, device=dev)
    g = dict(step=step, logits=logits, beta=beta, gc=gc, gs=gs, fused=heatmap_softargmax_decode, eager=eager,
             separate=separate, coords_only=coords_only)
    t_coords = measure("step(coords_only, logits, beta, gc, gs)", g, a.min_run_time)
    t_fused = measure("step(fused, logits, beta, gc, gs)", g, a.min_run_time)
    t_sep = measure("step(separate, logits, beta, gc, gs)", g, a.min_run_time)
    t_eager = measure("step(eager, logits, beta, gc, gs)", g, a.min_run_time)

    src = torch.randn(shape, device=dev)
    dst = torch.empty_like(src)
    t_copy = measure("dst.copy_(src)", dict(dst=dst, src=src), a.min_run_time)
    t_exp = measure("torch.exp(src, out=dst)", dict(dst=dst, src=src, torch=torch), a.min_run_time)
    nbytes = src.numel() * src.element_size()
    bandwidth = 2 * nbytes / t_copy  # a copy reads and writes the tensor once each
    exp_extra = max(t_exp - t_copy, 0.0)
    floor = 5 * nbytes / bandwidth + exp_extra
    floor_coords = 3 * nbytes / bandwidth + 2 * exp_extra  # exps done twice (forward, recomputed in backward)
    res = dict(device=str(dev), shape=list(shape), threads=torch.get_num_threads(), fused_ms=t_fused * 1e3,
               separate_ms=t_sep * 1e3, separate_speedup=t_eager / t_sep, eager_ms=t_eager * 1e3,
               coords_ms=t_coords * 1e3, coords_speedup=t_eager / t_coords, floor_coords_ms=floor_coords * 1e3,
               coords_over_floor=t_coords / floor_coords, speedup=t_eager / t_fused, copy_ms=t_copy * 1e3, exp_ms=t_exp * 1e3,
               bandwidth_GBps=bandwidth / 1e9, floor_ms=floor * 1e3, fused_over_floor=t_fused / floor)
    print("| device | shape | threads | eager ms | two ops ms (x) | fused op ms (x) | floor ms | fused/floor "
          "| coords op ms (x) | floor ms | coords/floor |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {dev} | {tuple(shape)} | {res['threads']} | {res['eager_ms']:.1f} | {res['separate_ms']:.1f} "
          f"({res['separate_speedup']:.1f}x) | {res['fused_ms']:.1f} ({res['speedup']:.1f}x) | {res['floor_ms']:.1f} | "
          f"{res['fused_over_floor']:.2f} | {res['coords_ms']:.1f} ({res['coords_speedup']:.1f}x) | "
          f"{res['floor_coords_ms']:.1f} | {res['coords_over_floor']:.2f} |")
    print(f"copy of {nbytes / 1e6:.1f} MB: {res['copy_ms']:.2f} ms ({res['bandwidth_GBps']:.1f} GB/s read+write); "
          f"torch.exp over it: {res['exp_ms']:.2f} ms")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
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
