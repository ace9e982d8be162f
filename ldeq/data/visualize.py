"""Drawing landmarks for inspection: predicted vs ground-truth points on crops, and image grids (PNG)."""
from __future__ import annotations

import os

import cv2
import numpy as np

from .._io import atomic_save

__all__ = ["draw_landmarks", "landmark_grid", "write_png"]

GT_COLOUR = (0, 255, 0)      # RGB green
PRED_COLOUR = (255, 40, 40)  # RGB red


def _to_uint8(image) -> np.ndarray:
    if hasattr(image, "detach"):  # a normalised (3, H, W) tensor from the datasets
        from .transforms import denormalize
        return denormalize(image)
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image: expected uint8 (H, W, 3) RGB or a (3, H, W) tensor, got {img.dtype} {img.shape}")
    return img


def draw_landmarks(image, landmarks, colour=GT_COLOUR, radius: int = 1, units: str = "crop") -> np.ndarray:
    """Copy of ``image`` with ``landmarks`` ``(K, 2)`` drawn as dots.

    ``units='crop'``: landmarks in [0, 1] crop units (times the image side); ``'pixels'``: pixels.
    """
    img = _to_uint8(image).copy()
    pts = np.asarray(landmarks.detach().cpu() if hasattr(landmarks, "detach") else landmarks, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"landmarks: expected shape (K, 2), got {pts.shape}")
    if units == "crop":
        pts = pts * np.array([img.shape[1], img.shape[0]])
    elif units != "pixels":
        raise ValueError(f"units: expected 'crop' or 'pixels', got {units!r}")
    for x, y in pts:
        if np.isfinite(x) and np.isfinite(y):
            cv2.circle(img, (int(round(x * 16)), int(round(y * 16))), radius * 16, tuple(int(c) for c in colour),
                       -1, cv2.LINE_AA, 4)
    return img


def write_png(path, image) -> str:
    """Write an RGB uint8 image as PNG atomically (temp file + rename)."""
    path = os.fspath(path)
    bgr = cv2.cvtColor(_to_uint8(image), cv2.COLOR_RGB2BGR)

    def _write(tmp):
        if not cv2.imwrite(tmp, bgr):
            raise OSError(f"could not write {path}")
    return atomic_save(path, _write, suffix=".png")


def landmark_grid(images, gts=None, preds=None, ncols: int = 4, path=None) -> np.ndarray:
    """Tile crops with ground truth (green) and predictions (red), landmarks in crop units.

    Args:
        images: sequence of uint8 ``(S, S, 3)`` RGB crops or normalised ``(3, S, S)`` tensors.
        gts, preds: optional sequences of ``(K, 2)`` landmarks in crop units, one per image.
        ncols: tiles per row. path: if given, the grid is also written there as PNG.
    Returns:
        the grid, uint8 RGB.
    """
    tiles = []
    for i, im in enumerate(images):
        t = _to_uint8(im)
        if gts is not None:
            t = draw_landmarks(t, gts[i], GT_COLOUR)
        if preds is not None:
            t = draw_landmarks(t, preds[i], PRED_COLOUR)
        tiles.append(t)
    if not tiles:
        raise ValueError("images: expected at least one image")
    h, w = tiles[0].shape[:2]
    if any(t.shape[:2] != (h, w) for t in tiles):
        raise ValueError("images: all crops must have the same size")
    ncols = max(1, min(ncols, len(tiles)))
    nrows = -(-len(tiles) // ncols)
    grid = np.zeros((nrows * h, ncols * w, 3), np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, ncols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = t
    if path is not None:
        write_png(path, grid)
    return grid
