"""Training checkpoints: written atomically (temp file + fsync + os.replace) so a run killed at any
moment leaves either the previous file or the new one, never a truncated one. A checkpoint holds
everything ``--resume`` needs to continue bit-for-bit: model, optimiser, scheduler, EMA, AMP
scaler, every RNG state and the step."""
import glob
import os
import random
import re
from typing import Any, Dict, Optional

import numpy as np
import torch

from ldeq.model.checkpoint import atomic_torch_save  # one atomic writer for every checkpoint

LAST = "last.pt"


def capture_rng() -> Dict[str, Any]:
    """States of every global RNG a training step may touch."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_path(ckpt_dir: str, step: int) -> str:
    return os.path.join(ckpt_dir, f"step_{step:08d}.pt")


def save_checkpoint(ckpt_dir: str, state: Dict[str, Any], step: int, keep: int) -> str:
    """Writes ``step_XXXXXXXX.pt`` and ``last.pt`` atomically; keeps the newest ``keep`` step files."""
    path = step_path(ckpt_dir, step)
    atomic_torch_save(state, path)
    atomic_torch_save(state, os.path.join(ckpt_dir, LAST))
    old = sorted(glob.glob(os.path.join(ckpt_dir, "step_*.pt")))
    for p in old[:max(0, len(old) - keep)]:
        os.remove(p)
    return path


def resolve_resume(resume: str, out_dir: str) -> Optional[str]:
    """``--resume`` argument -> checkpoint path. 'auto' means ``<out>/checkpoints/last.pt`` if it exists
    (None otherwise, i.e. a fresh start); a folder means its ``last.pt``; a file is used as is."""
    if resume == "auto":
        path = os.path.join(out_dir, "checkpoints", LAST)
        return path if os.path.isfile(path) else None
    if os.path.isdir(resume):
        cand = os.path.join(resume, LAST)
        if not os.path.isfile(cand):
            cand = os.path.join(resume, "checkpoints", LAST)
        resume = cand
    if not os.path.isfile(resume):
        raise FileNotFoundError(f"--resume: checkpoint {resume!r} does not exist")
    return resume


def load_checkpoint(path: str, map_location="cpu") -> Dict[str, Any]:
    """Loads a training checkpoint, naming the file in the error when it is unreadable."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated/corrupt file, wrong format
        raise RuntimeError(f"checkpoint {path!r} is unreadable or corrupt: {e}") from e
    for key in ("model", "optimizer", "scheduler", "step", "rng", "config"):
        if key not in state:
            raise RuntimeError(f"checkpoint {path!r} is not an ldeq training checkpoint (missing {key!r})")
    return state


def step_of(path: str) -> Optional[int]:
    m = re.search(r"step_(\d+)\.pt$", path)
    return int(m.group(1)) if m else None
