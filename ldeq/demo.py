"""``make demo`` / ``ldeq demo``: synthetic faces -> train the ``synthetic-small`` preset on CPU ->
evaluate -> a short report (table, curves, CED, prediction grid), then the RwR video demo.

    python -m ldeq.demo [--out outputs/demo] [--minutes 8] [section.key=value ...]

Everything lands in the output folder, whose path is printed at the start and the end:
``report.md`` (the summary), ``train/`` (metrics, checkpoints, curves.png, model_final.pt),
``eval/`` (metrics.json, ced.png, grid.png), ``data/`` (the generated dataset), ``video/``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

from ._io import atomic_write_json, atomic_write_text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ldeq demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join("outputs", "demo"), help="output folder (default outputs/demo)")
    p.add_argument("--minutes", type=float, default=8.0,
                   help="training time limit in minutes (the preset's steps normally finish first; default 8)")
    p.add_argument("--no-video", action="store_true", help="skip the RwR video demo")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="changes to the synthetic-small preset, e.g. train.steps=50")
    return p


def mean_shape_nme(train_set, test_set):
    """Per-image NME of predicting the mean training shape for every test image: the floor a
    model must beat to have learnt anything from the pixels."""
    import numpy as np
    from ldeq.metrics import nme_per_image
    mean = train_set.landmarks().mean(0)
    gt = test_set.landmarks()
    return nme_per_image(np.broadcast_to(mean, gt.shape), gt)


def _fmt_table(rows) -> str:
    lines = ["| split | images | NME % | FR@10 % | AUC@10 |", "|---|---:|---:|---:|---:|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['n']} | {r['nme']:.2f} | {r['fr']:.2f} | {r['auc']:.4f} |")
    return "\n".join(lines)


def write_report(out: str, cfg, summary: dict, eval_result: dict, baseline: dict, timings: dict,
                 video: Optional[dict]) -> str:
    """report.md in ``out`` (atomic write); returns its path."""
    rows = [(f"{name} (LDEQ, EMA weights)", r) for name, r in eval_result["splits"].items()]
    rows.append(("test (mean-shape baseline)", baseline))
    m = cfg.model
    s = cfg.solver
    text = [
        "# ldeq demo report", "",
        f"Synthetic faces ({cfg.data.num_train} train / {cfg.data.num_test} test, {m.image_size}x{m.image_size}), "
        f"LDEQ with injection width {m.injection_width}, hourglass {m.cell_base_width}+{m.cell_width_increment}k, "
        f"{s.solver} solver (train max_iter {s.max_iter}{' stochastic' if s.stochastic_max_iter else ''}, "
        f"eval {s.eval_max_iter}, tol {s.tol}), {s.grad} gradient, {cfg.train.loss.upper()} loss, "
        f"batch {cfg.train.batch_size}, {cfg.optim.optimizer} lr {cfg.optim.lr}.", "",
        f"Training: {summary['steps']} of {summary['planned_steps']} planned steps in {timings['train_s']:.0f} s"
        + (" (stopped by the time limit)" if summary.get("stopped_by_time_limit") else "")
        + f"; data generation {timings['data_s']:.0f} s; evaluation {timings['eval_s']:.0f} s; "
        f"total to the numbers below {timings['total_s']:.0f} s on {timings['machine']}.", "",
        _fmt_table(rows), "",
        "NME is inter-ocular (points 60/72) x100; FR@10 the % of images above 0.10; AUC@10 the area under the "
        "CED up to 0.10. The mean-shape baseline predicts the average training shape for every image.", "",
        "## Training curves", "", "![curves](train/curves.png)", "",
        "## Cumulative error distribution", "", "![ced](eval/ced.png)", "",
        "## Predictions (green: ground truth, red: prediction)", "", "![grid](eval/grid.png)", "",
    ]
    if video is not None:
        text += ["## RwR on video", "", "See [video/video_table.md](video/video_table.md) and "
                 "video/video_annotated.mp4.", "", "![nmf](video/video_nmf.png)", ""]
    return atomic_write_text(os.path.join(out, "report.md"), "\n".join(text))


def run_demo(out: str, minutes: float = 8.0, overrides: List[str] = (), video: bool = True,
             progress: bool = True) -> dict:
    """The whole demo; returns {'report', 'summary', 'eval', 'baseline', 'timings'}."""
    import platform

    import torch

    from ldeq.train.config import build_config
    from ldeq.train.data import build_datasets
    from ldeq.train.trainer import train

    t0 = time.time()
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    cfg = build_config("synthetic-small", overrides=[f"data.root={os.path.join(out, 'data')}",
                                                     f"train.time_limit_min={minutes}", *overrides])
    print(f"ldeq demo: writing to {out}", flush=True)

    train_set, test_set = build_datasets(cfg)  # generates the synthetic faces on first use
    t_data = time.time() - t0
    summary = train(cfg, os.path.join(out, "train"), progress=progress)
    t_train = time.time() - t0 - t_data

    t1 = time.time()
    from ldeq.evaluate import build_parser, evaluate
    ckpt = os.path.join(out, "train", "model_final.pt")
    eval_args = build_parser().parse_args(
        ["--data", "synthetic", "--root", cfg.data.root, "--checkpoint", ckpt, "--out", os.path.join(out, "eval"),
         "--device", "cpu", "--batch-size", str(cfg.train.eval_batch_size)] + (["--no-progress"] if not progress else []))
    result = evaluate(eval_args)
    from ldeq.metrics import auc, failure_rate
    b = mean_shape_nme(train_set, test_set)
    baseline = {"n": int(b.size), "nme": 100 * float(b.mean()), "fr": 100 * failure_rate(b), "auc": auc(b)}
    t_eval = time.time() - t1
    timings = {"data_s": t_data, "train_s": t_train, "eval_s": t_eval, "total_s": time.time() - t0,
               "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__} ({platform.machine()}), "
                          f"{torch.get_num_threads()} threads"}

    video_res = None
    if video:
        try:
            from ldeq.video.demo import run_video_demo
        except ImportError:
            print("ldeq demo: ldeq.video.demo not available, skipping the video part")
        else:
            video_res = run_video_demo(ckpt, os.path.join(out, "video"), progress=progress)
    report = write_report(out, cfg, summary, result, baseline, timings, video_res)
    res = {"report": report, "summary": summary, "eval": result["splits"], "baseline": baseline,
           "timings": timings}
    atomic_write_json(os.path.join(out, "demo_summary.json"), res, indent=2, default=str)
    test = result["splits"].get("test", {})
    print(f"ldeq demo: test NME {test.get('nme', float('nan')):.2f} % (mean-shape baseline {baseline['nme']:.2f} %) "
          f"after {summary['steps']} steps; training+evaluation {timings['total_s']:.0f} s")
    print(f"ldeq demo: report at {report}")
    return res


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    from ldeq.train.config import ConfigError
    try:
        run_demo(args.out, args.minutes, args.overrides, video=not args.no_video, progress=not args.no_progress)
    except ConfigError as e:
        print(f"ldeq demo: config error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
