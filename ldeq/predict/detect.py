"""Face detectors for ``ldeq predict``: every face of a frame, as (N, 5) rows x1 y1 x2 y2 score.

* ``haar`` (default, no extra dependency): OpenCV's bundled frontal-face Haar cascade, all
  detections of ``detectMultiScale3``; the score is the cascade's last-stage weight squashed to
  (0, 1) by a logistic (a ranking score, not a calibrated probability).
* ``haar-ensemble``: OpenCV's frontal (default, alt2) and profile cascades, both profiles, on the
  frame rotated by -30, 0 and 30 degrees and upscaled x2, merged by NMS: more recall on small,
  rotated and turned faces for ~24 cascade passes per frame (:class:`HaarEnsembleDetector`).

No separately packaged detector qualified as an optional extra (weights inside the wheel, installs
beside torch 2.14.1 / numpy 2): MediaPipe's wheels dropped the face-detection weights in 0.10.30
(the Tasks API downloads its model) and the last ones with weights (0.10.21) require numpy < 2;
see docs/benchmarks.md, "Face detector recall".

Any callable ``frame_rgb (H, W, 3) uint8 -> (N, >=4) array`` works as a detector too (tests use
ground-truth boxes this way). Boxes are in frame pixels, x2 > x1, y2 > y1.
"""
from typing import Callable, List, Optional, Union

import numpy as np

from ldeq.video.io import load_haar_cascade

DETECTORS = ("haar", "haar-ensemble")


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
        self._clf = load_haar_cascade(cascade)
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


def nms(dets: np.ndarray, iou_threshold: float = 0.3) -> np.ndarray:
    """Greedy non-maximum suppression of (N, 5) detections by score -> the kept rows."""
    from .track import iou_matrix
    d = np.asarray(dets, dtype=np.float64).reshape(-1, 5)
    order = np.argsort(-d[:, 4], kind="stable")
    keep: List[int] = []
    for i in order:
        if not keep or iou_matrix(d[i:i + 1], d[keep]).max() < iou_threshold:
            keep.append(int(i))
    return d[sorted(keep)]


class HaarEnsembleDetector:
    """OpenCV's own cascades combined for recall (``--detector haar-ensemble``; still no dependency
    beyond opencv-python-headless, whose wheel ships the cascade files).

    Runs the frontal cascades ``default`` and ``alt2`` and the profile cascade (on the frame and
    its mirror image, so both profiles) on the frame rotated by each of ``angles`` degrees (in-plane
    rotations the upright cascades miss) and, for small faces, on the frame upscaled by
    ``upscale`` (the cascades' smallest window is 20-24 px). A detection in a rotated frame is
    mapped back by its centre, keeping its size. Overlapping detections are merged by NMS
    (IoU ``nms_iou``). About ``len(angles) * 4 * (1 + (upscale > 1))`` cascade passes per frame:
    slower than ``haar``, measured in docs/benchmarks.md ("Face detector recall").
    """

    name = "haar-ensemble"
    CASCADES = ("haarcascade_frontalface_default.xml", "haarcascade_frontalface_alt2.xml",
                "haarcascade_profileface.xml")

    def __init__(self, angles=(-30.0, 0.0, 30.0), upscale: float = 2.0, min_neighbors: int = 4,
                 min_size: int = 20, nms_iou: float = 0.3, scale_factor: float = 1.1):
        self._clfs = []
        for name in self.CASCADES:
            self._clfs.append((name, load_haar_cascade(name)))
        if not upscale >= 1:
            raise ValueError(f"upscale: expected a number >= 1, got {upscale}")
        self.angles, self.upscale = tuple(float(a) for a in angles), float(upscale)
        self.min_neighbors, self.min_size, self.nms_iou = int(min_neighbors), int(min_size), float(nms_iou)
        self.scale_factor = float(scale_factor)

    def _run(self, clf, gray, flip: bool):
        cv2 = _cv2()
        img = gray[:, ::-1].copy() if flip else gray
        faces, _, weights = clf.detectMultiScale3(img, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                                  minSize=(self.min_size, self.min_size), outputRejectLevels=True)
        if len(faces) == 0:
            return np.zeros((0, 5))
        f = np.asarray(faces, dtype=np.float64).reshape(-1, 4)
        if flip:
            f[:, 0] = img.shape[1] - f[:, 0] - f[:, 2]
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        del cv2
        return np.concatenate([f, (1.0 / (1.0 + np.exp(-w)))[:, None]], axis=1)  # x y w h score

    def __call__(self, frame_rgb: np.ndarray) -> np.ndarray:
        cv2 = _cv2()
        gray0 = cv2.cvtColor(np.ascontiguousarray(frame_rgb), cv2.COLOR_RGB2GRAY)
        H, W = gray0.shape
        scales = (1.0, self.upscale) if self.upscale > 1 else (1.0,)
        out = []
        for s in scales:
            gray = gray0 if s == 1 else cv2.resize(gray0, (int(round(W * s)), int(round(H * s))),
                                                   interpolation=cv2.INTER_LINEAR)
            h, w = gray.shape
            for angle in self.angles:
                if angle:
                    # rotate about the centre into a canvas large enough to keep every pixel
                    c, sn = abs(np.cos(np.radians(angle))), abs(np.sin(np.radians(angle)))
                    nw, nh = int(np.ceil(w * c + h * sn)), int(np.ceil(w * sn + h * c))
                    M = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
                    M[:, 2] += [(nw - w) / 2, (nh - h) / 2]
                    img = cv2.warpAffine(gray, M, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=0)
                    Minv = cv2.invertAffineTransform(M)
                else:
                    img, Minv = gray, None
                for name, clf in self._clfs:
                    for flip in ((False, True) if "profile" in name else (False,)):
                        d = self._run(clf, img, flip)
                        if not len(d):
                            continue
                        cx, cy = d[:, 0] + d[:, 2] / 2, d[:, 1] + d[:, 3] / 2
                        if Minv is not None:
                            cx, cy = (Minv[0, 0] * cx + Minv[0, 1] * cy + Minv[0, 2],
                                      Minv[1, 0] * cx + Minv[1, 1] * cy + Minv[1, 2])
                        half_w, half_h = d[:, 2] / 2, d[:, 3] / 2
                        out.append(np.stack([(cx - half_w) / s, (cy - half_h) / s, (cx + half_w) / s,
                                             (cy + half_h) / s, d[:, 4]], axis=1))
        if not out:
            return np.zeros((0, 5))
        return nms(np.concatenate(out), self.nms_iou)


def make_detector(detector: Union[str, Callable, None] = "haar", **kwargs) -> Callable:
    """'haar' | 'haar-ensemble' | a callable -> a callable ``frame_rgb -> (N, 5)`` detections."""
    if callable(detector):
        return detector
    if detector == "haar" or detector is None:
        return HaarDetector(**kwargs)
    if detector == "haar-ensemble":
        return HaarEnsembleDetector(**kwargs)
    raise ValueError(f"detector: expected one of {DETECTORS} or a callable, got {detector!r}")
