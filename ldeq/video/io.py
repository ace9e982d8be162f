"""Video decode/encode (OpenCV), face boxes (file or Haar detector with smoothing), landmark output.

Frames are RGB uint8 arrays of shape (H, W, 3) everywhere in ldeq.video (OpenCV's BGR stays
inside this module). Boxes are (x1, y1, x2, y2) in frame pixels; a row of NaN means "no face in
this frame": the RwR runner skips such frames (landmarks NaN) and restarts from z0 = 0 after them.
All files are written atomically (temp file + os.replace), so an interrupted run never leaves a
truncated file under the final name.
"""
import os
from typing import Callable, Iterator, List, Optional, Sequence

import numpy as np

from .._io import atomic_save, publish


def _cv2():
    import cv2  # imported lazily: only the I/O parts need OpenCV
    return cv2


def load_haar_cascade(cascade: Optional[str] = None):
    """An OpenCV CascadeClassifier from ``cascade`` (a path, or a file name in OpenCV's own cascade
    folder; default: the frontal-face cascade). Raises FileNotFoundError / ValueError naming it."""
    cv2 = _cv2()
    cascade = cascade or "haarcascade_frontalface_default.xml"
    if not os.path.isabs(cascade) and not os.path.isfile(cascade):
        cascade = os.path.join(cv2.data.haarcascades, cascade)
    if not os.path.isfile(cascade):
        raise FileNotFoundError(f"Haar cascade {cascade!r} not found (opencv-python-headless>=4.8,<5 ships it)")
    clf = cv2.CascadeClassifier(cascade)
    if clf.empty():
        raise ValueError(f"Haar cascade {cascade!r} could not be loaded")
    return clf


class VideoError(ValueError):
    """An input video is missing, unreadable or empty."""


class NoFaceError(ValueError):
    """No face box could be found for a video."""


class VideoReader:
    """Iterates over the frames of a video file as RGB uint8 (H, W, 3) arrays.

    Raises :class:`VideoError` naming the path when the file is missing, cannot be decoded, or has
    no frame. ``fps`` and ``size`` (width, height) come from the container; ``frame_count`` is
    OpenCV's estimate (the exact count is the number of frames iterated).
    """

    def __init__(self, path: str):
        cv2 = _cv2()
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise VideoError(f"video {self.path!r}: file not found")
        cap = cv2.VideoCapture(self.path)
        ok, frame = cap.read() if cap.isOpened() else (False, None)
        if not ok or frame is None:
            cap.release()
            size = os.path.getsize(self.path)
            raise VideoError(f"video {self.path!r}: cannot decode any frame ({size} bytes; "
                             "empty, corrupt or not a video OpenCV can read)")
        self.fps = float(cap.get(cv2.CAP_PROP_FPS)) or 30.0
        self.frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.size = (frame.shape[1], frame.shape[0])
        cap.release()

    def __iter__(self) -> Iterator[np.ndarray]:
        cv2 = _cv2()
        cap = cv2.VideoCapture(self.path)
        try:
            while True:
                ok, frame = cap.read()
                if not ok:
                    return
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        finally:
            cap.release()


def read_video(path: str) -> (np.ndarray, float):
    """Whole video in memory: ((T, H, W, 3) uint8 RGB, fps). For long videos iterate a VideoReader."""
    r = VideoReader(path)
    return np.stack(list(r)), r.fps


def partial_video_path(path: str) -> str:
    """The temporary name :class:`AtomicVideoWriter` writes ``path`` under: ``DIR/.NAME.partial.mp4``
    (fixed, so a file left by a killed process is known, documented and replaced by the next run)."""
    folder, name = os.path.split(os.path.abspath(str(path)))
    return os.path.join(folder, f".{name}.partial.mp4")  # .mp4: OpenCV picks the container by suffix


class AtomicVideoWriter:
    """Writes RGB frames to an .mp4 (fourcc mp4v) under the temporary name
    :func:`partial_video_path` and moves it to ``path`` on ``close()``: frames written before an
    interruption are still flushed to ``path`` when the writer is closed in a ``finally`` / ``with``
    block. Only a process killed outright (SIGKILL) leaves the temporary file; the next writer of
    the same ``path`` overwrites it."""

    def __init__(self, path: str, fps: float, size):
        cv2 = _cv2()
        self.path = str(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._tmp = partial_video_path(self.path)
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)  # left by a killed run
        self.size = (int(size[0]), int(size[1]))
        self._w = cv2.VideoWriter(self._tmp, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), self.size)
        if not self._w.isOpened():
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)
            raise VideoError(f"cannot open a video writer for {self.path!r} (mp4v, {self.size})")
        self.n_frames = 0

    def write(self, frame_rgb: np.ndarray) -> None:
        cv2 = _cv2()
        if frame_rgb.shape[1::-1] != self.size:
            raise ValueError(f"frame size {frame_rgb.shape[1::-1]} differs from the writer's {self.size}")
        self._w.write(cv2.cvtColor(np.ascontiguousarray(frame_rgb), cv2.COLOR_RGB2BGR))
        self.n_frames += 1

    def close(self) -> None:
        if self._w is None:
            return
        self._w.release()
        self._w = None
        if self.n_frames:
            publish(self._tmp, self.path)
        elif os.path.exists(self._tmp):
            os.unlink(self._tmp)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_video(path: str, frames: Sequence[np.ndarray], fps: float = 30.0) -> None:
    """Writes RGB uint8 frames (T, H, W, 3) to an .mp4 atomically."""
    if len(frames) == 0:
        raise ValueError("write_video: no frames")
    with AtomicVideoWriter(path, fps, (frames[0].shape[1], frames[0].shape[0])) as w:
        for f in frames:
            w.write(f)


def load_bboxes(path: str, n_frames: Optional[int] = None) -> np.ndarray:
    """Face boxes per frame from a .npy (n, >=4) array or a text file (one ``x1 y1 x2 y2`` row per
    frame, spaces or commas). Extra columns (e.g. a score) are ignored. Returns (n, 4) float64.

    A NaN row marks a frame without face. With ``n_frames``, fewer rows than frames is an error
    (extra rows are dropped). Boxes with x2 <= x1 or y2 <= y1 are an error naming the row.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"bbox file {path!r}: not found")
    try:
        if path.endswith(".npy"):
            b = np.load(path, allow_pickle=False)
        else:
            with open(path) as fh:
                rows = [ln.replace(",", " ").split() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
            b = np.array([[float(v) for v in r] for r in rows], dtype=np.float64)
    except (ValueError, OSError) as e:
        raise ValueError(f"bbox file {path!r}: cannot parse ({e})") from e
    b = np.asarray(b, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] < 4:
        raise ValueError(f"bbox file {path!r}: expected shape (n_frames, >=4) with x1 y1 x2 y2, got {b.shape}")
    b = b[:, :4]
    if n_frames is not None:
        if len(b) < n_frames:
            raise ValueError(f"bbox file {path!r}: {len(b)} boxes for a video of {n_frames} frames")
        b = b[:n_frames]
    ok = np.isfinite(b).all(axis=1)
    bad = ok & ((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1]))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"bbox file {path!r}: row {i} is not a box with x2 > x1 and y2 > y1: {b[i].tolist()}")
    b[~ok] = np.nan
    return b


def smooth_boxes(boxes: np.ndarray, alpha: float = 0.5, max_hold: int = 15) -> np.ndarray:
    """Causal smoothing of per-frame detections (n, 4) with NaN rows for missed frames.

    Detected boxes are smoothed by an EMA (``alpha`` weight of the new detection; a detector's box
    jitters from frame to frame, which would shake the crop). A missed frame keeps the last box for
    up to ``max_hold`` frames, then becomes NaN (no face). Frames before the first detection take
    the first detected box, so a face found late still covers the start of the clip.
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    b = np.asarray(boxes, dtype=np.float64)
    out = np.full_like(b, np.nan)
    prev, held = None, 0
    for t, box in enumerate(b):
        if np.isfinite(box).all():
            prev = box.copy() if prev is None else alpha * box + (1 - alpha) * prev
            held = 0
            out[t] = prev
        elif prev is not None and held < max_hold:
            held += 1
            out[t] = prev
        else:
            prev = None
    ok = np.isfinite(out).all(axis=1)
    if ok.any():
        first = int(np.argmax(ok))
        out[:first] = out[first]
    return out


class HaarFaceDetector:
    """OpenCV's bundled frontal-face Haar cascade (needs opencv-python-headless < 5, whose wheels
    ship the cascade files). ``detect(frame_rgb)`` returns the largest face as (x1, y1, x2, y2) or
    None; ``boxes(frames)`` returns smoothed per-frame boxes (see :func:`smooth_boxes`) and raises
    :class:`NoFaceError` when no frame has a face."""

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5, min_size: int = 40,
                 smoothing_alpha: float = 0.5, max_hold: int = 15, cascade: Optional[str] = None):
        self._clf = load_haar_cascade(cascade)
        self.scale_factor, self.min_neighbors, self.min_size = scale_factor, min_neighbors, min_size
        self.smoothing_alpha, self.max_hold = smoothing_alpha, max_hold

    def detect(self, frame_rgb: np.ndarray) -> Optional[np.ndarray]:
        cv2 = _cv2()
        gray = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2GRAY)
        faces = self._clf.detectMultiScale(gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                           minSize=(self.min_size, self.min_size))
        if len(faces) == 0:
            return None
        x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
        return np.array([x, y, x + w, y + h], dtype=np.float64)

    def boxes(self, frames, detect: Optional[Callable] = None, name: str = "video") -> np.ndarray:
        detect = detect or self.detect
        raw = []
        for f in frames:
            d = detect(f)
            raw.append(np.full(4, np.nan) if d is None else np.asarray(d, dtype=np.float64))
        if not raw:
            raise VideoError(f"{name}: no frames")
        raw = np.stack(raw)
        if not np.isfinite(raw).all(axis=1).any():
            raise NoFaceError(f"{name}: the Haar detector found no face in any of {len(raw)} frames; "
                              "pass boxes with --bboxes FILE")
        return smooth_boxes(raw, self.smoothing_alpha, self.max_hold)


def save_landmarks(stem: str, landmarks: np.ndarray) -> List[str]:
    """Writes (T, K, 2) frame-pixel landmarks to ``stem.npy`` and ``stem.csv`` (columns
    frame, x0, y0, ..., x{K-1}, y{K-1}; NaN for skipped frames), atomically. Returns the paths."""
    lm = np.asarray(landmarks, dtype=np.float64)
    T, K, _ = lm.shape

    def _npy(tmp):
        with open(tmp, "wb") as fh:
            np.save(fh, lm)

    def _csv(tmp):
        header = "frame," + ",".join(f"x{k},y{k}" for k in range(K))
        data = np.concatenate([np.arange(T, dtype=np.float64)[:, None], lm.reshape(T, 2 * K)], axis=1)
        np.savetxt(tmp, data, delimiter=",", header=header, comments="", fmt=["%d"] + ["%.3f"] * (2 * K))

    atomic_save(stem + ".npy", _npy, ".npy")
    atomic_save(stem + ".csv", _csv, ".csv")
    return [stem + ".npy", stem + ".csv"]


def draw_landmarks(frame_rgb: np.ndarray, landmarks: Optional[np.ndarray], box=None, color=(0, 255, 0),
                   gt: Optional[np.ndarray] = None, text: Optional[str] = None) -> np.ndarray:
    """Copy of the frame with landmarks (K, 2) as dots, optional box, ground truth (red) and a label."""
    cv2 = _cv2()
    img = np.ascontiguousarray(frame_rgb.copy())
    r = max(1, int(round(min(img.shape[:2]) / 200)))
    if box is not None and np.isfinite(box).all():
        x1, y1, x2, y2 = [int(round(v)) for v in box]
        cv2.rectangle(img, (x1, y1), (x2, y2), (255, 255, 0), 1)
    if gt is not None:
        for x, y in np.asarray(gt):
            cv2.circle(img, (int(round(x)), int(round(y))), r, (255, 0, 0), -1)
    if landmarks is not None:
        for x, y in np.asarray(landmarks):
            if np.isfinite(x) and np.isfinite(y):
                cv2.circle(img, (int(round(x)), int(round(y))), r, color, -1)
    if text:
        cv2.putText(img, text, (5, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return img
