"""Data pipeline throughput: synthetic face rendering vs reading the same faces back from disk.

All timings in one process, single thread (``cv2.setNumThreads(1)``, ``torch.set_num_threads(1)``),
the baseline being the pre-cropped WFLW loader reading PNGs that ``export_wflw_cropped`` wrote:
    python benchmarks/bench_data.py [--n 300]
    python benchmarks/bench_data.py --loader [--n 640]   (DataLoader: 2 workers, batch 32, augmented)
pytest-benchmark entry points: pytest benchmarks/bench_data.py --benchmark-only
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import cv2
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ldeq.data import Augmenter, SyntheticFaces, WFLWCropped, export_wflw_cropped, random_face_params, render_face  # noqa: E402


def _per_item_ms(fn, n, repeats=3):
    """Median over ``repeats`` of the mean time per call of ``fn(i)`` for i in range(n)."""
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(n):
            fn(i)
        runs.append((time.perf_counter() - t) / n * 1e3)
    return float(np.median(runs))


def run(n: int = 300) -> dict:
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    params = [random_face_params(np.random.default_rng(i)) for i in range(n)]
    out = {}
    out["render_face (uint8 + landmarks)"] = _per_item_ms(lambda i: render_face(params[i], 256), n)
    ds = SyntheticFaces("test", n, seed=0)
    out["SyntheticFaces[i] (render + tensor)"] = _per_item_ms(lambda i: ds[i], n)
    aug = SyntheticFaces("test", n, seed=0, augment=Augmenter())
    out["SyntheticFaces[i] + Augmenter"] = _per_item_ms(lambda i: aug[i], n)
    with tempfile.TemporaryDirectory() as root:
        export_wflw_cropped(root, n_train=1, n_test=n, seed=0, progress=False)
        disk = WFLWCropped(root, "test")
        out["baseline: WFLWCropped[i] (PNG read + tensor)"] = _per_item_ms(lambda i: disk[i], n)
    return out


def _single_cv2_thread(_worker_id):
    cv2.setNumThreads(1)


def loader_images_per_s(n: int = 640, workers: int = 2, batch: int = 32) -> float:
    """Images per second out of a DataLoader over augmented synthetic faces (one epoch, wall time,
    worker start-up included)."""
    ds = SyntheticFaces("train", n, augment=Augmenter())
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, worker_init_fn=_single_cv2_thread)
    t = time.perf_counter()
    seen = sum(len(b[0]) for b in dl)
    return seen / (time.perf_counter() - t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=None, help="faces per timing run (default 300; 640 with --loader)")
    ap.add_argument("--loader", action="store_true", help="DataLoader throughput instead (2 workers, batch 32)")
    args = ap.parse_args(argv)
    if args.loader:
        print(f"DataLoader, 2 workers, batch 32, augmented synthetic faces: "
              f"{loader_images_per_s(args.n or 640):.1f} images/s")
        return 0
    res = run(args.n or 300)
    base = res["baseline: WFLWCropped[i] (PNG read + tensor)"]
    print(f"{'what':<48} {'ms/sample':>10} {'vs PNG read':>12}")
    for k, v in res.items():
        print(f"{k:<48} {v:>10.2f} {v / base:>11.2f}x")
    return 0


# pytest-benchmark entry points
def test_bench_render_face(benchmark):
    p = random_face_params(np.random.default_rng(0))
    benchmark(render_face, p, 256)


def test_bench_synthetic_item(benchmark):
    ds = SyntheticFaces("test", 64, seed=0)
    it = iter(range(10**9))
    benchmark(lambda: ds[next(it) % 64])


if __name__ == "__main__":
    sys.exit(main())
