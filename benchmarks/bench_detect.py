"""Face detector recall on synthetic frames: ``haar`` against ``haar-ensemble`` (ldeq.predict.detect).

Frames (320 x 240, a textured background) each hold one synthetic face (ldeq.data.synthetic,
rendered at 256 px, cropped to its head and resized), in four conditions:

  frontal   face 90-130 px, upright
  small     face 28-56 px, upright
  rotated   face 90-130 px, rolled by 25-45 degrees (either side)
  occluded  face 90-130 px, upright, 30-45 % of the face box covered by an opaque ellipse

The ground-truth box is the landmark extent; a face is found when a detection has IoU >= 0.3 with
it (Haar boxes are squares over the inner face, tighter than the landmark extent). Reported per
detector and condition: recall, false detections per frame (detections matching no face), and
milliseconds per frame; both detectors see the same frames, interleaved frame by frame.

    flock /tmp/ldeq_bench.lock .venv/bin/python benchmarks/bench_detect.py --n 40 --json benchmarks/results/detect.json
"""
import argparse
import json
import os
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ldeq.data.synthetic import random_face_params, render_face  # noqa: E402
from ldeq.predict.detect import make_detector  # noqa: E402
from ldeq.predict.track import iou_matrix  # noqa: E402

CONDITIONS = ("frontal", "small", "rotated", "occluded")
W, H = 320, 240


def _background(rng):
    g = np.linspace(0, 1, W)[None, :, None] * rng.uniform(40, 160, 3) + rng.uniform(20, 120, 3)
    img = np.broadcast_to(g, (H, W, 3)).copy()
    img += rng.normal(0, 12, (H, W, 3))
    for _ in range(4):  # a few shapes so that the background is not flat
        c = tuple(int(v) for v in rng.integers(0, 255, 3))
        cv2.circle(img, (int(rng.integers(0, W)), int(rng.integers(0, H))), int(rng.integers(8, 40)), c, -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_frame(cond: str, rng):
    """-> (frame (H, W, 3) uint8, ground-truth box (4,))."""
    img, lm = render_face(random_face_params(rng), 256, rng)
    x1, y1 = lm.min(0)
    x2, y2 = lm.max(0)
    side = max(x2 - x1, y2 - y1) * 1.5  # head crop around the landmark extent
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2 - 0.1 * side
    size = rng.uniform(28, 56) if cond == "small" else rng.uniform(90, 130)  # landmark-extent size
    k = size / max(x2 - x1, y2 - y1)
    angle = rng.uniform(25, 45) * rng.choice([-1, 1]) if cond == "rotated" else 0.0
    px = rng.uniform(0.25, 0.75) * W, rng.uniform(0.35, 0.65) * H
    M = cv2.getRotationMatrix2D((cx, cy), angle, k)
    M[:, 2] += [px[0] - cx, px[1] - cy]
    face = cv2.warpAffine(img, M, (W, H), flags=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
    mask = np.zeros((256, 256), np.uint8)
    cv2.circle(mask, (int(cx), int(cy)), int(side / 2), 255, -1)
    mask = cv2.warpAffine(mask, M, (W, H)) > 127
    frame = _background(rng)
    frame[mask] = face[mask]
    pts = lm @ M[:, :2].T + M[:, 2]
    box = np.array([*pts.min(0), *pts.max(0)])
    if cond == "occluded":
        bw, bh = box[2] - box[0], box[3] - box[1]
        frac = rng.uniform(0.30, 0.45)
        side_ = rng.choice(["left", "right", "bottom"])
        c = tuple(int(v) for v in rng.integers(0, 255, 3))
        if side_ == "bottom":
            centre = (int((box[0] + box[2]) / 2), int(box[3]))
            axes = (int(bw * 0.7), int(bh * frac * 2 * 0.8))
        else:
            x = box[0] if side_ == "left" else box[2]
            centre, axes = (int(x), int((box[1] + box[3]) / 2)), (int(bw * frac * 2 * 0.8), int(bh * 0.7))
        cv2.ellipse(frame, centre, axes, 0, 0, 360, c, -1)
    return frame, box


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=40, help="frames per condition")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--detectors", default="haar,haar-ensemble")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    names = args.detectors.split(",")
    dets = {n: make_detector(n) for n in names}
    rng = np.random.default_rng(args.seed)
    stats = {n: {c: {"found": 0, "false": 0, "ms": 0.0} for c in CONDITIONS} for n in names}
    load0 = open("/proc/loadavg").read().split()[:3]
    for cond in CONDITIONS:
        for _ in range(args.n):
            frame, box = make_frame(cond, rng)
            for n in names:  # interleaved: every detector on every frame
                t0 = time.perf_counter()
                d = np.asarray(dets[n](frame)).reshape(-1, 5)
                stats[n][cond]["ms"] += 1e3 * (time.perf_counter() - t0)
                iou = iou_matrix(box[None], d[:, :4])[0] if len(d) else np.zeros(0)
                stats[n][cond]["found"] += int((iou >= 0.3).any())
                stats[n][cond]["false"] += int((iou < 0.3).sum())
    load1 = open("/proc/loadavg").read().split()[:3]
    rows = []
    for n in names:
        for cond in CONDITIONS:
            s = stats[n][cond]
            rows.append({"detector": n, "condition": cond, "n": args.n, "recall": s["found"] / args.n,
                         "false_per_frame": s["false"] / args.n, "ms_per_frame": s["ms"] / args.n})
    print(f"load average before {' '.join(load0)}, after {' '.join(load1)}; {args.n} frames per condition, "
          f"{W}x{H}, seed {args.seed}")
    print("| detector | condition | recall | false / frame | ms / frame |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['detector']} | {r['condition']} | {r['recall']:.2f} | {r['false_per_frame']:.2f} | "
              f"{r['ms_per_frame']:.1f} |")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "load_before": load0, "load_after": load1, "n": args.n, "seed": args.seed}, f,
                      indent=2)


if __name__ == "__main__":
    main()
