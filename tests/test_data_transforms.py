"""Augmentation: landmarks follow the image through scale/rotation/translation/flip; flip permutes indices."""
import numpy as np
import pytest
import torch

from ldeq.data.topology import FLIP_PERM
from ldeq.data.transforms import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig, Augmenter, denormalize, to_tensor

S = 128
NO_PHOTO = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, blur_prob=0.0, occlusion_prob=0.0)


def _blob_image(points, size=S, sigma=2.0):
    """Three landmarks drawn as Gaussian blobs, one per colour channel."""
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.zeros((size, size, 3), np.float64)
    for c, (x, y) in enumerate(points):
        img[..., c] = 255 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _centroids(img):
    yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    out = []
    for c in range(3):
        w = img[..., c].astype(np.float64)
        out.append([(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()])
    return np.array(out)


def _landmarks():
    lm = np.random.default_rng(0).uniform(40, 88, size=(98, 2))
    lm[60], lm[72], lm[54] = (45.0, 60.0), (83.0, 58.0), (64.0, 75.0)
    return lm


def test_normalisation_hand_value_and_roundtrip():
    img = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    x = to_tensor(img)
    assert x.shape == (3, 5, 7) and x.dtype == torch.float32
    expect = (img[2, 3, 1] / 255.0 - IMAGENET_MEAN[1]) / IMAGENET_STD[1]
    assert float(x[1, 2, 3]) == pytest.approx(expect, abs=1e-5)
    np.testing.assert_array_equal(denormalize(x), img)
    with pytest.raises(ValueError, match=r"image: expected uint8 \(H, W, 3\)"):
        to_tensor(img.astype(np.float32))


@pytest.mark.parametrize("flip_prob", [0.0, 1.0])
def test_landmarks_follow_image(flip_prob):
    lm = _landmarks()
    img = _blob_image(lm[[60, 72, 54]])
    aug = Augmenter(AugmentConfig(scale=(0.8, 1.2), rotation=30, translation=0.08, flip_prob=flip_prob, **NO_PHOTO))
    for seed in range(4):
        out, pts = aug(img, lm, np.eye(3)[:2], S, np.random.default_rng(seed))
        assert out.shape == (S, S, 3) and out.dtype == np.uint8 and pts.shape == (98, 2)
        # After a flip the blob drawn at old index 60 (left eye corner) is new index 72, and vice versa.
        idx = [72, 60, 54] if flip_prob else [60, 72, 54]
        np.testing.assert_allclose(_centroids(out), pts[idx], atol=0.15)


def test_flip_is_mirror_plus_permutation():
    lm = _landmarks()
    cfg = AugmentConfig(scale=(1, 1), rotation=0, translation=0, flip_prob=1.0, **NO_PHOTO)
    _, pts = Augmenter(cfg)(np.zeros((S, S, 3), np.uint8), lm, np.eye(3)[:2], S, np.random.default_rng(0))
    expect = np.stack([S - 1 - lm[:, 0], lm[:, 1]], 1)[FLIP_PERM]
    np.testing.assert_allclose(pts, expect, atol=1e-9)
    # The permutation is an involution that swaps left/right eye corners and keeps the nose tip.
    np.testing.assert_array_equal(FLIP_PERM[FLIP_PERM], np.arange(98))
    assert FLIP_PERM[60] == 72 and FLIP_PERM[96] == 97 and FLIP_PERM[54] == 54 and FLIP_PERM[0] == 32


def test_augmentation_is_deterministic_given_rng_and_varies_otherwise():
    img = np.random.default_rng(3).integers(0, 256, size=(S, S, 3), dtype=np.uint8)
    aug = Augmenter(AugmentConfig(blur_prob=0.5, occlusion_prob=0.5))
    a = aug(img, _landmarks(), np.eye(3)[:2], S, np.random.default_rng(7))
    b = aug(img, _landmarks(), np.eye(3)[:2], S, np.random.default_rng(7))
    c = aug(img, _landmarks(), np.eye(3)[:2], S, np.random.default_rng(8))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_photometric_changes_pixels_not_landmarks():
    img = np.full((S, S, 3), 128, np.uint8)
    lm = _landmarks()
    cfg = AugmentConfig(scale=(1, 1), rotation=0, translation=0, flip_prob=0, brightness=0, contrast=0,
                        saturation=0, hue=0, blur_prob=0, occlusion_prob=1.0, occlusion_size=(0.2, 0.2))
    out, pts = Augmenter(cfg)(img, lm, np.eye(3)[:2], S, np.random.default_rng(0))
    np.testing.assert_allclose(pts, lm, atol=1e-9)
    changed = (out != 128).any(-1)
    assert 0.02 < changed.mean() < 0.06  # one patch of about 0.2 x 0.2 of the crop (0.04)
    cfg = AugmentConfig(scale=(1, 1), rotation=0, translation=0, flip_prob=0, brightness=0.3, contrast=0,
                        saturation=0, hue=0, blur_prob=0, occlusion_prob=0)
    out, _ = Augmenter(cfg)(img, lm, np.eye(3)[:2], S, np.random.default_rng(1))
    assert len(np.unique(out)) == 1 and out[0, 0, 0] != 128  # a uniform brightness shift


def test_bad_landmarks_shape():
    with pytest.raises(ValueError, match=r"landmarks: expected shape \(98, 2\)"):
        Augmenter()(np.zeros((S, S, 3), np.uint8), np.zeros((68, 2)), np.eye(3)[:2], S, np.random.default_rng(0))
