"""Square-box face crop shared by the WFLW loader (original layout) and the video pipeline.

A face box ``(x1, y1, x2, y2)`` becomes a square of side ``max(w, h) * scale`` centred on the box,
which is warped to ``out_size x out_size``. Affine matrices are 2x3 float64 numpy arrays mapping
source pixel coordinates to crop pixel coordinates (``[u, v] = M @ [x, y, 1]``), in OpenCV's
pixel-centre convention (pixel ``i`` covers ``[i - 0.5, i + 0.5]``). Landmarks in "crop units"
are crop pixels divided by ``out_size``, the unit of the model's soft-argmax decode.
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ["square_crop_affine", "warp_image", "transform_points", "invert_affine", "compose_affine"]


def _as_affine(matrix, name: str = "matrix") -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape == (3, 3):
        m = m[:2]
    if m.shape != (2, 3):
        raise ValueError(f"{name}: expected a 2x3 (or 3x3) affine matrix, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError(f"{name}: affine matrix has non-finite entries: {m.tolist()}")
    return m


def square_crop_affine(bbox, out_size: int = 256, scale: float = 1.2) -> np.ndarray:
    """Affine map from image pixels to an ``out_size`` square crop around ``bbox``.

    Args:
        bbox: ``(x1, y1, x2, y2)`` face box in image pixels (4 finite numbers, x2 > x1, y2 > y1).
        out_size: side of the output crop in pixels.
        scale: the square's side is ``max(x2 - x1, y2 - y1) * scale``.
    Returns:
        ``(2, 3)`` float64 matrix ``M``; the box centre maps to the crop centre
        ``((out_size - 1) / 2, (out_size - 1) / 2)``.
    """
    b = np.asarray(bbox, dtype=np.float64).reshape(-1)
    if b.shape != (4,):
        raise ValueError(f"bbox: expected 4 numbers (x1, y1, x2, y2), got shape {np.shape(bbox)}")
    if not np.isfinite(b).all():
        raise ValueError(f"bbox: expected finite numbers, got {b.tolist()}")
    x1, y1, x2, y2 = b
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"bbox: expected x2 > x1 and y2 > y1, got {b.tolist()}")
    if out_size < 1 or scale <= 0:
        raise ValueError(f"out_size must be >= 1 and scale > 0, got out_size={out_size}, scale={scale}")
    side = max(x2 - x1, y2 - y1) * scale
    s = out_size / side
    # Why (out_size - 1) / 2: in the pixel-centre convention the crop spans [-0.5, out_size - 0.5],
    # so its centre is (out_size - 1) / 2, which keeps the crop symmetric about the box centre.
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    c_out = (out_size - 1) / 2.0
    return np.array([[s, 0.0, c_out - s * cx], [0.0, s, c_out - s * cy]], dtype=np.float64)


def compose_affine(outer, inner) -> np.ndarray:
    """``outer o inner`` as a 2x3 matrix: first apply ``inner``, then ``outer``."""
    a = np.vstack([_as_affine(outer, "outer"), [0.0, 0.0, 1.0]])
    b = np.vstack([_as_affine(inner, "inner"), [0.0, 0.0, 1.0]])
    return (a @ b)[:2]


def invert_affine(matrix) -> np.ndarray:
    """Inverse of a 2x3 affine map (raises ``ValueError`` if it is singular)."""
    m = _as_affine(matrix)
    det = np.linalg.det(m[:, :2])
    if abs(det) < 1e-12:
        raise ValueError(f"matrix: affine map is singular (det={det:g})")
    inv = np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))
    return inv[:2]


def transform_points(points, matrix) -> np.ndarray:
    """Apply a 2x3 affine map to points of shape ``(..., 2)``; returns float64 of the same shape."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim == 0 or p.shape[-1] != 2:
        raise ValueError(f"points: expected shape (..., 2), got {p.shape}")
    m = _as_affine(matrix)
    return p @ m[:, :2].T + m[:, 2]


def warp_image(image, matrix, out_size=256, border_value=0, interpolation=cv2.INTER_LINEAR) -> np.ndarray:
    """Warp ``image`` (H, W[, C] numpy array) by a 2x3 map into an ``out_size`` crop.

    ``out_size`` is an int (square) or ``(width, height)``. Pixels outside the source are filled
    with ``border_value`` (constant border), as for a face near the image edge.
    """
    img = np.asarray(image)
    if img.ndim not in (2, 3) or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"image: expected a non-empty (H, W) or (H, W, C) array, got shape {img.shape}")
    size = (int(out_size), int(out_size)) if np.isscalar(out_size) else tuple(int(v) for v in out_size)
    m = _as_affine(matrix)
    if img.ndim == 3 and np.isscalar(border_value):
        border_value = (border_value,) * min(img.shape[2], 4)
    return cv2.warpAffine(img, m, size, flags=interpolation, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=border_value)
