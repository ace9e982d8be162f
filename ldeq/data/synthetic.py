"""Procedural synthetic faces in the 98-point WFLW topology: the no-download default dataset.

A face is a 3D point template (canonical frontal face, x right, y down, z towards the camera, in
units of the face half-width) deformed by shape/expression parameters, rotated by yaw/pitch/roll
and projected orthographically. The same projected points are both the landmarks and the polygon
vertices the renderer fills, so the landmarks sit on the drawn features by construction.

* :func:`random_face_params` draws a :class:`FaceParams` (pose, shape, expression, colours,
  lighting, clutter, occluder, blur) from a numpy Generator.
* :func:`render_face` renders explicit parameters (so the video pipeline can interpolate them
  into smooth sequences): ``-> (uint8 RGB (H, W, 3), landmarks (98, 2) in pixels)``.
* :class:`SyntheticFaces` is a deterministic-by-seed torch Dataset with train/test splits.
* :func:`export_wflw_cropped` writes the pre-cropped WFLW layout that
  :class:`ldeq.data.wflw.WFLWCropped` reads back (with synthetic test subsets by attribute).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .topology import FLIP_PERM, NUM_LANDMARKS
from .transforms import to_tensor
from .visualize import write_png

__all__ = ["FaceParams", "random_face_params", "face_landmarks", "render_face", "face_attributes",
           "interpolate_params", "SyntheticFaces", "export_wflw_cropped"]

_SHIFT = 4                     # cv2 sub-pixel bits: vertices are placed to 1/16 pixel
_ONE = float(1 << _SHIFT)


@dataclass
class FaceParams:
    """Everything a face image depends on. Lengths in face half-widths unless noted.

    Position: ``cx, cy`` face centre as a fraction of image width/height; ``size`` face
    half-width as a fraction of min(H, W). Angles in radians. Colours are RGB 0..255.
    """
    cx: float = 0.5
    cy: float = 0.5
    size: float = 0.4
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    # shape
    jaw_width: float = 1.0
    jaw_square: float = 2.2        # superellipse exponent of the jaw (2 = ellipse)
    chin: float = 1.25             # chin y below the eye line
    eye_spacing: float = 0.42
    eye_size: float = 1.0
    eye_height: float = -0.3
    brow_height: float = -0.62
    brow_thick: float = 0.09
    brow_arch: float = 0.08
    nose_length: float = 1.0
    nose_width: float = 0.2
    mouth_y: float = 0.72
    mouth_width: float = 0.36
    lip_thick: float = 0.07
    # expression
    eye_open: float = 1.0          # 0 closed .. 1.3 wide
    mouth_open: float = 0.0        # inner-lip gap
    smile: float = 0.0             # corner raise (negative: frown)
    brow_raise: float = 0.0
    gaze_x: float = 0.0            # -1..1
    gaze_y: float = 0.0
    # appearance
    skin: tuple = (200, 160, 130)
    hair: tuple = (60, 40, 30)
    brow_colour: tuple = (50, 35, 25)
    lip_colour: tuple = (170, 80, 80)
    makeup: float = 0.0            # 1: lip colour chosen as make-up (sets the make-up attribute)
    iris: tuple = (70, 90, 60)
    hair_style: int = 1            # 0 bald, 1 short, 2 long
    bg_a: tuple = (120, 130, 140)
    bg_b: tuple = (40, 50, 60)
    bg_angle: float = 0.0
    clutter: int = 6               # number of background shapes
    texture_seed: int = 0          # fixes the background clutter and skin texture
    # lighting and camera
    light_angle: float = 0.0       # direction of the light in the image plane
    light: float = 0.3             # strength of the directional shading 0..1
    ambient: float = 1.0           # overall brightness multiplier
    blur: float = 0.0              # Gaussian sigma in pixels (0 = sharp)
    noise: float = 3.0             # sensor noise std (0..255 scale)
    # occluder: 0 none, 1 hand-like ellipse, 2 rectangle, 3 sunglasses bar
    occluder: int = 0
    occ_x: float = 0.0             # centre relative to the face centre, face half-widths
    occ_y: float = 0.5
    occ_w: float = 0.5
    occ_h: float = 0.4
    occ_angle: float = 0.0
    occ_colour: tuple = (180, 140, 110)


_COLOUR_FIELDS = ("skin", "hair", "brow_colour", "lip_colour", "iris", "bg_a", "bg_b", "occ_colour")
_INT_FIELDS = ("hair_style", "clutter", "texture_seed", "occluder")


def _colour(rng, lo, hi):
    return tuple(int(v) for v in rng.integers(lo, hi, size=3))


def random_face_params(rng: np.random.Generator, size_range=(0.31, 0.39)) -> FaceParams:
    """Random pose, shape, expression, skin, lighting, clutter, occluder and blur."""
    u = rng.uniform
    tone = u(0.25, 1.0)  # skin tone from dark to light, with a random warm tint
    skin = tuple(int(np.clip(c * tone + rng.normal(0, 8), 20, 255)) for c in (235, 190, 160))
    hair_dark = u(0.1, 1.0)
    hair = tuple(int(np.clip(c * hair_dark, 5, 255)) for c in rng.choice([(90, 60, 40), (200, 170, 100),
                                                                         (60, 50, 45), (160, 80, 40)]))
    makeup = rng.random() < 0.2
    lip = _colour(rng, 120, 255) if makeup else tuple(int(np.clip(c * u(0.85, 1.05) - 30, 0, 255)) for c in skin)
    occluder = int(rng.choice([0, 1, 2, 3], p=[0.7, 0.12, 0.1, 0.08]))
    blur = float(u(1.5, 3.0)) if rng.random() < 0.15 else float(u(0.0, 0.8))
    mouth_open = float(u(0.05, 0.35)) if rng.random() < 0.35 else float(u(0.0, 0.02))
    return FaceParams(
        cx=u(0.44, 0.56), cy=u(0.5, 0.58), size=u(*size_range),
        yaw=u(-0.6, 0.6), pitch=u(-0.25, 0.25), roll=u(-0.35, 0.35),
        jaw_width=u(0.85, 1.05), jaw_square=u(1.8, 3.0), chin=u(1.1, 1.35),
        eye_spacing=u(0.36, 0.46), eye_size=u(0.8, 1.2), eye_height=u(-0.36, -0.24),
        brow_height=u(-0.7, -0.55), brow_thick=u(0.05, 0.13), brow_arch=u(0.0, 0.14),
        nose_length=u(0.85, 1.15), nose_width=u(0.15, 0.26), mouth_y=u(0.62, 0.8),
        mouth_width=u(0.28, 0.44), lip_thick=u(0.04, 0.1),
        eye_open=float(u(0.1, 0.4)) if rng.random() < 0.1 else u(0.7, 1.3),
        mouth_open=mouth_open, smile=u(-0.08, 0.16), brow_raise=u(-0.05, 0.1),
        gaze_x=u(-1, 1), gaze_y=u(-0.6, 0.6),
        skin=skin, hair=hair, brow_colour=tuple(int(c * u(0.5, 0.9)) for c in hair), lip_colour=lip,
        makeup=float(makeup), iris=_colour(rng, 20, 160), hair_style=int(rng.integers(0, 3)),
        bg_a=_colour(rng, 0, 256), bg_b=_colour(rng, 0, 256), bg_angle=u(0, 2 * math.pi),
        clutter=int(rng.integers(2, 12)), texture_seed=int(rng.integers(0, 2**31)),
        light_angle=u(0, 2 * math.pi), light=float(u(0.5, 0.8)) if rng.random() < 0.2 else u(0.0, 0.4),
        ambient=u(0.6, 1.15), blur=blur, noise=u(0.0, 6.0),
        occluder=occluder, occ_x=u(-0.8, 0.8), occ_y=u(-0.5, 1.1), occ_w=u(0.3, 0.8), occ_h=u(0.25, 0.6),
        occ_angle=u(0, math.pi), occ_colour=skin if rng.random() < 0.5 else _colour(rng, 0, 256),
    )


def interpolate_params(a: FaceParams, b: FaceParams, t: float) -> FaceParams:
    """Blend two faces for smooth video: floats and colours are mixed, integer fields come from ``a``."""
    out = {}
    for f in dataclasses.fields(FaceParams):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if f.name in _INT_FIELDS:
            out[f.name] = va
        elif f.name in _COLOUR_FIELDS:
            out[f.name] = tuple(int(round((1 - t) * x + t * y)) for x, y in zip(va, vb))
        else:
            out[f.name] = (1 - t) * va + t * vb
    return FaceParams(**out)


# ----------------------------------------------------------------------------- geometry

def _template(p: FaceParams) -> np.ndarray:
    """Canonical 3D landmarks ``(98, 3)`` of a frontal face (image-left half + mirrored right half)."""
    pts = np.zeros((NUM_LANDMARKS, 3))
    # Contour: superellipse from the left ear (at eye level) round the chin to the right ear.
    t = np.linspace(0.0, math.pi, 33)
    c, s = np.cos(t), np.sin(t)
    e = 2.0 / p.jaw_square
    y0 = p.eye_height - 0.05
    pts[:33, 0] = -np.sign(c) * np.abs(c) ** e * p.jaw_width
    pts[:33, 1] = y0 + (p.chin - y0) * np.abs(s) ** e
    pts[:33, 2] = 0.55 * s ** 4  # the chin comes forward, the rim at the ears does not
    # Left brow (33-41): upper edge outer->inner, lower edge inner->outer, thicker at the inner end.
    def brow(sv, upper):
        x = -(p.eye_spacing + 0.42) + sv * 0.6
        yc = p.brow_height - p.brow_raise - p.brow_arch * np.sin(math.pi * (0.15 + 0.7 * sv))
        th = p.brow_thick * (0.55 + 0.45 * sv)
        return x, yc - th / 2 if upper else yc + th / 2
    for i, sv in zip(range(33, 38), [0.0, 0.25, 0.5, 0.75, 1.0]):
        pts[i, :2] = brow(sv, True)
    for i, sv in zip(range(38, 42), [0.875, 0.625, 0.375, 0.125]):
        pts[i, :2] = brow(sv, False)
    pts[33:42, 2] = 0.35 + 0.1 * np.array([0, .25, .5, .75, 1, .875, .625, .375, .125])
    # Nose bridge (51-54, top to tip) and base (55-59, left to right).
    tip = 0.28 * p.nose_length
    pts[51:55, 0] = 0.0
    pts[51:55, 1] = np.linspace(p.eye_height - 0.02, tip, 4)
    pts[51:55, 2] = np.linspace(0.45, 0.9, 4)
    nw = p.nose_width
    pts[55:60, 0] = np.array([-1, -0.5, 0, 0.5, 1]) * nw
    pts[55:60, 1] = tip + 0.1 + np.array([-0.03, 0.0, 0.02, 0.0, -0.03])
    pts[55:60, 2] = np.array([0.5, 0.62, 0.7, 0.62, 0.5])
    # Left eye (60-67): 60 outer corner, 61-63 upper lid, 64 inner corner, 65-67 lower lid.
    ew = 0.19 * p.eye_size
    up, lo = 0.1 * p.eye_size * p.eye_open, 0.07 * p.eye_size * p.eye_open
    phi = np.array([math.pi, 0.75 * math.pi, 0.5 * math.pi, 0.25 * math.pi, 0.0])
    ex = -p.eye_spacing
    pts[60:65, 0] = ex + ew * np.cos(phi)
    pts[60:65, 1] = p.eye_height - up * np.sin(phi) ** 0.8
    phi_lo = np.array([0.25 * math.pi, 0.5 * math.pi, 0.75 * math.pi])
    pts[65:68, 0] = ex + ew * np.cos(phi_lo)
    pts[65:68, 1] = p.eye_height + lo * np.sin(phi_lo) ** 0.8
    pts[60:68, 2] = 0.32
    # Left pupil (96), moved by the gaze within the eye opening.
    pts[96] = (ex + 0.45 * ew * p.gaze_x, p.eye_height + 0.25 * (up + lo) * p.gaze_y - 0.15 * (up - lo), 0.36)
    # Mouth: outer (76-87) and inner (88-95) lips; the smile lifts and curves the corners.
    mw, my, op, lt = p.mouth_width, p.mouth_y, p.mouth_open, p.lip_thick
    def lift(x):
        return -p.smile * (np.asarray(x) / mw) ** 2
    xs_up = mw * np.array([-0.62, -0.28, 0.0])
    bow = np.array([0.75, 1.0, 0.7])  # Cupid's bow: peaks either side of the middle dip
    pts[76, :2] = (-mw, my + lift(-mw))
    pts[77:80, 0] = xs_up
    pts[77:80, 1] = my - op / 2 - lt * bow + lift(xs_up)
    xs_lo = mw * np.array([0.0, -0.32, -0.66])  # 85 middle, 86, 87 towards the left corner
    pts[85:88, 0] = xs_lo
    pts[85:88, 1] = my + op / 2 + 1.3 * lt * np.array([1.0, 0.9, 0.6]) + lift(xs_lo)
    pts[88, :2] = (-0.86 * mw, my + lift(-0.86 * mw))
    xs_in = mw * np.array([-0.42, 0.0])
    pts[89:91, 0] = xs_in
    pts[89:91, 1] = my - op / 2 + lift(xs_in) * 0.8
    pts[94:96, 0] = mw * np.array([0.0, -0.42])
    pts[94:96, 1] = my + op / 2 + lift(pts[94:96, 0]) * 0.8
    pts[76:96, 2] = 0.5 + 0.1 * np.cos(pts[76:96, 0] / mw * math.pi / 2)
    # Right half: mirror of the left half through the flip permutation (midline points map to themselves).
    right = np.array(sorted(set(range(17, 33)) | set(range(42, 51)) | set(range(68, 76))
                            | {80, 81, 82, 83, 84, 91, 92, 93, 97}))
    pts[right] = pts[FLIP_PERM[right]] * np.array([-1.0, 1.0, 1.0])
    return pts


def _rotation(p: FaceParams) -> np.ndarray:
    cy, sy = math.cos(p.yaw), math.sin(p.yaw)
    cp, sp = math.cos(p.pitch), math.sin(p.pitch)
    cr, sr = math.cos(p.roll), math.sin(p.roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ rx @ ry


def _project(p: FaceParams, pts3: np.ndarray, shape) -> np.ndarray:
    h, w = shape
    unit = p.size * min(h, w)
    # Why the offset of the eye line: the face centre is mid-way between brows and chin.
    centred = pts3 - np.array([0.0, 0.35, 0.0])
    rot = centred @ _rotation(p).T
    return rot[:, :2] * unit + np.array([p.cx * (w - 1), p.cy * (h - 1)])


def face_landmarks(p: FaceParams, size=256) -> np.ndarray:
    """The 98 landmarks ``(98, 2)`` in pixels of an image of ``size`` (int or ``(H, W)``)."""
    return _project(p, _template(p), _shape(size))


def _shape(size):
    if np.isscalar(size):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


# ----------------------------------------------------------------------------- drawing

@functools.lru_cache(maxsize=4)
def _noise_bank(h: int, w: int):
    """Fixed random textures reused by every image (cropped at random offsets): cheap and deterministic."""
    r = np.random.default_rng(12345)
    smooth = cv2.GaussianBlur(r.standard_normal((2 * h, 2 * w)).astype(np.float32), (0, 0), 3.0)
    smooth /= smooth.std() + 1e-6
    # Sensor noise stored as uint8 around 128 with std 32, so cv2.addWeighted can apply it in one pass.
    fine = np.clip(128 + 32 * r.standard_normal((2 * h, 2 * w, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return smooth, fine, xx, yy


def _poly(img, pts, colour, closed=True):
    q = np.round(np.asarray(pts) * _ONE).astype(np.int32).reshape(-1, 1, 2)
    if closed:
        cv2.fillPoly(img, [q], colour, cv2.LINE_AA, _SHIFT)
    return q


def _line(img, pts, colour, thickness, closed=False):
    q = np.round(np.asarray(pts) * _ONE).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(img, [q], closed, colour, max(1, int(round(thickness))), cv2.LINE_AA, _SHIFT)


def _ellipse(img, centre, axes, angle_deg, colour, thickness=-1):
    c = tuple(int(round(v * _ONE)) for v in centre)
    a = tuple(max(1, int(round(v * _ONE))) for v in axes)
    cv2.ellipse(img, c, a, angle_deg, 0, 360, colour, thickness, cv2.LINE_AA, _SHIFT)


def _shade(colour, f):
    return tuple(int(np.clip(c * f, 0, 255)) for c in colour)


def _background(img, p: FaceParams, rng_tex, xx, yy):
    h, w = img.shape[:2]
    # A linear gradient is computed on a 9x9 grid and bilinearly upsampled (exact for a linear ramp).
    g = np.linspace(0.0, 1.0, 9, dtype=np.float32)
    d = math.cos(p.bg_angle) * g[None, :] + math.sin(p.bg_angle) * g[:, None]
    d = (d - d.min()) / (np.ptp(d) + 1e-6)
    a, b = np.array(p.bg_a, np.float32), np.array(p.bg_b, np.float32)
    small = np.clip(a + d[..., None] * (b - a), 0, 255).astype(np.uint8)
    img[:] = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    s = min(h, w)
    for _ in range(p.clutter):
        col = tuple(int(v) for v in rng_tex.integers(0, 256, 3))
        kind = rng_tex.integers(0, 4)
        x, y = rng_tex.uniform(0, w), rng_tex.uniform(0, h)
        r = rng_tex.uniform(0.03, 0.25) * s
        if kind == 0:
            cv2.rectangle(img, (int(x - r), int(y - r * rng_tex.uniform(0.3, 1.5))), (int(x + r), int(y + r)), col, -1)
        elif kind == 1:
            cv2.circle(img, (int(x), int(y)), int(r), col, -1, cv2.LINE_AA)
        elif kind == 2:
            x2, y2 = rng_tex.uniform(0, w), rng_tex.uniform(0, h)
            cv2.line(img, (int(x), int(y)), (int(x2), int(y2)), col, int(rng_tex.integers(1, 8)), cv2.LINE_AA)
        else:
            pts = np.array([x, y]) + rng_tex.uniform(-r, r, size=(int(rng_tex.integers(3, 6)), 2))
            cv2.fillPoly(img, [pts.astype(np.int32)], col, cv2.LINE_AA)


def _skin_outline(p: FaceParams, rot_unit, offset, lm):
    """Face polygon: the landmark contour closed by a forehead arc (not landmarks) over the brows."""
    t = np.linspace(0.0, math.pi, 13)[1:-1]
    y0 = p.eye_height - 0.05
    top = -1.15
    arc = np.stack([np.cos(t) * p.jaw_width, y0 + (top - y0) * np.sin(t) ** 0.7, 0.25 * np.sin(t)], axis=1)
    arc2 = (arc - np.array([0.0, 0.35, 0.0])) @ rot_unit.T
    return np.concatenate([lm[:33], arc2[:, :2] + offset])


def render_face(params: FaceParams, size=256, rng: np.random.Generator | None = None):
    """Render one face.

    Args:
        params: a :class:`FaceParams` (e.g. from :func:`random_face_params`).
        size: image side (int) or ``(H, W)``.
        rng: sensor noise source; ``None`` derives it from ``params.texture_seed`` (same params,
            same image).
    Returns:
        ``(image, landmarks)``: uint8 RGB ``(H, W, 3)`` and float64 ``(98, 2)`` pixel coordinates
        (pixel-centre convention: pixel ``i`` spans ``[i - 0.5, i + 0.5]``).
    """
    if not isinstance(params, FaceParams):
        raise TypeError(f"params: expected FaceParams, got {type(params).__name__}")
    h, w = _shape(size)
    if h < 16 or w < 16:
        raise ValueError(f"size: expected at least 16x16 pixels, got {(h, w)}")
    p = params
    smooth, fine, xx, yy = _noise_bank(h, w)
    rng_tex = np.random.default_rng(p.texture_seed)
    if rng is None:
        rng = np.random.default_rng(p.texture_seed + 1)
    pts3 = _template(p)
    lm = _project(p, pts3, (h, w))
    unit = p.size * min(h, w)
    rot = _rotation(p)
    rot_unit = rot * unit
    offset = np.array([p.cx * (w - 1), p.cy * (h - 1)])

    def proj(q3):  # template-space points -> pixels
        return (np.atleast_2d(np.asarray(q3, dtype=np.float64)) - np.array([0.0, 0.35, 0.0])) @ rot_unit.T[:, :2] + offset

    img = np.empty((h, w, 3), np.uint8)
    _background(img, p, rng_tex, xx, yy)

    # Head behind the face: neck, hair volume and ears.
    neck = proj([[-0.55, 0.9, -0.3], [0.55, 0.9, -0.3], [0.65, 2.6, -0.3], [-0.65, 2.6, -0.3]])
    _poly(img, neck, _shade(p.skin, 0.75))
    head_c = proj([0.0, -0.35, -0.3])[0]
    ang = math.degrees(p.roll)
    if p.hair_style == 2:
        _poly(img, proj([[-1.25, -0.5, -0.5], [1.25, -0.5, -0.5], [1.35, 1.6, -0.5], [-1.35, 1.6, -0.5]]), p.hair)
    for side in (-1, 1):
        ear = proj([side * p.jaw_width * 0.98, p.eye_height + 0.15, -0.1])[0]
        _ellipse(img, ear, (0.13 * unit * abs(math.cos(p.yaw)) + 1, 0.25 * unit), ang, _shade(p.skin, 0.85))
    if p.hair_style > 0:
        _ellipse(img, head_c, (1.12 * unit * p.jaw_width, 1.05 * unit), ang, p.hair)

    # Skin, drawn into a mask so shading and texture apply to the face only.
    face_poly = _skin_outline(p, rot_unit, offset, lm)
    mask = np.zeros((h, w), np.uint8)
    _poly(mask, face_poly, 255)
    x0, y0 = np.floor(face_poly.min(0)).astype(int) - 2
    x1, y1 = np.ceil(face_poly.max(0)).astype(int) + 3
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 > x0 and y1 > y0:
        ox, oy = rng_tex.integers(0, w), rng_tex.integers(0, h)
        sub_x, sub_y = xx[y0:y1, x0:x1], yy[y0:y1, x0:x1]
        # Lambert-like shading: a directional gradient plus darkening towards the rim.
        dx, dy = (sub_x - offset[0]) / unit, (sub_y - offset[1] - 0.2 * unit) / unit
        lit = 1.0 + 0.35 * p.light * (math.cos(p.light_angle) * dx + math.sin(p.light_angle) * dy)
        rim = 1.0 - 0.18 * np.clip(dx * dx / 1.1 + dy * dy / 2.2, 0, 1.5)
        tex = smooth[oy:oy + y1 - y0, ox:ox + x1 - x0]
        fac = lit * rim * (1.0 + 0.025 * tex)
        skin = cv2.merge([cv2.convertScaleAbs(fac, alpha=float(c)) for c in p.skin])  # saturating uint8
        a = mask[y0:y1, x0:x1].astype(np.float32) * (1.0 / 255.0)
        img[y0:y1, x0:x1] = cv2.blendLinear(skin, img[y0:y1, x0:x1], a, 1.0 - a)
    if p.hair_style > 0:  # fringe over the top of the forehead
        t = np.linspace(0.0, math.pi, 11)
        hairline = np.stack([np.cos(t) * p.jaw_width * 1.03, -0.98 + 0.45 * (1 - np.sin(t)) ** 2, 0.1 * np.sin(t)], 1)
        crown = np.stack([np.cos(t[::-1]) * p.jaw_width * 1.08, -1.3 - 0.2 * np.sin(t[::-1]), 0 * t], 1)
        _poly(img, proj(np.concatenate([hairline, crown])), p.hair)

    dark = _shade(p.skin, 0.55)
    # Nose: bridge shadow on the side away from the light, nostrils and the base curve.
    side = 1 if math.cos(p.light_angle) < 0 else -1
    bridge = lm[51:55] + side * 0.03 * unit * np.array([math.cos(p.roll), math.sin(p.roll)])
    _line(img, bridge, _shade(p.skin, 0.8), 0.025 * unit)
    _line(img, lm[55:60], dark, 0.02 * unit)
    for i in (56, 58):
        _ellipse(img, lm[i] + (lm[57] - lm[i]) * 0.1 + np.array([0, -0.015 * unit]),
                 (0.035 * unit, 0.018 * unit), math.degrees(p.roll), _shade(p.skin, 0.35))

    # Eyes: sclera, iris and pupil clipped to the lid polygon, then lid lines.
    for idx, pupil in ((slice(60, 68), 96), (slice(68, 76), 97)):
        eye = lm[idx]
        ex0, ey0 = np.floor(eye.min(0)).astype(int) - 2
        ex1, ey1 = np.ceil(eye.max(0)).astype(int) + 3
        ex0, ey0, ex1, ey1 = max(ex0, 0), max(ey0, 0), min(ex1, w), min(ey1, h)
        if ex1 > ex0 and ey1 > ey0:
            roi = img[ey0:ey1, ex0:ex1]
            local = eye - np.array([ex0, ey0])
            emask = np.zeros(roi.shape[:2], np.uint8)
            _poly(emask, local, 255)
            layer = np.empty_like(roi)
            layer[:] = (235, 232, 225)
            r_iris = 0.085 * unit * p.eye_size
            c = lm[pupil] - np.array([ex0, ey0])
            _ellipse(layer, c, (r_iris, r_iris), 0, p.iris)
            _ellipse(layer, c, (0.45 * r_iris, 0.45 * r_iris), 0, (15, 10, 10))
            _ellipse(layer, c + np.array([-0.3, -0.3]) * r_iris, (0.15 * r_iris, 0.15 * r_iris), 0, (250, 250, 250))
            a = emask[..., None].astype(np.float32) * (1.0 / 255.0)
            roi[:] = (roi * (1 - a) + layer * a).astype(np.uint8)
        _line(img, eye[:5], (30, 20, 20), 0.03 * unit)     # upper lid with lashes
        _line(img, np.concatenate([eye[4:], eye[:1]]), _shade(p.skin, 0.5), 0.012 * unit)

    # Brows.
    _poly(img, lm[33:42], p.brow_colour)
    _poly(img, lm[42:51], p.brow_colour)

    # Mouth: lips, then the dark opening (or the lip line when closed).
    _poly(img, lm[76:88], p.lip_colour)
    inner = lm[88:96]
    if p.mouth_open > 0.03:
        _poly(img, inner, (60, 20, 25))
        teeth = np.concatenate([inner[:5], inner[:5][::-1] + np.array([0, 0.35]) * (inner[6] - inner[2])])
        _poly(img, teeth, (225, 222, 210))
    _line(img, inner[:5], _shade(p.lip_colour, 0.45), 0.012 * unit)

    # Occluder over the face (landmarks stay annotated, as in WFLW).
    if p.occluder:
        oc = proj([p.occ_x, p.occ_y + 0.35, 0.8])[0]
        axes = (p.occ_w * unit, p.occ_h * unit)
        if p.occluder == 1:
            _ellipse(img, oc, axes, math.degrees(p.occ_angle), p.occ_colour)
        elif p.occluder == 2:
            box = cv2.boxPoints(((oc[0], oc[1]), (2 * axes[0], 2 * axes[1]), math.degrees(p.occ_angle)))
            _poly(img, box, p.occ_colour)
        else:
            for i in (96, 97):
                _ellipse(img, lm[i], (0.24 * unit, 0.16 * unit), math.degrees(p.roll), (20, 20, 25))
            _line(img, lm[[96, 97]], (20, 20, 25), 0.04 * unit)

    # Camera: global exposure, blur and sensor noise.
    if p.blur > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), p.blur)
    if p.noise > 0:
        ox, oy = rng.integers(0, w), rng.integers(0, h)
        k = p.noise / 32.0  # the bank's std is 32 around 128
        img = cv2.addWeighted(img, p.ambient, fine[oy:oy + h, ox:ox + w], k, -128.0 * k)
    elif p.ambient != 1.0:
        img = cv2.convertScaleAbs(img, alpha=p.ambient)
    return img, lm


def face_attributes(p: FaceParams) -> np.ndarray:
    """WFLW-style 0/1 flags (pose, expression, illumination, make-up, occlusion, blur) of a synthetic face."""
    return np.array([
        abs(p.yaw) > 0.5 or abs(p.pitch) > 0.22 or abs(p.roll) > 0.32,
        p.mouth_open > 0.15 or abs(p.smile) > 0.12 or p.eye_open < 0.5,
        p.light > 0.5 or p.ambient < 0.7,
        p.makeup > 0.5,
        p.occluder != 0,
        p.blur > 1.5,
    ], dtype=np.int64)


_SPLIT_CODE = {"train": 0, "test": 1}


class SyntheticFaces(Dataset):
    """Deterministic synthetic faces: sample ``i`` of ``(seed, split)`` is always the same image.

    Returns ``(image, landmarks)``: float32 ``(3, S, S)`` ImageNet-normalised and float32 ``(98, 2)``
    in crop units (pixels / S). With ``augment`` (an :class:`ldeq.data.transforms.Augmenter`) the
    rendered face is further augmented with torch-seeded randomness. ``cache=True`` keeps rendered
    uint8 images in memory (``S*S*3`` bytes each) so later epochs skip rendering.
    """

    def __init__(self, split: str = "train", size: int = 1000, seed: int = 0, out_size: int = 256,
                 augment=None, cache: bool = False):
        if split not in _SPLIT_CODE:
            raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
        if size < 1:
            raise ValueError(f"size: expected a positive number of samples, got {size}")
        self.split, self.n, self.seed, self.out_size, self.augment = split, int(size), int(seed), int(out_size), augment
        self._cache = {} if cache else None

    def __len__(self):
        return self.n

    def params(self, index: int) -> FaceParams:
        return random_face_params(np.random.default_rng([self.seed, _SPLIT_CODE[self.split], index]))

    def attributes(self) -> np.ndarray:
        """``(N, 6)`` WFLW-style flags of every sample (from the parameters, nothing is rendered)."""
        return np.stack([face_attributes(self.params(i)) for i in range(self.n)])

    def split_indices(self) -> dict:
        """``{'test': all indices, 'test_largepose': ..., ...}``: the WFLW test subsets by attribute."""
        from .wflw import TEST_SUBSETS

        flags = self.attributes()
        out = {"test": np.arange(self.n)}
        out.update({name: np.flatnonzero(flags[:, k]) for name, k in TEST_SUBSETS.items()})
        return out

    def render(self, index: int):
        """``(uint8 image (S, S, 3), landmarks (98, 2) pixels)`` of sample ``index`` (no augmentation)."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        p = self.params(index)
        out = render_face(p, self.out_size, np.random.default_rng([self.seed, _SPLIT_CODE[self.split], index, 1]))
        if self._cache is not None:
            self._cache[index] = out
        return out

    def __getitem__(self, index):
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} samples")
        img, lm = self.render(index)
        if self.augment is not None:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
            img, lm = self.augment(img, lm, np.eye(3)[:2], self.out_size, rng)
        return to_tensor(img), torch.from_numpy((lm / self.out_size).astype(np.float32))


def export_wflw_cropped(root, n_train: int = 200, n_test: int = 100, seed: int = 0, out_size: int = 256,
                        progress: bool = True) -> dict:
    """Write synthetic faces in the pre-cropped WFLW layout under ``root``.

    Creates ``train.txt``/``train/``, ``test.txt``/``test/`` and the six ``test_<attribute>.txt``
    lists (their lines point at the images in ``test/``, chosen by :func:`face_attributes`).
    Files are written atomically and ``test.txt`` last, so its presence marks a complete export.
    Images are PNG (lossless). Returns ``{split: number of images}``.
    """
    from tqdm import tqdm

    from .wflw import TEST_SUBSETS, write_cropped_list

    root = os.fspath(root)
    counts = {}
    subsets = {name: [] for name in TEST_SUBSETS}
    for split, n in (("train", n_train), ("test", n_test)):
        ds = SyntheticFaces(split, n, seed, out_size)
        os.makedirs(os.path.join(root, split), exist_ok=True)
        entries = []
        for i in tqdm(range(n), desc=f"synthetic {split}", disable=not progress):
            name = f"{i:06d}.png"
            img, lm = ds.render(i)
            write_png(os.path.join(root, split, name), img)
            entries.append((name, lm / out_size))
            if split == "test":
                flags = face_attributes(ds.params(i))
                for sub, k in TEST_SUBSETS.items():
                    if flags[k]:
                        subsets[sub].append((f"test/{name}", lm / out_size))
        if split == "test":
            for sub, sub_entries in subsets.items():
                if sub_entries:  # an empty list file would not be a valid split
                    write_cropped_list(os.path.join(root, f"{sub}.txt"), sub_entries)
                counts[sub] = len(sub_entries)
        # test.txt is written last, so its presence means a complete export.
        write_cropped_list(os.path.join(root, f"{split}.txt"), entries)
        counts[split] = n
    return counts
