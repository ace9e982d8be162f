"""RwR throughput: frames/s of warm-started RwR (1 iteration + final step) vs the full per-frame
solve from zeros, for one video at a time and for many videos batched frame-synchronously.

    python benchmarks/bench_video.py [--checkpoint PATH] [--videos 8] [--frames 24] [--device cpu]
    python benchmarks/bench_video.py quality CHECKPOINT [--videos 6] [--frames 90] [--gammas 0.5,1,2]
    pytest benchmarks/bench_video.py --benchmark-only     (small version, for `make bench`)

Without --checkpoint a randomly initialised LDEQ with the 'synthetic-small' widths (32/32/8,
256x256 input) is used: throughput does not depend on the weights, except through the number of
iterations a tolerance-based full solve takes, so the full solve is given a fixed budget
(tol = 0, --full-iters iterations). Frames are synthetic and held in memory; the time covers crop,
solve and mapping back. Each configuration is timed --repeats times; the medians of frames per
CPU-second (process time: robust on a shared machine, use --threads 1) and per wall-second are
reported, with the ratio to the per-frame full solve at batch 1 measured in the same process.
"""
import argparse
import statistics
import time

import torch

from ldeq.video.rwr import RwRConfig, RwRRunner
from ldeq.video.synthetic import make_synthetic_videos


def small_model(device="cpu"):
    from ldeq.model import LDEQ, LDEQConfig
    torch.manual_seed(0)
    return LDEQ(LDEQConfig(injection_width=32, cell_base_width=32, cell_width_increment=8)).to(device).eval()


def _solve(model, device):
    from ldeq.video.model_solve import LDEQSolve
    return LDEQSolve(model, tol=0.0)  # tol 0: the full solve always spends its budget


def measure(model, videos, mode: str, batch: int, full_iters: int, device="cpu", repeats: int = 3):
    """(median frames per wall-second, median frames per CPU-second of this process) of RwRRunner
    over ``videos`` (list of SyntheticVideo). CPU time is what a shared machine cannot distort
    (other jobs only stretch the wall time); with 1 thread it is the work itself."""
    solve = _solve(model, device)
    cfg = RwRConfig(mode=mode, max_iter_full=full_iters, max_iter_warm=1, batch_size=batch,
                    crop_size=model.cfg.image_size)
    n = sum(len(v) for v in videos)
    fps, cpu_fps = [], []
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        RwRRunner(solve, cfg, device).run([v.frames for v in videos], [v.boxes for v in videos], progress=False)
        if device != "cpu":
            torch.cuda.synchronize()
        fps.append(n / (time.perf_counter() - t0))
        cpu_fps.append(n / (time.process_time() - c0))
    return statistics.median(fps), statistics.median(cpu_fps)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--full-iters", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.checkpoint:
        from ldeq.video.model_solve import load_ldeq_for_video
        model = load_ldeq_for_video(a.checkpoint, a.device)
    else:
        model = small_model(a.device)
    videos = make_synthetic_videos(a.videos, seed=0, lengths=[a.frames - (i % 3) * 4 for i in range(a.videos)])
    one = videos[:1]
    measure(model, one[:1], "warm", 1, 1, a.device, repeats=1)  # warm-up (allocator, first-call costs)
    rows = [("off (full solve)", 1, measure(model, one, "off", 1, a.full_iters, a.device, a.repeats)),
            ("warm (1 iter)", 1, measure(model, one, "warm", 1, a.full_iters, a.device, a.repeats)),
            ("off (full solve)", a.videos, measure(model, videos, "off", a.videos, a.full_iters, a.device, a.repeats)),
            ("warm (1 iter)", a.videos, measure(model, videos, "warm", a.videos, a.full_iters, a.device, a.repeats)),
            ("prox (1 iter)", a.videos, measure(model, videos, "prox", a.videos, a.full_iters, a.device, a.repeats))]
    base_wall, base_cpu = rows[0][2]
    print(f"model: {'checkpoint ' + a.checkpoint if a.checkpoint else 'random LDEQ 32/32/8, 256x256'}; "
          f"device {a.device}, {torch.get_num_threads()} threads; full solve = {a.full_iters} iterations + final step")
    print("| mode | videos per batch | frames / CPU-s | vs off, batch 1 (CPU) | frames / wall-s | vs off, batch 1 (wall) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, b, (fps, cpu) in rows:
        print(f"| {name} | {b} | {cpu:.2f} | {cpu / base_cpu:.2f}x | {fps:.2f} | {fps / base_wall:.2f}x |")
    return 0


def quality(argv=None) -> int:
    """NME / NMF of off, warm, prox (several gamma) and the filters on synthetic clips (markdown)."""
    from ldeq.video.evaluate import DEFAULT_FILTERS, compare, format_table
    from ldeq.video.model_solve import LDEQSolve, load_ldeq_for_video

    p = argparse.ArgumentParser(prog="bench_video.py quality")
    p.add_argument("checkpoint")
    p.add_argument("--videos", type=int, default=6)
    p.add_argument("--frames", type=int, default=90)
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--gammas", default="0.5,1,2")
    p.add_argument("--max-iter-warm", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model = load_ldeq_for_video(a.checkpoint)
    solve = LDEQSolve(model)
    lengths = [max(10, a.frames - 8 * i) for i in range(a.videos)]
    videos = make_synthetic_videos(a.videos, a.seed, lengths=lengths)
    args = ([v.frames for v in videos], [v.boxes for v in videos], [v.landmarks for v in videos])
    base = RwRConfig(max_iter_full=model.cfg.max_iter, max_iter_warm=a.max_iter_warm, max_iter_prox=a.max_iter_warm,
                     batch_size=a.videos, crop_size=model.cfg.image_size)
    rows = compare(solve, *args, ("off", "warm"), DEFAULT_FILTERS, base, progress=False)
    for g in [float(v) for v in a.gammas.split(",") if v]:
        cfg = RwRConfig(**{**base.__dict__, "gamma": g})
        r = compare(solve, *args, ("prox",), {}, cfg, progress=False)[0]
        r["method"] = f"prox gamma={g:g}"
        rows.insert(len(rows) - len(DEFAULT_FILTERS), r)
    print(f"checkpoint {a.checkpoint} ({model.cfg.image_size}px, {model.cfg.solver} max {model.cfg.max_iter} it); "
          f"{a.videos} clips of {lengths[-1]}-{lengths[0]} frames, seed {a.seed}; warm/prox {a.max_iter_warm} it + final step")
    print(format_table(rows))
    return 0


# --------------------------------------------------------------------------- pytest-benchmark
def _bench_setup():
    torch.set_num_threads(2)
    return small_model(), make_synthetic_videos(2, seed=0, lengths=[6, 4], size=(128, 160))


def test_bench_video_off(benchmark):
    model, videos = _bench_setup()
    benchmark.pedantic(measure, args=(model, videos, "off", 2, 4), kwargs={"repeats": 1}, rounds=2)


def test_bench_video_warm(benchmark):
    model, videos = _bench_setup()
    benchmark.pedantic(measure, args=(model, videos, "warm", 2, 4), kwargs={"repeats": 1}, rounds=2)


if __name__ == "__main__":
    import sys
    if len(sys.argv) > 1 and sys.argv[1] == "quality":
        raise SystemExit(quality(sys.argv[2:]))
    raise SystemExit(main())
