"""LDEQ inference throughput and peak memory on CPU (GPU too when one is present).

For each batch size, one process runs the same model and inputs with the measured solver and
with the baseline (the official plain fixed-point iteration ``fixed_point_last`` at the same budget), alternating
in rounds; it reports images/s, the solver iterations actually used, and the peak resident memory
of the forward pass (Linux VmHWM reset via /proc/self/clear_refs just before it; on CUDA,
torch.cuda.max_memory_allocated). Random weights (no trained checkpoint is assumed), so the solver
usually runs its whole budget: the iterations column says so.

    python benchmarks/bench_model.py --batch 1 32 --solver anderson --max-iter 5 --rounds 2
    python benchmarks/bench_model.py --preset small --batch 1 8      # quick look
pytest-benchmark entry point (tiny widths): pytest benchmarks/bench_model.py --benchmark-only
Results are printed as a markdown table and written to benchmarks/results/model_<device>.json.
ldeq against the official-style plain PyTorch model (same weights, interleaved), training steps, the
conv floor and the profile: benchmarks/bench_e2e.py.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch
from _memory import reset_peak_rss, status_kb

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ldeq._io import atomic_write_json  # noqa: E402
from ldeq.model import LDEQ, LDEQConfig  # noqa: E402

PRESETS = {
    "debug": dict(),  # the authors' debug config: widths 224/224/24, 16.5 M parameters
    "small": dict(injection_width=64, cell_base_width=64, cell_width_increment=16),
    "tiny": dict(injection_width=8, cell_base_width=4, cell_width_increment=2, heatmap_size=16, image_size=64),
}


def _reset_peak(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    try:
        reset_peak_rss()  # the peak read afterwards belongs to this call
    except OSError:
        pass
    return status_kb("VmRSS") * 1024


def _peak(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return status_kb("VmHWM") * 1024


@torch.no_grad()
def measure(model, x, solver, max_iter, device):
    """One timed forward: (wall s, mean solver iterations, peak bytes, bytes before, process CPU s)."""
    before = _reset_peak(device)
    c = time.process_time()  # CPU time of all our threads: less disturbed by other processes
    t = time.perf_counter()
    out = model(x, solver=solver, max_iter=max_iter)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    return dt, float(out.stats.nstep.float().mean()), _peak(device), before, time.process_time() - c


def run(preset="debug", batches=(1, 32), solver="anderson", baseline="fixed_point_last", max_iter=5, tol=5e-3,
        rounds=2, device="cpu", threads=2):
    torch.set_num_threads(threads)
    device = torch.device(device)
    torch.manual_seed(0)
    cfg = LDEQConfig(**PRESETS[preset], max_iter=max_iter, tol=tol)
    model = LDEQ(cfg).eval().to(device)
    n = cfg.image_size
    rows = []
    for B in batches:
        x = torch.randn(B, 3, n, n, device=device)
        measure(model, x[:1], solver, 1, device)  # warm-up (oneDNN / cuDNN primitive creation)
        res = {solver: [], baseline: []}
        for _ in range(rounds):
            for s in (solver, baseline):
                res[s].append(measure(model, x, s, max_iter, device))
        row = {"batch": B}
        for s, runs in res.items():
            best = min(runs, key=lambda r: r[0])
            row[s] = {"images_per_s": B / best[0], "seconds": best[0], "iterations": best[1],
                      "cell_calls": best[1] + 1, "peak_bytes": max(r[2] for r in runs),
                      "peak_minus_before_bytes": max(r[2] - r[3] for r in runs), "all_seconds": [r[0] for r in runs],
                      "cpu_seconds": min(r[4] for r in runs)}
        row["time_ratio_vs_baseline"] = row[solver]["seconds"] / row[baseline]["seconds"]
        rows.append(row)
        print(f"batch {B}: {row}", flush=True)
    return {"preset": preset, "config": cfg.to_dict(), "solver": solver, "baseline": baseline,
            "rounds": rounds, "threads": threads, "device": str(device),
            "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}",
            "loadavg_after": os.getloadavg(), "rows": rows,
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6}


def to_markdown(res) -> str:
    s, b = res["solver"], res["baseline"]
    lines = [f"| batch | solver | iterations used (+1 final step) | images/s (wall) | s / batch (wall) | CPU s / batch | peak RSS (GiB) | forward's extra RSS (MiB) | wall time vs {b} |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        for name in (s, b):
            m = r[name]
            ratio = f"{r['time_ratio_vs_baseline']:.2f}x" if name == s else "1.00x"
            lines.append(f"| {r['batch']} | {name} | {m['iterations']:.1f} | {m['images_per_s']:.3f} | "
                         f"{m['seconds']:.2f} | {m['cpu_seconds']:.2f} | {m['peak_bytes'] / 2**30:.2f} | "
                         f"{m['peak_minus_before_bytes'] / 2**20:.0f} | {ratio} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="debug")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    p.add_argument("--solver", default="anderson")
    p.add_argument("--baseline", default="fixed_point_last")
    p.add_argument("--max-iter", type=int, default=5)
    p.add_argument("--tol", type=float, default=5e-3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/model_<device>.json)")
    a = p.parse_args(argv)
    res = run(a.preset, a.batch, a.solver, a.baseline, a.max_iter, a.tol, a.rounds, a.device, a.threads)
    md = to_markdown(res)
    print(md)
    out = a.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                f"model_{torch.device(a.device).type}.json")
    atomic_write_json(out, {**res, "markdown": md,
                            "command": "python benchmarks/bench_model.py " + " ".join(argv or sys.argv[1:])}, indent=2)
    return 0


# --- pytest-benchmark entry point (tiny widths, seconds) -----------------------------------------
def test_bench_ldeq_tiny_inference(benchmark):
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = LDEQ(LDEQConfig(**PRESETS["tiny"], max_iter=5, solver="anderson")).eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        out = benchmark(lambda: model(x))
    assert out.keypoints.shape == (4, 98, 2)


if __name__ == "__main__":
    sys.exit(main())
