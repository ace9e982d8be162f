"""``ldeq train`` / ``python -m ldeq.train``: argument parsing around :func:`ldeq.train.trainer.train`."""
import argparse
import json
import os
import sys
from typing import List, Optional

from .config import PRESETS, ConfigError, build_config

EPILOG = """\
overrides: any number of section.key=value, e.g. optim.lr=3e-4 train.steps=500 solver.grad=jfb
sections: model, solver, data, optim, train (see ldeq/train/config.py or docs/training.md)

examples:
  ldeq train --preset synthetic-small --out runs/small
  ldeq train --preset wflw data.root=/data/WFLW --out runs/wflw
  torchrun --nproc_per_node 4 -m ldeq.train --preset wflw data.root=/data/WFLW --out runs/wflw4
  ldeq train --out runs/small --resume auto          # continue an interrupted run
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ldeq train", description="Train an LDEQ (one process or torchrun).",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), help="start from a preset configuration")
    p.add_argument("--config", action="append", default=[], metavar="FILE",
                   help="YAML or JSON config file (repeatable; later files win)")
    p.add_argument("--out", default="runs/train", help="output folder (metrics, checkpoints, plots)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help="continue from a checkpoint (file or folder; no value: <out>/checkpoints/last.pt). "
                        "Without --preset/--config, the checkpoint's own config is used")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    return p


def _saved_config_overrides(args) -> List[str]:
    """With --resume and no preset/config file, start from the config saved in the out folder."""
    path = os.path.join(args.out, "config.json")
    if args.resume and not args.preset and not args.config and os.path.isfile(path):
        return [path]
    return []


def check_resume(resume: Optional[str], out: str) -> None:
    """--resume must name something to resume, else ValueError saying where it looked.

    'auto' (``--resume`` without a value) looks for ``<out>/checkpoints/last.pt``; a folder for
    ``FOLDER/last.pt`` then ``FOLDER/checkpoints/last.pt``; a file must exist. (Without this
    check a mistyped --out would silently start a fresh full-size run.)
    """
    if resume is None:
        return
    from .checkpoint import LAST
    if resume == "auto":
        looked = [os.path.join(out, "checkpoints", LAST)]
    elif os.path.isdir(resume):
        looked = [os.path.join(resume, LAST), os.path.join(resume, "checkpoints", LAST)]
    else:
        looked = [resume]
    if not any(os.path.isfile(p) for p in looked):
        raise ValueError(f"--resume: nothing to resume: no checkpoint at {' or '.join(map(repr, looked))}"
                         f"{' (the --out folder ' + repr(out) + ')' if resume == 'auto' else ''}; "
                         "drop --resume to start a fresh run")


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        check_resume(args.resume, args.out)
    except ValueError as e:
        print(f"ldeq train: error: {e}", file=sys.stderr)
        return 2
    try:
        cfg = build_config(args.preset, list(args.config) + _saved_config_overrides(args), args.overrides)
    except ConfigError as e:
        print(f"ldeq train: config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    from .trainer import train
    try:
        summary = train(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"ldeq train: error: {e}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        fe = summary.get("final_eval", {})
        print(f"done: {summary['steps']} steps in {summary['train_seconds']} s; test NME "
              f"{fe.get('test_nme', float('nan')):.2f} %, FR@10 {fe.get('test_fr10', float('nan')):.2f} %, "
              f"AUC@10 {fe.get('test_auc10', float('nan')):.4f}; outputs in {args.out}")
    return 0
