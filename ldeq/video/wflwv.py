"""WFLW-V loader (reference section 6).

Layout::

    ROOT/videos/<ID>.mp4
    ROOT/bboxes/<ID>.npy       (n_frames, >=4): x1 y1 x2 y2 per frame (extra columns ignored)
    ROOT/landmarks/<ID>.npy    (n_frames, 98, 2) frame pixels (pseudo-labels)

The official easy / hard split lists (500 IDs each) ship with ldeq in
``ldeq/resources/wflw_v/{easy,hard}_video_IDs.txt`` (``split_dir`` points at other lists, e.g. those
of a synthetic root written by ``ldeq video synth``). A ROOT may hold only part of the dataset:
``missing='skip'`` (default) drops IDs whose files are absent and reports them in
``WFLWV.missing``; ``missing='error'`` raises on the first absent file.
"""
import os
from dataclasses import dataclass
from importlib import resources
from typing import Dict, List, Optional, Sequence

import numpy as np

from .io import VideoReader, load_bboxes

SPLITS = ("easy", "hard")


def split_ids(split: str, split_dir: Optional[str] = None) -> List[str]:
    """The video IDs of the 'easy' or 'hard' split, in file order: the official lists shipped with
    ldeq (500 each), or ``split_dir/<split>_video_IDs.txt`` when ``split_dir`` is given."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    name = f"{split}_video_IDs.txt"
    if split_dir is not None:
        path = os.path.join(split_dir, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"split list {path!r}: not found")
        with open(path) as fh:
            text = fh.read()
    else:
        text = resources.files("ldeq").joinpath("resources", "wflw_v", name).read_text()
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def download_ranges() -> Dict[str, tuple]:
    """{ID: (first_frame, last_frame)} of each clip in its source video."""
    text = resources.files("ldeq").joinpath("resources", "wflw_v", "download_ranges.txt").read_text()
    out = {}
    for ln in text.splitlines():
        f = ln.split()
        if len(f) >= 3:
            out[f[0]] = (int(f[1]), int(f[2]))
    return out


@dataclass
class WFLWVItem:
    vid: str
    video_path: str
    bboxes_path: str
    landmarks_path: str

    def landmarks(self) -> np.ndarray:
        lm = np.load(self.landmarks_path, allow_pickle=False).astype(np.float64)
        if lm.ndim != 3 or lm.shape[1:] != (98, 2):
            raise ValueError(f"landmarks {self.landmarks_path!r}: expected (n_frames, 98, 2), got {lm.shape}")
        return lm

    def bboxes(self, n_frames: Optional[int] = None) -> np.ndarray:
        return load_bboxes(self.bboxes_path, n_frames)

    def reader(self) -> VideoReader:
        return VideoReader(self.video_path)


class WFLWV:
    """Items of a WFLW-V root for a split ('easy', 'hard', 'all') or an explicit ID list."""

    def __init__(self, root: str, split: str = "all", ids: Optional[Sequence[str]] = None, missing: str = "skip",
                 split_dir: Optional[str] = None):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"WFLW-V root {root!r}: not a directory")
        if missing not in ("skip", "error"):
            raise ValueError(f"missing: expected 'skip' or 'error', got {missing!r}")
        if ids is None:
            ids = (split_ids("easy", split_dir) + split_ids("hard", split_dir) if split == "all"
                   else split_ids(split, split_dir))
        self.root, self.split = root, split
        self.items: List[WFLWVItem] = []
        self.missing: List[str] = []
        for vid in ids:
            it = WFLWVItem(vid, os.path.join(root, "videos", f"{vid}.mp4"), os.path.join(root, "bboxes", f"{vid}.npy"),
                           os.path.join(root, "landmarks", f"{vid}.npy"))
            absent = [p for p in (it.video_path, it.bboxes_path, it.landmarks_path) if not os.path.isfile(p)]
            if absent:
                if missing == "error":
                    raise FileNotFoundError(f"WFLW-V video {vid}: missing {', '.join(absent)}")
                self.missing.append(vid)
            else:
                self.items.append(it)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i) -> WFLWVItem:
        return self.items[i]
