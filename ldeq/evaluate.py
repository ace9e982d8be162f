"""``ldeq eval``: NME / FR@10 / AUC@10 per split of a checkpoint, a CED plot and a landmark grid.

    ldeq eval --data wflw --root DIR --checkpoint PATH [--out DIR]
    ldeq eval --data synthetic --checkpoint PATH [--root EXPORT_DIR] [--num-images N --seed S]

``--data wflw`` reads either published WFLW layout under ROOT (pre-cropped lists or the
original annotations) and evaluates every test split present. ``--data synthetic`` evaluates the
procedural synthetic faces: an on-disk export in the pre-cropped layout when ROOT is given (see
``ldeq.data.export_wflw_cropped``), else ``--num-images`` faces rendered in memory, split into the
WFLW test subsets by their attributes. Writes to OUT: ``metrics.json``, ``ced.png`` and
``grid.png`` (ground truth green, predictions red), all atomically.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

from ._io import atomic_write_json
from .cli import int_at_least, nonnegative_float
from .model.config import SOLVERS

SPLIT_ORDER = ("test", "test_largepose", "test_expression", "test_illumination", "test_makeup",
               "test_occlusion", "test_blur")


def _tol(text: str) -> float:
    try:
        return nonnegative_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0 (0: run exactly --max-iter iterations), "
                                         f"got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ldeq eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=("wflw", "synthetic"), required=True)
    p.add_argument("--root", help="dataset folder (required for wflw; optional export folder for synthetic)")
    p.add_argument("--checkpoint", required=True, help="LDEQ checkpoint (official or ldeq format)")
    p.add_argument("--out", default="eval_out", help="output folder (default: eval_out)")
    p.add_argument("--splits", default=None,
                   help=f"comma-separated splits (default: every one present of {','.join(SPLIT_ORDER)})")
    p.add_argument("--layout", choices=("auto", "cropped", "original"), default="auto", help="WFLW layout")
    p.add_argument("--num-images", type=int_at_least(1), default=200, help="synthetic faces rendered in memory")
    p.add_argument("--seed", type=int, default=0, help="synthetic dataset seed")
    p.add_argument("--limit", type=int_at_least(1), default=None, help="evaluate at most this many images per split")
    p.add_argument("--batch-size", type=int_at_least(1), default=32)
    p.add_argument("--workers", type=int_at_least(0), default=0, help="DataLoader worker processes")
    p.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1'...")
    p.add_argument("--solver", default=None, choices=SOLVERS, help="override the checkpoint's solver")
    p.add_argument("--max-iter", type=int_at_least(1), default=None, help="override the solver iteration budget")
    p.add_argument("--tol", type=_tol, default=None,
                   help="override the solver tolerance (0: a fixed budget of --max-iter iterations)")
    p.add_argument("--grid", type=int, default=16, help="images in grid.png (0: no grid)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


# --- datasets ----------------------------------------------------------------------------------
def _sample_key(ds, i):
    """A key identifying the crop of sample i, so images shared by several splits run once."""
    base = getattr(ds, "dataset", None)
    if base is not None and hasattr(ds, "indices"):  # torch Subset
        return _sample_key(base, int(ds.indices[i]))
    if hasattr(ds, "samples"):  # WFLWCropped
        return ("file", ds.samples[i][0])
    if hasattr(ds, "records"):  # WFLWOriginal
        r = ds.records[i]
        return ("file", r["image"], tuple(np.asarray(r["bbox"]).tolist()))
    return (id(ds), i)


def open_splits(args, image_size: int) -> dict:
    """``{split: dataset}`` in SPLIT_ORDER; raises FileNotFoundError / ValueError with the reason."""
    from torch.utils.data import Subset

    from ldeq.data import SyntheticFaces, wflw_dataset
    from ldeq.data.wflw import detect_layout

    wanted = None if args.splits is None else [s.strip() for s in args.splits.split(",") if s.strip()]
    for s in wanted or ():
        if s not in SPLIT_ORDER:
            raise ValueError(f"--splits: unknown split {s!r}; expected some of {','.join(SPLIT_ORDER)}")
    names = wanted or list(SPLIT_ORDER)
    out = {}
    if args.data == "synthetic" and not args.root:
        full = SyntheticFaces("test", args.num_images, args.seed, out_size=image_size)
        for name, idx in full.split_indices().items():
            if name in names and len(idx):
                out[name] = full if name == "test" else Subset(full, idx.tolist())
        return {s: out[s] for s in SPLIT_ORDER if s in out}
    if not args.root:
        raise ValueError("--root: required with --data wflw (a WFLW folder in either published layout)")
    if not os.path.isdir(args.root):
        raise FileNotFoundError(f"--root: no such folder {args.root!r}")
    layout = detect_layout(args.root) if args.layout == "auto" else args.layout
    for s in names:
        if layout == "cropped" and not os.path.isfile(os.path.join(args.root, f"{s}.txt")):
            if wanted:
                raise FileNotFoundError(f"--splits: {os.path.join(args.root, s + '.txt')} does not exist")
            continue  # an absent subset list is skipped unless asked for
        ds = wflw_dataset(args.root, s, layout=layout, out_size=image_size)
        if len(ds) == 0:  # e.g. an attribute subset no test image has
            if wanted:
                raise ValueError(f"--splits: split {s!r} has no images under {args.root!r}")
            continue
        out[s] = ds
    if not out:
        raise FileNotFoundError(f"--root: no test split list found under {args.root!r}")
    return out


# --- evaluation --------------------------------------------------------------------------------
@torch.no_grad()
def predict(model, ds, batch_size, workers, device, cache, limit=None, progress=True, desc=""):
    """Keypoints (N, K, 2) and ground truth (N, K, 2) in crop units, plus mean solver steps.

    ``cache`` maps sample keys to earlier predictions (a test image shared by subsets runs once).
    """
    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    n = len(ds) if limit is None else min(limit, len(ds))
    keys = [_sample_key(ds, i) for i in range(n)]
    todo = [i for i in range(n) if keys[i] not in cache]
    steps = []
    if todo:
        loader = DataLoader(Subset(ds, todo), batch_size=batch_size, shuffle=False, num_workers=workers)
        dtype = next(model.parameters()).dtype
        k = 0
        for images, gts in tqdm(loader, desc=desc, disable=not progress, unit="batch"):
            out = model(images.to(device=device, dtype=dtype))
            steps.append(out.stats.nstep.float().cpu())
            for j in range(images.shape[0]):
                cache[keys[todo[k]]] = (out.keypoints[j].float().cpu().numpy(), gts[j].numpy())
                k += 1
    preds = np.stack([cache[key][0] for key in keys])
    gts = np.stack([cache[key][1] for key in keys])
    nstep = float(torch.cat(steps).mean()) if steps else float("nan")
    return preds, gts, nstep


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: {name!r} requested but CUDA is not available")
    return dev


def evaluate(args) -> dict:
    """Run the evaluation described by parsed ``args``; returns the metrics dict it writes."""
    from ldeq.data import landmark_grid
    from ldeq.metrics import format_table, metrics_table, nme_per_image, plot_ced
    from ldeq.model import load_checkpoint

    device = _resolve_device(args.device)
    overrides = {k: v for k, v in (("solver", args.solver), ("max_iter", args.max_iter), ("tol", args.tol))
                 if v is not None}
    model = load_checkpoint(args.checkpoint, map_location=str(device), **overrides)
    splits = open_splits(args, model.cfg.image_size)
    cache, nmes, info, t0 = {}, {}, {}, time.time()
    first = None
    for name, ds in splits.items():
        preds, gts, nstep = predict(model, ds, args.batch_size, args.workers, device, cache, args.limit,
                                    progress=not args.no_progress, desc=name)
        nmes[name] = nme_per_image(preds, gts)
        info[name] = {"mean_solver_steps": nstep}
        if first is None:
            first = (ds, preds, gts)
    rows = metrics_table(nmes)
    print(f"checkpoint {args.checkpoint} | data {args.data} {args.root or ''} | solver {model.cfg.solver} "
          f"max_iter {model.cfg.max_iter} tol {model.cfg.tol} | {time.time() - t0:.1f} s")
    print(format_table(rows))
    os.makedirs(args.out, exist_ok=True)
    result = {"checkpoint": os.path.abspath(args.checkpoint), "data": args.data, "root": args.root,
              "config": model.cfg.to_dict(),
              "splits": {r.split: {"n": r.n, "nme": r.nme, "fr": r.fr, "auc": r.auc, **info[r.split]}
                         for r in rows}}
    atomic_write_json(os.path.join(args.out, "metrics.json"), result, indent=2)
    plot_ced(nmes, os.path.join(args.out, "ced.png"), title=f"CED ({args.data})")
    if args.grid > 0 and first is not None:
        ds, preds, gts = first
        n = min(args.grid, len(preds))
        landmark_grid([ds[i][0] for i in range(n)], gts=gts[:n], preds=preds[:n], ncols=4,
                      path=os.path.join(args.out, "grid.png"))
    print(f"wrote {os.path.join(args.out, 'metrics.json')}, ced.png" + (", grid.png" if args.grid > 0 else ""))
    return result


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        evaluate(args)
    except (FileNotFoundError, ValueError) as e:  # includes CheckpointError and WFLWFormatError
        print(f"ldeq eval: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
