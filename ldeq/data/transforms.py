"""Image normalisation and training augmentation for 98-point face crops.

Geometric augmentation (scale, rotation, translation, horizontal flip) is an affine map in crop
pixel space composed with the crop's own affine, so every sample is warped exactly once and the
landmarks go through the very same matrix. A flip also permutes the landmark indices with the
WFLW flip permutation (left eye becomes right eye). Photometric augmentation (colour jitter, blur,
occlusion patches) leaves the landmarks untouched: occluded WFLW landmarks are still annotated.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .crop import compose_affine, transform_points, warp_image
from .topology import FLIP_PERM, NUM_LANDMARKS

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "to_tensor", "denormalize", "AugmentConfig", "Augmenter",
           "random_geometry"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = np.array(IMAGENET_MEAN, dtype=np.float32) * 255.0
_INV_STD = 1.0 / (np.array(IMAGENET_STD, dtype=np.float32) * 255.0)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 RGB ``(H, W, 3)`` -> float32 ``(3, H, W)`` ImageNet-normalised tensor."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image: expected uint8 (H, W, 3) RGB, got {img.dtype} {img.shape}")
    x = (img.astype(np.float32) - _MEAN) * _INV_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def denormalize(x: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`to_tensor`: ``(3, H, W)`` tensor -> uint8 RGB ``(H, W, 3)`` (for drawing)."""
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"x: expected a (3, H, W) tensor, got {tuple(x.shape)}")
    img = x.detach().cpu().float().numpy().transpose(1, 2, 0) / _INV_STD + _MEAN
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@dataclass
class AugmentConfig:
    """Ranges of the training augmentation. Fractions are of the crop side; angles in degrees."""
    scale: tuple = (0.9, 1.1)          # zoom factor range (>1 zooms in)
    rotation: float = 20.0             # uniform in [-rotation, rotation]
    translation: float = 0.05          # uniform shift in [-t, t] * crop side, per axis
    flip_prob: float = 0.5
    brightness: float = 0.25           # additive, fraction of 255
    contrast: float = 0.25             # multiplicative, 1 +- contrast
    saturation: float = 0.25           # blend with grey, 1 +- saturation
    hue: float = 0.03                  # fraction of the hue circle
    blur_prob: float = 0.2
    blur_sigma: tuple = (0.5, 2.0)
    occlusion_prob: float = 0.3
    occlusion_size: tuple = (0.1, 0.35)  # side range of a patch, fraction of the crop side


def random_geometry(rng: np.random.Generator, out_size: int, cfg: AugmentConfig):
    """Random affine (2x3, crop pixels -> crop pixels) and whether it flips horizontally."""
    c = (out_size - 1) / 2.0
    s = rng.uniform(*cfg.scale)
    a = math.radians(rng.uniform(-cfg.rotation, cfg.rotation))
    tx, ty = rng.uniform(-cfg.translation, cfg.translation, size=2) * out_size
    flip = bool(rng.random() < cfg.flip_prob)
    cos, sin = s * math.cos(a), s * math.sin(a)
    # Rotate/scale about the crop centre, then shift.
    m = np.array([[cos, -sin, c - cos * c + sin * c + tx], [sin, cos, c - sin * c - cos * c + ty]])
    if flip:
        m = compose_affine(np.array([[-1.0, 0.0, out_size - 1.0], [0.0, 1.0, 0.0]]), m)
    return m, flip


def _colour_jitter(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    x = img.astype(np.float32)
    if cfg.saturation > 0:
        grey = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        f = rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)
        x = grey[..., None] + f * (x - grey[..., None])
    if cfg.contrast > 0:
        f = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
        x = (x - x.mean()) * f + x.mean()
    if cfg.brightness > 0:
        x = x + rng.uniform(-cfg.brightness, cfg.brightness) * 255.0
    out = np.clip(x, 0, 255).astype(np.uint8)
    if cfg.hue > 0:
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)
        shift = int(round(rng.uniform(-cfg.hue, cfg.hue) * 180))  # OpenCV hue is 0..179
        hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + shift) % 180).astype(np.uint8)
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return out


def _occlude(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    h, w = img.shape[:2]
    side = rng.uniform(*cfg.occlusion_size, size=2) * np.array([w, h])
    x0 = int(rng.uniform(0, w - side[0]))
    y0 = int(rng.uniform(0, h - side[1]))
    x1, y1 = x0 + max(int(side[0]), 1), y0 + max(int(side[1]), 1)
    out = img.copy()
    if rng.random() < 0.5:
        out[y0:y1, x0:x1] = rng.integers(0, 256, size=3, dtype=np.uint8)
    else:
        out[y0:y1, x0:x1] = rng.integers(0, 256, size=(y1 - y0, x1 - x0, 3), dtype=np.uint8)
    return out


class Augmenter:
    """Training augmentation applied while cropping.

    ``aug(image, landmarks, matrix, out_size, rng) -> (crop uint8 (S, S, 3), landmarks (98, 2))``
    where ``image`` is the uint8 RGB source, ``landmarks`` its 98 points in source pixels and
    ``matrix`` the 2x3 source->crop affine (identity for a pre-cropped image of size ``S``).
    Returned landmarks are in crop pixels; divide by ``S`` for crop units.
    """

    def __init__(self, config: AugmentConfig | None = None):
        self.cfg = config or AugmentConfig()

    def __call__(self, image, landmarks, matrix, out_size: int, rng: np.random.Generator):
        lm = np.asarray(landmarks, dtype=np.float64)
        if lm.shape != (NUM_LANDMARKS, 2):
            raise ValueError(f"landmarks: expected shape ({NUM_LANDMARKS}, 2), got {lm.shape}")
        geo, flip = random_geometry(rng, out_size, self.cfg)
        m = compose_affine(geo, matrix)
        crop = warp_image(image, m, out_size)
        pts = transform_points(lm, m)
        if flip:
            pts = pts[FLIP_PERM]
        cfg = self.cfg
        crop = _colour_jitter(crop, rng, cfg)
        if rng.random() < cfg.blur_prob:
            crop = cv2.GaussianBlur(crop, (0, 0), rng.uniform(*cfg.blur_sigma))
        if rng.random() < cfg.occlusion_prob:
            crop = _occlude(crop, rng, cfg)
        return crop, pts
