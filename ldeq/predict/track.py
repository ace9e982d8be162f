"""Multi-face tracking by IoU matching (``scipy.optimize.linear_sum_assignment``).

Each frame's detections are matched to the live tracks by maximising the total IoU between the
track's predicted box (its last smoothed box moved by its velocity, an EMA of the box centre's
displacement per frame, so two faces crossing each other keep their identities) and the
detection, accepting only pairs with IoU >= ``iou_threshold``.
A detection left unmatched starts a new track (new id, no state: its first solve is from zeros);
a track left unmatched is *missed*: it keeps its box and its RwR state but gives no output that
frame, and is dropped after more than ``max_misses`` consecutive misses (a face that left the
frame). A track's box is an EMA of its matched detections (``box_smoothing``: the weight of the
new detection, 1 = raw boxes), because a jittering box shakes the crop and is itself flicker.

Every track carries its own RwR state (``Track.state``, the last equilibrium, and ``Track.crop``,
the crop affine it was computed in): the predictor solves all tracks of a frame in one batch.
"""
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a (N, >=4) against b (M, >=4) (x1 y1 x2 y2) -> (N, M) in [0, 1]."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, np.shape(a)[-1] if np.size(a) else 4)[:, :4]
    b = np.asarray(b, dtype=np.float64).reshape(-1, np.shape(b)[-1] if np.size(b) else 4)[:, :4]
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


@dataclass
class Track:
    """One face followed across frames. ``box`` (4,) smoothed frame-pixel box, ``score`` the last
    detection's score, ``state`` the RwR state (None: next solve starts from zeros), ``crop`` the
    (2, 3) affine of the crop ``state`` lives in, ``misses`` consecutive frames without a match,
    ``hits`` frames matched so far, ``velocity`` (2,) box-centre pixels per frame."""

    def predicted_box(self) -> np.ndarray:
        """The box expected in the next frame: the last box moved by velocity * (misses + 1)."""
        d = self.velocity * (self.misses + 1)
        return self.box + np.array([d[0], d[1], d[0], d[1]])
    id: int
    box: np.ndarray
    score: float
    state: Any = None
    crop: Optional[np.ndarray] = None
    misses: int = 0
    hits: int = 1
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))
    first_frame: int = 0
    extra: dict = field(default_factory=dict)


class IoUTracker:
    """Keeps face identities across frames (see module doc). ``update(detections, frame_index)``
    returns the tracks seen in this frame (matched or new), in ascending id order."""

    def __init__(self, iou_threshold: float = 0.3, max_misses: int = 5, box_smoothing: float = 0.5):
        if not 0 < iou_threshold <= 1:
            raise ValueError(f"iou_threshold: expected a number in (0, 1], got {iou_threshold}")
        if int(max_misses) < 0:
            raise ValueError(f"max_misses: expected an integer >= 0, got {max_misses}")
        if not 0 < box_smoothing <= 1:
            raise ValueError(f"box_smoothing: expected a number in (0, 1], got {box_smoothing}")
        self.iou_threshold, self.max_misses, self.box_smoothing = float(iou_threshold), int(max_misses), float(box_smoothing)
        self.tracks: List[Track] = []
        self.dropped: List[Track] = []  # tracks dropped by the last update
        self._next_id = 0

    def reset(self) -> None:
        self.tracks, self.dropped, self._next_id = [], [], 0

    def match(self, boxes: np.ndarray) -> Tuple[List[Tuple[int, int]], List[int], List[int]]:
        """(pairs (track index, detection index), unmatched track indices, unmatched detections)."""
        from scipy.optimize import linear_sum_assignment
        n_t, n_d = len(self.tracks), len(boxes)
        if n_t == 0 or n_d == 0:
            return [], list(range(n_t)), list(range(n_d))
        iou = iou_matrix(np.stack([t.predicted_box() for t in self.tracks]), boxes)
        rows, cols = linear_sum_assignment(-iou)
        pairs = [(int(r), int(c)) for r, c in zip(rows, cols) if iou[r, c] >= self.iou_threshold]
        mt, md = {r for r, _ in pairs}, {c for _, c in pairs}
        return pairs, [i for i in range(n_t) if i not in mt], [j for j in range(n_d) if j not in md]

    def update(self, detections: np.ndarray, frame_index: int = 0) -> List[Track]:
        """detections (N, 5) x1 y1 x2 y2 score -> the tracks of this frame (ascending id)."""
        d = np.asarray(detections, dtype=np.float64).reshape(-1, 5)
        pairs, lost, new = self.match(d[:, :4])
        a = self.box_smoothing
        seen = []
        for ti, di in pairs:
            t = self.tracks[ti]
            new_box = a * d[di, :4] + (1 - a) * t.box
            step = ((new_box[:2] + new_box[2:]) - (t.box[:2] + t.box[2:])) / 2 / (t.misses + 1)
            t.velocity = step if t.hits == 1 else 0.5 * step + 0.5 * t.velocity
            t.box = new_box
            t.score, t.misses, t.hits = float(d[di, 4]), 0, t.hits + 1
            seen.append(t)
        self.dropped = []
        keep = []
        for i, t in enumerate(self.tracks):
            if i in lost:
                t.misses += 1
                if t.misses > self.max_misses:
                    self.dropped.append(t)
                    continue
            keep.append(t)
        for di in new:
            t = Track(id=self._next_id, box=d[di, :4].copy(), score=float(d[di, 4]), first_frame=frame_index)
            self._next_id += 1
            keep.append(t)
            seen.append(t)
        self.tracks = keep
        return sorted(seen, key=lambda t: t.id)
