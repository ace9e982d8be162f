"""``Predictor``: every face's landmarks in images and frame streams, with one RwR state per face.

    from ldeq.predict import Predictor
    p = Predictor("final.pth.tar")                  # ours or an official checkpoint
    faces = p.predict(image)                        # RGB uint8 (H, W, 3) or a path -> [Face, ...]
    for faces in p.stream(frames):                  # video / camera frames, RwR per track
        ...

A :class:`Face` holds 98 landmarks (K, 2) in original-image pixels, their uncertainty (K,) in
pixels (the spread of each heatmap, crop units times the crop's side in frame pixels), the face
box (4,) and the detector's score; in a stream also the track id.

Images: each face is solved from zeros with the full budget (``max_iter_full``, default the
checkpoint's ``max_iter``), faces of several images batched together. Streams: faces are
tracked (:class:`ldeq.predict.track.IoUTracker`) and every track runs RwR on its own state
(``ldeq.video.rwr``: the mode's solve for continuing tracks, a solve from zeros for new ones), all
tracks of a frame in one batch. The per-mode solve is the video runner's and each track gets the
mode's output stage (``RwRConfig.output_filter()``, reset with the state), so every mode of
``rwr.MODES`` (and its ``RwRConfig`` parameters) behaves here as in ``ldeq video``.
"""
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch

from ..video.rwr import RwRConfig, RwRRunner, crop_batch, crop_sides, uncrop_points
from .detect import as_detections, make_detector
from .track import IoUTracker, Track


@dataclass
class Face:
    """One face: landmarks (K, 2) and uncertainty (K,) in image pixels, box (4,) x1 y1 x2 y2,
    detector score, track id (streams only; None for single images)."""
    landmarks: np.ndarray
    uncertainty: np.ndarray
    box: np.ndarray
    score: float
    track_id: Optional[int] = None

    def to_dict(self, decimals: int = 3) -> dict:
        r = lambda a: np.round(np.asarray(a, dtype=np.float64), decimals).tolist()  # noqa: E731
        d = {"box": r(self.box), "score": round(float(self.score), 6), "landmarks": r(self.landmarks),
             "uncertainty": r(self.uncertainty)}
        if self.track_id is not None:
            d = {"track_id": int(self.track_id), **d}
        return d


def as_rgb(image, name: str = "image") -> np.ndarray:
    """A path or an array -> contiguous RGB uint8 (H, W, 3). Grey (H, W) / (H, W, 1) are
    replicated, an alpha channel is dropped; other shapes or dtypes raise ValueError."""
    if isinstance(image, (str, os.PathLike)):
        import cv2
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{name} {path!r}: not found")
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"{name} {path!r}: not an image OpenCV can read")
        return np.ascontiguousarray(bgr[:, :, ::-1])
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 RGB (H, W, 3), got dtype {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or min(a.shape[:2]) < 2:
        raise ValueError(f"{name}: expected an RGB (H, W, 3) array, got shape {a.shape}")
    return np.ascontiguousarray(a[:, :, :3])


class Predictor:
    """Landmarks of every face in images and streams (see module doc).

    Args:
        checkpoint: a checkpoint path (ours or the official format, any tolerance) or an LDEQ.
        device: torch device.
        detector: 'haar' (default), 'haar-ensemble' or a callable
            ``frame -> (N, >=4)`` boxes (an optional 5th column is the score).
        mode: RwR mode of streams (any of ``rwr.MODES``; default 'warm'), ignored for images.
        rwr: a full :class:`RwRConfig` instead of ``mode`` (its crop size must be the model's).
        batch_size: faces solved together.
        iou_threshold, max_misses, box_smoothing: tracker settings (:class:`IoUTracker`).
        min_score: detections below this score are dropped. max_faces: keep the largest N.
        overrides: LDEQConfig fields for :func:`ldeq.model.load_checkpoint` (e.g. tol, solver).
    """

    def __init__(self, checkpoint, device: str = "cpu", detector: Union[str, Callable, None] = "haar",
                 mode: str = "warm", rwr: Optional[RwRConfig] = None, batch_size: int = 16,
                 iou_threshold: float = 0.3, max_misses: int = 5, box_smoothing: float = 0.5,
                 min_score: float = 0.0, max_faces: Optional[int] = None, **overrides):
        from ..model import LDEQ, load_checkpoint
        from ..video.model_solve import LDEQSolve
        if isinstance(checkpoint, LDEQ):
            model = checkpoint.to(device).eval()
            if overrides:
                raise ValueError("overrides: only with a checkpoint path (set them on the model's cfg instead)")
        else:
            model = load_checkpoint(checkpoint, map_location=str(device), **overrides)
        self.model, self.device = model, torch.device(device)
        self.solve = LDEQSolve(model)
        size = model.cfg.image_size
        if rwr is None:
            rwr = RwRConfig(mode=mode, max_iter_full=model.cfg.max_iter, batch_size=batch_size, crop_size=size)
        elif rwr.crop_size != size:
            raise ValueError(f"rwr.crop_size: expected the model's image_size {size}, got {rwr.crop_size}")
        self.config = rwr
        self._runner = RwRRunner(self.solve, rwr, device)
        self.detector = make_detector(detector)
        if not min_score >= 0:
            raise ValueError(f"min_score: expected a number >= 0, got {min_score}")
        if max_faces is not None and int(max_faces) < 1:
            raise ValueError(f"max_faces: expected an integer >= 1 or None, got {max_faces}")
        self.min_score, self.max_faces = float(min_score), max_faces
        self.tracker = IoUTracker(iou_threshold, max_misses, box_smoothing)
        self.frame_index = 0

    @property
    def n_keypoints(self) -> int:
        return self.model.cfg.n_keypoints

    # -- detection ---------------------------------------------------------------------------------
    def detect(self, image: np.ndarray, boxes=None) -> np.ndarray:
        """(N, 5) detections of an RGB image: ``boxes`` when given, else the detector's; filtered by
        ``min_score``, largest ``max_faces`` kept, sorted left to right."""
        d = as_detections(self.detector(image) if boxes is None else boxes,
                          "boxes" if boxes is not None else "detector")
        d = d[d[:, 4] >= self.min_score]
        if self.max_faces is not None and len(d) > self.max_faces:
            area = (d[:, 2] - d[:, 0]) * (d[:, 3] - d[:, 1])
            d = d[np.sort(np.argsort(-area, kind="stable")[:self.max_faces])]
        return d[np.argsort(d[:, 0], kind="stable")]

    # -- solving -----------------------------------------------------------------------------------
    @torch.no_grad()
    def _solve(self, frames: Sequence[np.ndarray], boxes: Sequence[np.ndarray], restart: bool,
               states=None, crops=None):
        """Solve faces (in chunks of batch_size) -> (points (B, K, 2) px, uncertainty (B, K) px,
        states list, crop affines (B, 2, 3)); points before any output stage."""
        c = self.config
        pts, unc, zs, mats_all = [], [], [], []
        for s in range(0, len(frames), c.batch_size):
            e = s + c.batch_size
            images, mats = crop_batch(frames[s:e], boxes[s:e], c.crop_size, c.crop_scale)
            prev = None if restart else np.stack(crops[s:e])
            (kp, z), _ = self._runner.solve_group(images, None if restart else list(states[s:e]), restart, prev, mats)
            _, _, std = self.model.decode(z)
            pts.append(uncrop_points(kp, mats, c.crop_size))
            # crop units -> frame pixels: times the crop's side in frame pixels
            unc.append(std.double().cpu().numpy() * crop_sides(mats, c.crop_size)[:, None])
            zs.extend(z[j].detach() for j in range(z.shape[0]))
            mats_all.append(mats)
        return np.concatenate(pts), np.concatenate(unc), zs, np.concatenate(mats_all)

    def predict(self, image, boxes=None) -> List[Face]:
        """Faces of one image (path or RGB uint8 array), each solved from zeros. ``boxes`` (N, 4|5)
        replaces the detector."""
        return self.predict_batch([image], None if boxes is None else [boxes])[0]

    def predict_batch(self, images: Sequence, boxes: Optional[Sequence] = None) -> List[List[Face]]:
        """Faces of several images, all faces solved in batches of ``batch_size``."""
        if boxes is not None and len(boxes) != len(images):
            raise ValueError(f"boxes: {len(boxes)} box arrays for {len(images)} images")
        rgbs = [as_rgb(im, f"images[{i}]") for i, im in enumerate(images)]
        dets = [self.detect(im, None if boxes is None else boxes[i]) for i, im in enumerate(rgbs)]
        frames = [rgbs[i] for i, d in enumerate(dets) for _ in range(len(d))]
        flat = [row for d in dets for row in d]
        out: List[List[Face]] = [[] for _ in rgbs]
        if not flat:
            return out
        pts, unc, _, _ = self._solve(frames, [r[:4] for r in flat], restart=True)
        k = 0
        for i, d in enumerate(dets):
            for row in d:
                out[i].append(Face(pts[k], unc[k], row[:4].copy(), float(row[4])))
                k += 1
        return out

    # -- streams -----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every track and state (a new stream)."""
        self.tracker.reset()
        self.frame_index = 0

    def step(self, frame, boxes=None) -> List[Face]:
        """One frame of a stream: detect, track, solve every seen track with RwR on its own state.
        Returns the faces of this frame in ascending track id."""
        rgb = as_rgb(frame, f"frame {self.frame_index}")
        tracks = self.tracker.update(self.detect(rgb, boxes), self.frame_index)
        self.frame_index += 1
        groups = {True: [], False: []}
        for t in tracks:
            groups[self.config.mode == "off" or t.state is None].append(t)
        faces = {}
        for restart, ts in groups.items():
            if not ts:
                continue
            pts, unc, zs, mats = self._solve([rgb] * len(ts), [t.box for t in ts], restart,
                                             [t.state for t in ts], [t.crop for t in ts])
            sides = crop_sides(mats, self.config.crop_size)
            for j, t in enumerate(ts):
                t.state, t.crop = zs[j], mats[j]
                p = pts[j]
                if restart:  # the mode's output stage restarts with the state, as in the video runner
                    t.extra["output_filter"] = self.config.output_filter()
                if t.extra.get("output_filter") is not None:
                    p = t.extra["output_filter"].step(p, scale=float(sides[j]))
                faces[t.id] = Face(p, unc[j], t.box.copy(), t.score, t.id)
        return [faces[t.id] for t in tracks]

    def stream(self, frames: Iterable, boxes: Optional[Iterable] = None) -> Iterator[List[Face]]:
        """Faces per frame of a frame iterable (a list, a VideoReader, a camera), tracked with one
        RwR state per face; starts from a fresh tracker. ``boxes``: per-frame (N, 4|5) arrays
        replacing the detector."""
        self.reset()
        box_it = iter(boxes) if boxes is not None else None
        for frame in frames:
            b = None
            if box_it is not None:
                b = next(box_it, None)
                if b is None:
                    raise ValueError(f"boxes: fewer box arrays than frames ({self.frame_index})")
            yield self.step(frame, b)

    @property
    def live_tracks(self) -> List[Track]:
        return list(self.tracker.tracks)
