"""The video part of ``make demo``: synthetic clips -> every RwR mode (off / warm / prox / adaptive) and every filter baseline ->
a markdown NME/NMF table, an NMF bar chart and an annotated side-by-side video.

    from ldeq.video.demo import run_video_demo
    run_video_demo("outputs/demo/checkpoint.pt", "outputs/demo/video")

or ``python -m ldeq.video.demo CHECKPOINT OUT_DIR``.
"""
import argparse
import os
import sys
from typing import Optional

import numpy as np

from .._io import atomic_savefig, atomic_write_text
from .evaluate import DEFAULT_FILTERS, compare, format_table, write_json
from .io import AtomicVideoWriter, draw_landmarks
from .rwr import MODES as RWR_MODES, RwRConfig
from .synthetic import EVENTS, make_synthetic_videos


def _bar_chart(path: str, rows, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["method"] for r in rows]
    nmf = [r["nmf"] for r in rows]
    colours = ["#888888" if n == "off" else "#2a7fd4" if n in RWR_MODES else "#e0a030" for n in names]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    bars = ax.bar(range(len(rows)), nmf, color=colours)
    for b, r in zip(bars, rows):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"NME {r['nme']:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(names, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("NMF (lower = less flicker)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)


def _annotated_video(path: str, video, preds: dict, methods, fps: float) -> None:
    """Side by side, one panel per method: predictions (green), ground truth (red), the box."""
    H, W = video.frames.shape[1:3]
    with AtomicVideoWriter(path, fps, (W * len(methods), H)) as w:
        for t in range(len(video)):
            ev = [k for k, a, b in video.events if a <= t < b]
            panels = [draw_landmarks(video.frames[t], preds[m][t], video.boxes[t], gt=video.landmarks[t],
                                     text=f"{m} {t}" + (f" [{ev[0]}]" if ev else "")) for m in methods]
            w.write(np.concatenate(panels, axis=1))


def run_video_demo(checkpoint: str, out_dir: str, n_videos: int = 4, n_frames: int = 60, seed: int = 100,
                   device: str = "cpu", gamma: float = 1.0, max_iter_full: Optional[int] = None,
                   max_iter_warm: int = 1, batch_size: int = 8, filters: Optional[dict] = None,
                   progress: bool = True) -> dict:
    """Renders ``n_videos`` synthetic clips (lengths n_frames, n_frames - 8, ...; every ambiguous
    stretch in each), runs modes off / warm / prox / adaptive and the filter baselines, and writes into ``out_dir``:
    ``video_table.md``, ``video_results.json``, ``video_nmf.png`` and ``video_annotated.mp4``.
    Returns {'rows': [...], 'files': [...]}."""
    from .model_solve import LDEQSolve, load_ldeq_for_video

    model = load_ldeq_for_video(checkpoint, device)
    solve = LDEQSolve(model)
    os.makedirs(out_dir, exist_ok=True)
    lengths = [max(10, n_frames - 8 * i) for i in range(n_videos)]
    videos = make_synthetic_videos(n_videos, seed, lengths=lengths, events=EVENTS)
    cfg = RwRConfig(mode="warm", max_iter_full=max_iter_full or model.cfg.max_iter, max_iter_warm=max_iter_warm,
                    max_iter_prox=max_iter_warm, gamma=gamma, batch_size=batch_size, crop_size=model.cfg.image_size)
    preds: dict = {}
    rows = compare(solve, [v.frames for v in videos], [v.boxes for v in videos], [v.landmarks for v in videos],
                   RWR_MODES, DEFAULT_FILTERS if filters is None else filters, cfg,
                   progress=progress, device=device, predictions=preds)
    settings = (f"{n_videos} synthetic clips of {lengths[-1]}-{lengths[0]} frames (seed {seed}; occluder, motion blur "
                f"and flicker stretches), checkpoint `{checkpoint}`, full solve: {model.cfg.solver} "
                f"max {cfg.max_iter_full} iterations; warm/prox: {max_iter_warm} iteration(s) + final step, "
                f"prox gamma {gamma}; filters on the 'off' predictions: "
                + ", ".join(f"{k} {v}" for k, v in (DEFAULT_FILTERS if filters is None else filters).items()))
    files = [os.path.join(out_dir, n) for n in ("video_table.md", "video_results.json", "video_nmf.png",
                                                 "video_annotated.mp4")]
    atomic_write_text(files[0], f"# RwR on synthetic video\n\n{settings}\n\n{format_table(rows)}\n")
    write_json(files[1], {"settings": settings, "rows": rows})
    _bar_chart(files[2], rows, f"NMF on {n_videos} synthetic clips")
    _annotated_video(files[3], videos[0], {m: preds[m][0] for m in RWR_MODES}, list(RWR_MODES),
                     videos[0].fps)
    if progress:
        print(format_table(rows))
        print("wrote " + ", ".join(files))
    return {"rows": rows, "files": files}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ldeq.video.demo", description=run_video_demo.__doc__)
    p.add_argument("checkpoint")
    p.add_argument("out_dir")
    p.add_argument("--n-videos", type=int, default=4)
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--gamma", type=float, default=1.0)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    try:
        run_video_demo(a.checkpoint, a.out_dir, a.n_videos, a.frames, gamma=a.gamma, device=a.device)
    except (FileNotFoundError, ValueError) as e:
        print(f"video demo: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
