"""``ldeq predict``: landmarks of every face in images, folders, videos and cameras.

Python API: :class:`Predictor` (``predict(image)`` -> list of :class:`Face`, ``stream(frames)`` /
``step(frame)`` for video with one RwR state per tracked face); detectors in
:mod:`ldeq.predict.detect`, the tracker in :mod:`ldeq.predict.track`. See docs/predict.md.
"""
from .detect import DETECTORS, HaarDetector, HaarEnsembleDetector, as_detections, make_detector, nms
from .predictor import Face, Predictor, as_rgb
from .track import IoUTracker, Track, iou_matrix

__all__ = ["DETECTORS", "Face", "HaarDetector", "HaarEnsembleDetector", "IoUTracker", "Predictor", "Track",
           "as_detections", "as_rgb", "iou_matrix", "make_detector", "nms"]
