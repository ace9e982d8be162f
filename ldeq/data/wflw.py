"""WFLW loaders for both published layouts (reference section 6).

Pre-cropped layout (``WFLWCropped``)::

    ROOT/<split>.txt        one line per image: relative path, then 196 floats x0 y0 ... x97 y97
    ROOT/<split>/...        the 256x256 crops; landmarks in [0, 1] of the crop

The image path is looked up as ``ROOT/<split>/<path>`` first, then ``ROOT/<path>``.

Original layout (``WFLWOriginal``)::

    ROOT/WFLW_images/<event folder>/<name>.jpg
    ROOT/WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_{train,test}.txt
    207 fields a line: 196 floats (pixel x, y of 98 points), 4 ints box x_min y_min x_max y_max,
    6 flags (pose, expression, illumination, make-up, occlusion, blur), image path

Original images are cropped on the fly with :func:`ldeq.data.crop.square_crop_affine` (the
video pipeline's crop). Test subsets of the original layout are the test images whose attribute
flag is set. Both datasets return ``(image, landmarks)``: a float32 ``(3, S, S)`` ImageNet-normalised
tensor and float32 ``(98, 2)`` landmarks in crop units (crop pixels / S).
"""
from __future__ import annotations

import os

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .._io import atomic_write_text
from .crop import square_crop_affine, transform_points, warp_image
from .topology import NUM_LANDMARKS
from .transforms import to_tensor

__all__ = ["SPLITS", "TEST_SUBSETS", "ATTRIBUTES", "WFLWFormatError", "read_cropped_list", "read_annotation_list",
           "write_cropped_list", "read_image", "WFLWCropped", "WFLWOriginal", "wflw_dataset", "detect_layout"]

ATTRIBUTES = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")
# Test subset name -> index of its attribute flag in the original annotation line.
TEST_SUBSETS = {"test_largepose": 0, "test_expression": 1, "test_illumination": 2, "test_makeup": 3,
                "test_occlusion": 4, "test_blur": 5}
SPLITS = ("train", "test") + tuple(TEST_SUBSETS)
ANNOTATION_DIR = os.path.join("WFLW_annotations", "list_98pt_rect_attr_train_test")
IMAGE_DIR = "WFLW_images"
_NCOORD = 2 * NUM_LANDMARKS
_NORIG = _NCOORD + 4 + 6 + 1


class WFLWFormatError(ValueError):
    """A list file or image that does not follow the published format; names file and line."""


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {list(SPLITS)}, got {split!r}")


def _floats(fields, path, lineno, what):
    try:
        v = np.array([float(f) for f in fields], dtype=np.float64)
    except ValueError as e:
        raise WFLWFormatError(f"{path}:{lineno}: {what}: {e}") from None
    if not np.isfinite(v).all():
        raise WFLWFormatError(f"{path}:{lineno}: {what}: NaN or inf value")
    return v


def _read_lines(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"WFLW list file not found: {path}")
    try:
        with open(path, "r", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise WFLWFormatError(f"{path}: not a text file ({e})") from None
    return [(i + 1, ln.strip()) for i, ln in enumerate(lines) if ln.strip()]


def read_cropped_list(path):
    """Parse a pre-cropped list. Returns a list of ``(relative path, (98, 2) landmarks, line number)``."""
    out = []
    for lineno, line in _read_lines(path):
        fields = line.split()
        if len(fields) != 1 + _NCOORD:
            raise WFLWFormatError(f"{path}:{lineno}: expected {1 + _NCOORD} fields (image path + {_NCOORD} "
                                  f"coordinates), got {len(fields)}")
        lm = _floats(fields[1:], path, lineno, "landmark coordinates").reshape(NUM_LANDMARKS, 2)
        out.append((fields[0], lm, lineno))
    if not out:
        raise WFLWFormatError(f"{path}: list file is empty")
    return out


def read_annotation_list(path):
    """Parse an original-layout annotation list.

    Returns a list of dicts with keys ``landmarks`` (98, 2) pixels, ``bbox`` (4,) x_min y_min x_max
    y_max, ``attributes`` (6,) int flags in :data:`ATTRIBUTES` order, ``path`` and ``line``.
    """
    out = []
    for lineno, line in _read_lines(path):
        fields = line.split()
        if len(fields) != _NORIG:
            raise WFLWFormatError(f"{path}:{lineno}: expected {_NORIG} fields (196 coordinates, 4 box, "
                                  f"6 attributes, image path), got {len(fields)}")
        lm = _floats(fields[:_NCOORD], path, lineno, "landmark coordinates").reshape(NUM_LANDMARKS, 2)
        box = _floats(fields[_NCOORD:_NCOORD + 4], path, lineno, "face box")
        if box[2] <= box[0] or box[3] <= box[1]:
            raise WFLWFormatError(f"{path}:{lineno}: face box must have x_max > x_min and y_max > y_min, "
                                  f"got {box.tolist()}")
        attrs = fields[_NCOORD + 4:_NCOORD + 10]
        if any(a not in ("0", "1") for a in attrs):
            raise WFLWFormatError(f"{path}:{lineno}: attribute flags must be 0 or 1, got {attrs}")
        out.append({"landmarks": lm, "bbox": box, "attributes": np.array([int(a) for a in attrs]),
                    "path": fields[-1], "line": lineno})
    if not out:
        raise WFLWFormatError(f"{path}: list file is empty")
    return out


def write_cropped_list(path, entries) -> None:
    """Write ``[(relative path, (98, 2) landmarks in [0, 1])]`` as a pre-cropped list (atomic)."""
    lines = []
    for rel, lm in entries:
        lm = np.asarray(lm, dtype=np.float64).reshape(-1)
        if lm.size != _NCOORD or " " in rel:
            raise ValueError(f"entry {rel!r}: expected a path without spaces and {_NCOORD} coordinates")
        lines.append(rel + " " + " ".join(f"{v:.6f}" for v in lm) + "\n")
    atomic_write_text(path, "".join(lines))


def read_image(path, source: str = "") -> np.ndarray:
    """Read an image as uint8 RGB ``(H, W, 3)``; ``source`` (e.g. ``list.txt:12``) goes in errors."""
    where = f" (listed at {source})" if source else ""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}{where}")
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise WFLWFormatError(f"image could not be decoded: {path}{where}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class _CropDataset(Dataset):
    """Shared ``__getitem__``: load source image + landmarks + affine, crop (with optional augmentation)."""

    out_size: int
    augment = None

    def _load(self, index):  # -> image uint8 RGB, landmarks (98, 2) source pixels, 2x3 source->crop
        raise NotImplementedError

    def crop(self, index, rng=None):
        """``(crop uint8 (S, S, 3), landmarks (98, 2) in crop pixels)``, augmented when configured."""
        image, lm, m = self._load(index)
        if self.augment is not None:
            if rng is None:  # seeded from torch so torch.manual_seed and DataLoader workers control it
                rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
            return self.augment(image, lm, m, self.out_size, rng)
        return warp_image(image, m, self.out_size), transform_points(lm, m)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        img, pts = self.crop(index)
        return to_tensor(img), torch.from_numpy((pts / self.out_size).astype(np.float32))


class WFLWCropped(_CropDataset):
    """Pre-cropped WFLW layout (``ROOT/<split>.txt`` + ``ROOT/<split>/``).

    Args:
        root: dataset folder. split: one of :data:`SPLITS`.
        out_size: crop side S returned (images of another size are rescaled).
        augment: optional :class:`ldeq.data.transforms.Augmenter` (training).
    """

    def __init__(self, root, split: str = "test", out_size: int = 256, augment=None):
        _check_split(split)
        self.root, self.split, self.out_size, self.augment = os.fspath(root), split, int(out_size), augment
        self.list_path = os.path.join(self.root, f"{split}.txt")
        self.samples = []
        for rel, lm, lineno in read_cropped_list(self.list_path):
            cands = [os.path.join(self.root, split, rel), os.path.join(self.root, rel)]
            img_path = next((c for c in cands if os.path.isfile(c)), None)
            if img_path is None:
                raise FileNotFoundError(f"{self.list_path}:{lineno}: image {rel!r} not found (looked for "
                                        f"{cands[0]} and {cands[1]})")
            self.samples.append((img_path, lm, lineno))

    def __len__(self):
        return len(self.samples)

    def landmarks(self) -> np.ndarray:
        """All ground-truth landmarks, ``(N, 98, 2)`` crop units, without loading images."""
        return np.stack([s[1] for s in self.samples])

    def _load(self, index):
        path, lm, lineno = self.samples[index]
        img = read_image(path, f"{self.list_path}:{lineno}")
        h, w = img.shape[:2]
        # Crop units are crop pixels / side, so the source pixels are units * (w, h); a rescale
        # to out_size is a plain scaling of pixel coordinates.
        m = np.array([[self.out_size / w, 0.0, 0.0], [0.0, self.out_size / h, 0.0]])
        return img, lm * np.array([w, h], dtype=np.float64), m


class WFLWOriginal(_CropDataset):
    """Original WFLW layout, cropped on the fly with the square-box crop.

    Args:
        root: folder holding ``WFLW_images/`` and ``WFLW_annotations/``.
        split: ``train``, ``test`` or a test subset (``test_largepose``, ...).
        out_size, scale: crop side and box enlargement of :func:`square_crop_affine`.
        augment: optional :class:`ldeq.data.transforms.Augmenter`.
    """

    def __init__(self, root, split: str = "test", out_size: int = 256, scale: float = 1.2, augment=None):
        _check_split(split)
        self.root, self.split, self.out_size, self.scale, self.augment = (
            os.fspath(root), split, int(out_size), float(scale), augment)
        which = "train" if split == "train" else "test"
        self.list_path = os.path.join(self.root, ANNOTATION_DIR, f"list_98pt_rect_attr_{which}.txt")
        records = read_annotation_list(self.list_path)
        if split in TEST_SUBSETS:
            records = [r for r in records if r["attributes"][TEST_SUBSETS[split]] == 1]
        for r in records:
            r["image"] = os.path.join(self.root, IMAGE_DIR, r["path"])
            if not os.path.isfile(r["image"]):
                raise FileNotFoundError(f"{self.list_path}:{r['line']}: image not found: {r['image']}")
        self.records = records

    def __len__(self):
        return len(self.records)

    def _load(self, index):
        r = self.records[index]
        img = read_image(r["image"], f"{self.list_path}:{r['line']}")
        return img, r["landmarks"], square_crop_affine(r["bbox"], self.out_size, self.scale)


def detect_layout(root) -> str:
    """``'cropped'`` if ``ROOT/test.txt`` or ``ROOT/train.txt`` exists, ``'original'`` if the annotation folder does."""
    root = os.fspath(root)
    if any(os.path.isfile(os.path.join(root, f"{s}.txt")) for s in ("test", "train")):
        return "cropped"
    if os.path.isdir(os.path.join(root, ANNOTATION_DIR)):
        return "original"
    raise FileNotFoundError(f"{root}: not a WFLW folder: expected {os.path.join(root, 'test.txt')} "
                            f"(pre-cropped layout) or {os.path.join(root, ANNOTATION_DIR)} (original layout)")


def wflw_dataset(root, split: str = "test", layout: str = "auto", **kwargs):
    """The WFLW dataset of ``split`` in whichever layout ``root`` holds (or the one named)."""
    layout = detect_layout(root) if layout == "auto" else layout
    if layout == "cropped":
        return WFLWCropped(root, split, **kwargs)
    if layout == "original":
        return WFLWOriginal(root, split, **kwargs)
    raise ValueError(f"layout: expected 'auto', 'cropped' or 'original', got {layout!r}")
