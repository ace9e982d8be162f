"""``ldeq video``: landmarks on a video with RwR, and WFLW-V style evaluation.

    ldeq video INPUT [--bboxes FILE | --detector haar] --checkpoint PATH --out DIR
               [--mode off|warm|prox] [--gamma G] [--gt LANDMARKS.npy] [--filter NAME] ...
    ldeq video eval ROOT --checkpoint PATH [--split easy|hard|all] [--split-dir DIR] [--out DIR]
    ldeq video synth ROOT [--n-videos N] [--frames T]   (a synthetic WFLW-V style root)

(A video file literally named ``eval`` or ``synth`` is passed as ``./eval``.)

Single-video outputs in DIR (STEM = the input's file name without extension):
STEM_landmarks.npy / .csv (frame pixels, NaN rows for frames without face), STEM_boxes.npy,
STEM_annotated.mp4 and, with --gt, STEM_metrics.json. Everything is written atomically; on an
error or Ctrl-C in the middle of the video, the frames processed so far are still written
(landmarks of the missing frames are absent) and the exit code is non-zero.
Exit codes: 0 ok, 1 interrupted/failed mid-run (partial outputs written), 2 bad input (every
option, the checkpoint, the boxes and the ground truth are checked before anything is written).
SIGTERM is handled as Ctrl-C. Only a SIGKILL can leave ``DIR/.STEM_annotated.mp4.partial.mp4``
behind (the annotated video being written); the next run into DIR replaces it.
"""
import argparse
import dataclasses
import json
import os
import sys
from typing import Dict, List, Optional

import numpy as np

from .._io import atomic_save, atomic_write_text
from ..cli import finite_float, positive_int, sigterm_as_interrupt
from .evaluate import DEFAULT_FILTERS, compare, format_table, write_json
from .filters import filter_with_gaps, make_filter
from .io import (AtomicVideoWriter, HaarFaceDetector, NoFaceError, VideoError, VideoReader, draw_landmarks,
                 load_bboxes, save_landmarks)
from .rwr import MODES, RwRConfig, RwRRunner


# RwRConfig fields that are not options (the mode has its own flag, the crop follows the model)
_RWR_NOT_FLAGS = ("mode", "batch_size", "crop_size", "crop_scale")
_RWR_HELP = {
    "max_iter_full": "iterations of a solve from zeros (default: the checkpoint's max_iter)",
    "max_iter_warm": "iterations per frame in mode warm",
    "max_iter_prox": "iterations per frame in mode prox",
    "gamma": "prox weight on ||z - z*_{t-1}||^2 (finite, >= 0)",
    "max_iter_adaptive": "iterations per frame in mode adaptive",
    "adaptive_gamma": "mode adaptive: memory weight of a landmark the frame does not move (more: less flicker, "
                      "more lag; docs/video.md)",
    "adaptive_speed": "mode adaptive: landmark displacement in crop units at which its weight falls to half "
                      "(less: follows motion sooner)",
}


def rwr_fields() -> List[dataclasses.Field]:
    """The :class:`RwRConfig` fields that are command-line options (every mode's parameters, so a
    new mode added to ``rwr.MODES`` / ``RwRConfig`` gets its flags without a change here)."""
    return [f for f in dataclasses.fields(RwRConfig) if f.name not in _RWR_NOT_FLAGS]


def add_rwr_args(p: argparse.ArgumentParser) -> None:
    """One ``--kebab-case`` option per RwR parameter (:func:`rwr_fields`): ints must be >= 1,
    floats finite; ranges are then checked by RwRConfig (see :func:`rwr_config`)."""
    for f in rwr_fields():
        flag = "--" + f.name.replace("_", "-")
        default = "" if f.name == "max_iter_full" else f" (default {f.default})"
        help_ = _RWR_HELP.get(f.name, f"RwR parameter {f.name}") + default
        if f.type in (bool, "bool"):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif f.type in (int, "int"):
            p.add_argument(flag, type=positive_int, default=None, metavar="N", help=help_)
        elif f.type in (float, "float"):
            p.add_argument(flag, type=finite_float, default=None, metavar="X", help=help_)
        else:
            p.add_argument(flag, default=None, help=help_)


def rwr_config(args, mode: str, max_iter_full: int, crop_size: int, batch_size: int = 16) -> RwRConfig:
    """RwRConfig from parsed :func:`add_rwr_args` options; a value RwRConfig refuses raises
    ValueError naming the flag (``--gamma: expected >= 0, got -1.0``)."""
    kw = {f.name: getattr(args, f.name) for f in rwr_fields() if getattr(args, f.name, None) is not None}
    kw.setdefault("max_iter_full", max_iter_full)
    try:
        return RwRConfig(mode=mode, batch_size=batch_size, crop_size=crop_size, **kw)
    except ValueError as e:
        msg = str(e)
        name = msg.split(":", 1)[0]
        if name in {f.name for f in rwr_fields()}:
            msg = "--" + name.replace("_", "-") + msg[len(name):]
        raise ValueError(msg) from e


def check_device(name: str) -> str:
    """The --device value, or ValueError when it names no usable device."""
    import torch
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device: {name!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: {name!r} requested but CUDA is not available")
    return name


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="LDEQ checkpoint (ours or the official format)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    add_rwr_args(p)
    p.add_argument("--batch-size", type=positive_int, default=16, help="videos solved together (eval)")
    p.add_argument("--no-progress", action="store_true")


def _load_model(args):
    """(model, solve) or raises a clear ValueError / FileNotFoundError."""
    from .model_solve import LDEQSolve, load_ldeq_for_video
    check_device(args.device)
    model = load_ldeq_for_video(args.checkpoint, args.device)
    return model, LDEQSolve(model)


def _config(args, model, mode: str) -> RwRConfig:
    return rwr_config(args, mode, model.cfg.max_iter, model.cfg.image_size, args.batch_size)


def parse_filter_params(name: Optional[str], text: Optional[str]) -> Optional[Dict]:
    """--filter-params JSON -> dict, checked by building the filter; ValueError naming the flag."""
    if text is None:
        return None if name is None else DEFAULT_FILTERS[name]
    if name is None:
        raise ValueError("--filter-params: given without --filter NAME")
    try:
        params = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--filter-params: not valid JSON ({e}): {text!r}") from None
    if not isinstance(params, dict):
        raise ValueError(f"--filter-params: expected a JSON object like {json.dumps(DEFAULT_FILTERS[name])}, "
                         f"got {text!r}")
    try:
        make_filter(name, **params)
    except TypeError as e:
        raise ValueError(f"--filter-params: {e}; the parameters of {name!r} are "
                         f"{sorted(DEFAULT_FILTERS[name])} (e.g. {json.dumps(DEFAULT_FILTERS[name])})") from None
    except ValueError as e:
        raise ValueError(f"--filter-params: {e}") from None
    return params


def load_gt(path: str, n_keypoints: int, n_frames: int) -> np.ndarray:
    """Ground-truth landmarks for --gt: a .npy (n_frames, K, 2) in frame pixels.

    Checked before any work: readable without pickle, shape (T, K, 2) with K the model's landmark
    count, T equal to the video's frame count (OpenCV's count; checked again after the run), and
    finite everywhere (NaN policy: a NaN or Inf anywhere is refused, naming the first frame; give
    frames without ground truth by cutting the clip instead). Raises ValueError / FileNotFoundError
    naming --gt.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--gt {path!r}: not found")
    try:
        gt = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"--gt {path!r}: not a readable .npy array ({e})") from None
    if not np.issubdtype(gt.dtype, np.number) or gt.ndim != 3 or gt.shape[2] != 2:
        raise ValueError(f"--gt {path!r}: expected a numeric array (n_frames, {n_keypoints}, 2), "
                         f"got {gt.dtype} {gt.shape}")
    if gt.shape[1] != n_keypoints:
        raise ValueError(f"--gt {path!r}: {gt.shape[1]} landmarks per frame but the model predicts "
                         f"{n_keypoints}")
    gt = gt.astype(np.float64)
    bad = ~np.isfinite(gt).all(axis=(1, 2))
    if bad.any():
        raise ValueError(f"--gt {path!r}: NaN or Inf in frame {int(np.argmax(bad))} ({int(bad.sum())} frame(s)); "
                         "ground truth must be finite in every frame")
    if n_frames > 0 and len(gt) != n_frames:
        raise ValueError(f"--gt {path!r}: {len(gt)} frames of landmarks for a video of {n_frames} frames")
    return gt


def _err(msg: str) -> int:
    print(f"ldeq video: error: {msg}", file=sys.stderr)
    return 2


# ----------------------------------------------------------------------------- single video
def _video_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ldeq video", description="Landmarks on a video with RwR (see also "
                                "'ldeq video eval -h' and 'ldeq video synth -h').")
    p.add_argument("input", help="video file (anything OpenCV decodes)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bboxes", help="face boxes: .npy (n_frames, >=4) or text rows 'x1 y1 x2 y2'; NaN row = no face")
    src.add_argument("--detector", choices=["haar", "haar-ensemble"],
                     help="detect the largest face per frame (boxes smoothed): OpenCV's Haar cascade, or the "
                          "ensemble of its cascades over rotations and scales (more recall, slower; docs/predict.md)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mode", choices=MODES, default="warm", help="RwR mode (default warm)")
    p.add_argument("--gt", help="ground-truth landmarks .npy (n_frames, 98, 2) frame pixels: report NME and NMF")
    p.add_argument("--filter", choices=sorted(DEFAULT_FILTERS), help="also write landmarks filtered by this filter")
    p.add_argument("--filter-params", default=None, help="JSON object of the filter's parameters "
                   "(needs --filter; default: the ones 'ldeq video eval' uses)")
    p.add_argument("--no-video", action="store_true", help="skip the annotated .mp4")
    _add_model_args(p)
    return p


def _largest_of(detector: str):
    """None for 'haar' (HaarFaceDetector's own), else a ``frame -> largest box or None`` callable."""
    if detector == "haar":
        return None
    from ..predict.detect import make_detector
    det = make_detector(detector)

    def largest(frame):  # the single-face pipeline follows the largest face
        d = det(frame)
        return None if not len(d) else d[np.argmax((d[:, 2] - d[:, 0]) * (d[:, 3] - d[:, 1])), :4]
    return largest


def run_single(argv: List[str]) -> int:
    args = _video_parser().parse_args(argv)
    gt = None
    try:  # every check before anything is written
        params = parse_filter_params(args.filter, args.filter_params)
        reader = VideoReader(args.input)
        stem = os.path.join(args.out, os.path.splitext(os.path.basename(args.input))[0])
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise ValueError(f"--out {args.out!r}: exists and is not a folder")
        if args.bboxes:
            boxes = load_bboxes(args.bboxes)
            if reader.frame_count > 0 and len(boxes) < reader.frame_count:
                raise ValueError(f"bbox file {args.bboxes!r}: {len(boxes)} boxes for a video of "
                                 f"{reader.frame_count} frames")
        model, solve = _load_model(args)
        cfg = _config(args, model, args.mode)
        if args.gt:
            gt = load_gt(args.gt, model.cfg.n_keypoints, reader.frame_count)
        if args.detector:
            print(f"detecting faces in {args.input} ({args.detector}) ...")
            detect = _largest_of(args.detector)
            boxes = HaarFaceDetector().boxes(reader, detect=detect, name=args.input)
            n_missing = int((~np.isfinite(boxes).all(axis=1)).sum())
            if n_missing:
                print(f"warning: no face in {n_missing} frame(s): they are skipped (NaN landmarks)")
        filt = make_filter(args.filter, **params) if args.filter else None
    except (ValueError, FileNotFoundError, NoFaceError, VideoError) as e:
        return _err(str(e))
    with sigterm_as_interrupt():
        return _run_single(args, reader, stem, boxes, model, solve, cfg, gt, filt)


def _run_single(args, reader, stem, boxes, model, solve, cfg, gt, filt) -> int:
    os.makedirs(args.out, exist_ok=True)
    atomic_save(stem + "_boxes.npy", lambda tmp: np.save(tmp, boxes), ".npy")
    runner = RwRRunner(solve, cfg, args.device)
    writer = None if args.no_video else AtomicVideoWriter(stem + "_annotated.mp4", reader.fps, reader.size)

    def on_frame(v, t, frame, pts, box):
        if writer is not None:
            g = gt[t] if gt is not None and t < len(gt) else None
            writer.write(draw_landmarks(frame, pts, box, gt=g, text=f"{args.mode} frame {t}"))

    rc, done = 0, False
    try:
        runner.run([reader], [boxes], progress=not args.no_progress, on_frame=on_frame, names=[args.input])
        done = True
    except KeyboardInterrupt:
        print("\ninterrupted: writing the frames processed so far", file=sys.stderr)
        rc = 1
    except (ValueError, RuntimeError) as e:
        print(f"ldeq video: error during the run: {e}; writing the frames processed so far", file=sys.stderr)
        rc = 1
    finally:
        if writer is not None:
            writer.close()
        lm = runner.collect(model.cfg.n_keypoints)[0]
        if len(lm):
            save_landmarks(stem + "_landmarks", lm)
    written = ([stem + "_landmarks.npy", stem + "_landmarks.csv"] if len(lm) else []) + [stem + "_boxes.npy"]
    if writer is not None and writer.n_frames:
        written.append(stem + "_annotated.mp4")
    if filt is not None and len(lm):
        save_landmarks(stem + f"_landmarks_{args.filter}", filter_with_gaps(filt, lm))
        written.append(stem + f"_landmarks_{args.filter}.npy")
    print(f"{len(lm)} frames{'' if done else ' (partial)'}; wrote " + ", ".join(written))
    if gt is not None and done and len(lm) != len(gt):
        print(f"ldeq video: error: --gt {args.gt!r}: {len(gt)} frames of landmarks but the video decoded to "
              f"{len(lm)} frames: no metrics written", file=sys.stderr)
        return 1
    if gt is not None and done and len(lm) >= 2:
        from .metrics import video_nme, video_nmf
        n = len(lm)
        res = {"mode": args.mode, "frames": n, "nme": video_nme(lm[:n], gt[:n], ignore_nan=True),
               "nmf": video_nmf(lm[:n], gt[:n], ignore_nan=True)}
        if filt is not None:
            fl = filter_with_gaps(filt, lm[:n])
            res[args.filter] = {"nme": video_nme(fl, gt[:n], ignore_nan=True), "nmf": video_nmf(fl, gt[:n], ignore_nan=True)}
        write_json(stem + "_metrics.json", res)
        print(f"NME {res['nme']:.3f}  NMF {res['nmf']:.2f}  ({n} frames)")
    return rc


# ----------------------------------------------------------------------------- evaluation
def run_eval(argv: List[str]) -> int:
    p = argparse.ArgumentParser(prog="ldeq video eval", description="NME / NMF per split and mode on a "
                                "WFLW-V style root (videos/, bboxes/, landmarks/)")
    p.add_argument("root")
    p.add_argument("--split", choices=["easy", "hard", "all"], default="all",
                   help="'all' reports easy and hard separately (default)")
    p.add_argument("--split-dir", default=None, help="folder with {easy,hard}_video_IDs.txt (default: the official lists)")
    p.add_argument("--modes", default="off,warm,prox,adaptive", help="comma-separated RwR modes (default off,warm,prox,adaptive)")
    p.add_argument("--filters", default=",".join(DEFAULT_FILTERS),
                   help="comma-separated filters applied to the 'off' predictions ('' for none)")
    p.add_argument("--max-videos", type=positive_int, default=None, help="first N videos of each split (quick runs)")
    p.add_argument("--out", default=None, help="write results.json and table.md here")
    _add_model_args(p)
    args = p.parse_args(argv)
    from .wflwv import WFLWV
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        return _err(f"--modes: unknown {bad}; expected a subset of {MODES}")
    unknown = [f for f in args.filters.split(",") if f and f not in DEFAULT_FILTERS]
    if unknown:
        return _err(f"--filters: unknown {unknown}; expected a subset of {sorted(DEFAULT_FILTERS)}")
    filters = {f: DEFAULT_FILTERS[f] for f in args.filters.split(",") if f}
    try:
        model, solve = _load_model(args)
        cfg = _config(args, model, "warm")
        splits = ["easy", "hard"] if args.split == "all" else [args.split]
        data = {s: WFLWV(args.root, s, split_dir=args.split_dir) for s in splits}
    except (ValueError, FileNotFoundError) as e:
        return _err(str(e))
    results, tables = {}, []
    for s, ds in data.items():
        items = ds.items[:args.max_videos] if args.max_videos else ds.items
        if ds.missing:
            print(f"{s}: {len(ds.missing)} video(s) of the split list are not under {args.root} (skipped)")
        if not items:
            print(f"{s}: no videos, skipped")
            continue
        try:
            gts = [it.landmarks() for it in items]
            boxes = [it.bboxes(len(g)) for it, g in zip(items, gts)]
            videos = [it.reader() for it in items]
        except (ValueError, FileNotFoundError) as e:
            return _err(str(e))
        rows = compare(solve, videos, boxes, gts, modes, filters, cfg,
                       progress=not args.no_progress, device=args.device)
        results[s] = rows
        tables.append(f"### {s} ({len(items)} videos)\n\n{format_table(rows)}")
        print(tables[-1] + "\n")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        write_json(os.path.join(args.out, "results.json"), results)
        atomic_write_text(os.path.join(args.out, "table.md"), "\n\n".join(tables) + "\n")
    return 0


# ----------------------------------------------------------------------------- synthetic root
def run_synth(argv: List[str]) -> int:
    p = argparse.ArgumentParser(prog="ldeq video synth", description="Write synthetic videos in the WFLW-V "
                                "layout: 'easy' clips have smooth motion only, 'hard' clips (like WFLW-V hard) "
                                "add fast head turns, sweeps and jumps, expression changes, occluders, motion "
                                "blur and lighting changes")
    p.add_argument("root")
    p.add_argument("--n-videos", type=int, default=4, help="per split (default 4)")
    p.add_argument("--frames", type=int, default=90)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", choices=["easy", "hard", "all"], default="all",
                   help="which split(s) to write (default all: easy and hard)")
    args = p.parse_args(argv)
    from .synthetic import write_wflwv_root
    splits = ("easy", "hard") if args.preset == "all" else (args.preset,)
    ids = write_wflwv_root(args.root, args.n_videos, args.frames, args.seed, splits=splits)
    print(f"wrote {sum(len(v) for v in ids.values())} videos under {args.root} "
          f"(split lists in {os.path.join(args.root, 'splits')})")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "eval":
        return run_eval(argv[1:])
    if argv and argv[0] == "synth":
        return run_synth(argv[1:])
    return run_single(argv)


if __name__ == "__main__":
    sys.exit(main())
