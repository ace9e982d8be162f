"""Training-step memory of the real LDEQ vs the solver budget: implicit (IFT) and JFB training keep
one tracked cell application whatever max_iter is; the explicit (unrolled, weight-tied) baseline
keeps all of them. Extends benchmarks/bench_deq.py's method from its toy cell to the LDEQ cell,
driven through the trainer's own training forward (ldeq.train.task.TrainStep).

Each point runs in a fresh process: one forward+backward of the training step, peak RSS from
/proc/self/status VmHWM (reset with /proc/self/clear_refs just before the step), glibc's mmap
threshold pinned so freed large blocks return to the OS, MALLOC_PERTURB_ so every allocated byte
counts in RSS. The explicit baseline at depth k is the ratio's reference.

    python benchmarks/bench_train_memory.py [--ks 2 4 8 16] [--modes ift jfb explicit] [--B 4]
    pytest benchmarks/bench_train_memory.py --benchmark-only     # small time entry point
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

WIDTHS = dict(injection_width=32, cell_base_width=32, cell_width_increment=8)  # synthetic-small widths


def make_step(mode: str, k: int, image_size: int = 128, B: int = 4, seed: int = 0):
    """(TrainStep, images, max_iter) for one training step of an LDEQ at the small widths.
    mode 'ift'/'jfb': DEQ with k solver iterations (tol ~0: all k run) and, for ift, a k-iteration
    backward solve; 'explicit': k unrolled tracked cell applications."""
    from ldeq.model import LDEQ, LDEQConfig
    from ldeq.train.config import build_config
    from ldeq.train.task import TrainStep
    torch.manual_seed(seed)
    explicit = mode == "explicit"
    lcfg = LDEQConfig(**WIDTHS, image_size=image_size, heatmap_size=image_size // 4, solver="anderson",
                      tol=1e-12, model_mode="explicit" if explicit else "implicit", explicit_depth=k)
    model = LDEQ(lcfg).train()
    cfg = build_config("synthetic-small", overrides=[
        f"solver.grad={'jfb' if explicit else mode}", f"solver.b_max_iter={k}", "solver.b_tol=1e-12",
        "solver.tol=1e-12"])
    images = torch.randn(B, 3, image_size, image_size)
    return TrainStep(model, cfg), images, k


def _child(mode, k, B, image_size, threads):
    torch.set_num_threads(threads)
    step, images, max_iter = make_step(mode, k, image_size, B)
    before = status_kb("VmRSS")
    reset_peak_rss()  # the peak below belongs to this step
    t0 = time.perf_counter()
    out = step(images, max_iter)
    out.keypoints.sum().backward()
    dt = time.perf_counter() - t0
    peak = status_kb("VmHWM")
    print(json.dumps(dict(mode=mode, k=k, step_peak_mb=(peak - before) / 1024, peak_mb=peak / 1024,
                          seconds=dt, nstep=out.nstep)))


def run(args):
    from tqdm import tqdm

    from ldeq._io import atomic_write_json
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072",
               MALLOC_PERTURB_="1", OMP_NUM_THREADS=str(args.threads), PYTHONPATH=ROOT)
    rows = []
    for mode, k in tqdm([(m, k) for m in args.modes for k in args.ks], desc="memory points"):
        vals = []
        for _ in range(args.repeats):
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "_child", mode, str(k), str(args.B),
                                  str(args.image_size), str(args.threads)],
                                 env=env, cwd=ROOT, capture_output=True, text=True, check=True)
            vals.append(json.loads(out.stdout.strip().splitlines()[-1]))
        rows.append(min(vals, key=lambda v: v["step_peak_mb"]))  # least disturbed by other processes
    S = args.image_size // 4
    state_mb = args.B * 98 * S * S * 4 / 2 ** 20
    result = dict(config=dict(B=args.B, image_size=args.image_size, widths=WIDTHS, threads=args.threads,
                              repeats=args.repeats, state_mb=state_mb), rows=rows)
    atomic_write_json(args.json, result, indent=1)
    ref = {r["k"]: r["step_peak_mb"] for r in rows if r["mode"] == "explicit"}
    print(f"LDEQ {WIDTHS}, batch {args.B}, {args.image_size}px (z: {state_mb:.1f} MB)")
    print("| mode | max_iter / depth | step peak MB | vs explicit same k | step s |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['step_peak_mb'] / ref[r['k']]:.2f}x" if r["k"] in ref else "-"
        print(f"| {r['mode']} | {r['k']} | {r['step_peak_mb']:.0f} | {ratio} | {r['seconds']:.2f} |")


# pytest-benchmark entry point: one small IFT training step (time only; memory needs fresh processes)
def test_bench_ldeq_train_step_ift(benchmark):
    torch.set_num_threads(2)
    step, images, k = make_step("ift", 4, image_size=64, B=2)

    def go():
        step.zero_grad(set_to_none=True)
        step(images, k).keypoints.sum().backward()
    benchmark.pedantic(go, rounds=3, iterations=1, warmup_rounds=1)


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "_child":
        _child(argv[1], int(argv[2]), int(argv[3]), int(argv[4]), int(argv[5]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", nargs="+", default=["ift", "jfb", "explicit"])
    p.add_argument("--ks", nargs="+", type=int, default=[2, 4, 8, 16])
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json", default=os.path.join(HERE, "results", "train_memory.json"))
    run(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
