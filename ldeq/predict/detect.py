"""Face detectors for ``ldeq predict``: every face of a frame, as (N, 5) rows x1 y1 x2 y2 score.

* ``haar`` (default, no extra dependency): OpenCV's bundled frontal-face Haar cascade, all
  detections of ``detectMultiScale3``; the score is the cascade's last-stage weight squashed to
  (0, 1) by a logistic (a ranking score, not a calibrated probability).
* ``mediapipe`` (optional extra ``pip install ldeq[detect]``): MediaPipe's BlazeFace short-range
  face detector; its .tflite weights ship inside the ``mediapipe`` wheel (no download at run
  time). Score = MediaPipe's detection score.

Any callable ``frame_rgb (H, W, 3) uint8 -> (N, >=4) array`` works as a detector too (tests use
ground-truth boxes this way). Boxes are in frame pixels, x2 > x1, y2 > y1.
"""
import os
from typing import Callable, Optional, Union

import numpy as np

DETECTORS = ("haar", "mediapipe")


def _cv2():
    import cv2
    return cv2


def as_detections(d, name: str = "detector") -> np.ndarray:
    """A detector's output -> (N, 5) float64 x1 y1 x2 y2 score (score 1 when absent); rows that
    are not finite boxes with x2 > x1 and y2 > y1 are dropped."""
    d = np.asarray([] if d is None else d, dtype=np.float64)
    if d.size == 0:
        return np.zeros((0, 5))
    if d.ndim == 1:
        d = d[None]
    if d.ndim != 2 or d.shape[1] < 4:
        raise ValueError(f"{name}: expected an (N, 4) or (N, 5) array of boxes, got shape {d.shape}")
    if d.shape[1] == 4:
        d = np.concatenate([d, np.ones((len(d), 1))], axis=1)
    d = d[:, :5]
    ok = np.isfinite(d[:, :4]).all(axis=1) & (d[:, 2] > d[:, 0]) & (d[:, 3] > d[:, 1])
    d = d[ok]
    d[~np.isfinite(d[:, 4]), 4] = 1.0
    return d


class HaarDetector:
    """OpenCV's frontal-face Haar cascade returning every face (see module doc).

    min_size: smallest face side in pixels; min_neighbors: OpenCV's grouping threshold (higher:
    fewer false positives, lower recall).
    """

    name = "haar"

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5, min_size: int = 24,
                 cascade: Optional[str] = None):
        cv2 = _cv2()
        cascade = cascade or os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
        if not os.path.isfile(cascade):
            raise FileNotFoundError(f"Haar cascade {cascade!r} not found (opencv-python-headless>=4.8,<5 ships it)")
        self._clf = cv2.CascadeClassifier(cascade)
        if self._clf.empty():
            raise ValueError(f"Haar cascade {cascade!r} could not be loaded")
        if not scale_factor > 1:
            raise ValueError(f"scale_factor: expected > 1, got {scale_factor}")
        self.scale_factor, self.min_neighbors, self.min_size = scale_factor, int(min_neighbors), int(min_size)

    def __call__(self, frame_rgb: np.ndarray) -> np.ndarray:
        cv2 = _cv2()
        gray = cv2.cvtColor(np.ascontiguousarray(frame_rgb), cv2.COLOR_RGB2GRAY)
        faces, _, weights = self._clf.detectMultiScale3(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size), outputRejectLevels=True)
        if len(faces) == 0:
            return np.zeros((0, 5))
        f = np.asarray(faces, dtype=np.float64).reshape(-1, 4)
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        score = 1.0 / (1.0 + np.exp(-w))
        return np.stack([f[:, 0], f[:, 1], f[:, 0] + f[:, 2], f[:, 1] + f[:, 3], score], axis=1)


class MediaPipeDetector:
    """MediaPipe's BlazeFace face detector (short range: faces within ~2 m, the model of the
    ``face_detection`` solution). Needs the optional ``mediapipe`` package (``ldeq[detect]``); its
    weights are inside the wheel. ``min_score`` is MediaPipe's min_detection_confidence."""

    name = "mediapipe"

    def __init__(self, min_score: float = 0.5, model_selection: int = 0):
        try:
            import mediapipe as mp
            self._fd = mp.solutions.face_detection.FaceDetection(
                model_selection=int(model_selection), min_detection_confidence=float(min_score))
        except (ImportError, AttributeError) as e:
            raise ImportError("--detector mediapipe needs the optional extra: pip install 'ldeq[detect]' "
                              f"(the mediapipe package with its face_detection solution): {e}") from e

    def __call__(self, frame_rgb: np.ndarray) -> np.ndarray:
        h, w = frame_rgb.shape[:2]
        res = self._fd.process(np.ascontiguousarray(frame_rgb))
        rows = []
        for det in res.detections or ():
            b = det.location_data.relative_bounding_box
            x1, y1 = b.xmin * w, b.ymin * h
            rows.append([x1, y1, x1 + b.width * w, y1 + b.height * h, float(det.score[0])])
        return as_detections(np.array(rows).reshape(-1, 5), self.name)


def make_detector(detector: Union[str, Callable, None] = "haar", **kwargs) -> Callable:
    """'haar' | 'mediapipe' | a callable -> a callable ``frame_rgb -> (N, 5)`` detections."""
    if callable(detector):
        return detector
    if detector == "haar" or detector is None:
        return HaarDetector(**kwargs)
    if detector == "mediapipe":
        return MediaPipeDetector(**kwargs)
    raise ValueError(f"detector: expected one of {DETECTORS} or a callable, got {detector!r}")
