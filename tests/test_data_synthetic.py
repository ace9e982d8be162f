"""Synthetic faces: determinism, WFLW semantics of the 98 points, landmarks on the drawn features,
and the export -> WFLWCropped round trip."""
import dataclasses

import numpy as np
import pytest
import torch

from ldeq.data.synthetic import (FaceParams, SyntheticFaces, export_wflw_cropped, face_attributes, face_landmarks,
                                 interpolate_params, random_face_params, render_face)
from ldeq.data.topology import FLIP_PERM
from ldeq.data.transforms import Augmenter, denormalize
from ldeq.data.wflw import WFLWCropped

CLEAN = dict(noise=0.0, blur=0.0, ambient=1.0, light=0.0, occluder=0, clutter=0)


def test_deterministic_by_seed_and_index():
    a, b = SyntheticFaces("train", 10, seed=3), SyntheticFaces("train", 10, seed=3)
    x1, y1 = a[4]
    x2, y2 = b[4]
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(a[5][0], x1)
    assert not torch.equal(SyntheticFaces("train", 10, seed=4)[4][0], x1)
    assert not torch.equal(SyntheticFaces("test", 10, seed=3)[4][0], x1)
    assert x1.shape == (3, 256, 256) and x1.dtype == torch.float32
    assert y1.shape == (98, 2) and y1.dtype == torch.float32


def test_landmarks_inside_the_crop():
    ds = SyntheticFaces("test", 40, seed=0)
    lms = np.stack([ds.render(i)[1] for i in range(len(ds))]) / 256
    assert lms.min() > 0.0 and lms.max() < 1.0


def test_wflw_semantics_of_a_frontal_face():
    lm = face_landmarks(FaceParams(), 256)
    x, y = lm[:, 0], lm[:, 1]
    assert x[60] < x[64] < x[68] < x[72]          # outer/inner corners, image left to right
    assert x[33] < x[37] < x[42] < x[46]          # brows outer->inner, inner->outer
    assert y[16] == y[:33].max() and x[0] < x[16] < x[32]   # chin is the lowest contour point
    assert y[51] < y[52] < y[53] < y[54] < y[57]  # nose bridge top to tip, then the base
    assert x[55] < x[57] < x[59] and x[76] < x[79] < x[82] and x[88] < x[90] < x[92]
    assert y[79] < y[90] <= y[94] < y[85]         # upper lip above lower lip
    assert y[35] < y[62] and y[62] < y[66]        # brow above upper lid above lower lid
    assert x[60] < x[96] < x[64] and x[68] < x[97] < x[72]
    # A frontal, centred face is mirror symmetric under the WFLW flip permutation.
    mirrored = np.stack([255.0 - x, y], 1)[FLIP_PERM]
    np.testing.assert_allclose(mirrored, lm, atol=1e-9)


def _pixel(img, pt):
    x, y = np.round(pt).astype(int)
    return img[y, x].astype(int)


def test_landmarks_sit_on_the_drawn_features():
    for seed in range(6):
        p = dataclasses.replace(random_face_params(np.random.default_rng(seed)), **CLEAN, mouth_open=0.0,
                                eye_open=1.0, gaze_x=0.0, gaze_y=0.0, brow_thick=0.12, lip_thick=0.09,
                                lip_colour=(200, 30, 40), brow_colour=(10, 200, 20))
        img, lm = render_face(p, 256)
        # Pupil centres are drawn near-black.
        for i in (96, 97):
            assert _pixel(img, lm[i]).max() < 40, (seed, i)
        # The middle of each brow polygon has the brow colour.
        for upper, lower in ((35, 39), (44, 48)):
            c = _pixel(img, (lm[upper] + lm[lower]) / 2)
            assert np.abs(c - (10, 200, 20)).max() < 30, (seed, upper, c)
        # The middle of the upper and lower lips has the lip colour.
        for a, b in ((79, 90), (85, 94)):
            c = _pixel(img, (lm[a] + lm[b]) / 2)
            assert np.abs(c - (200, 30, 40)).max() < 40, (seed, a, c)
        # Skin just inside the jaw line, not skin just outside it (the neck is a darker shade).
        centre = lm[:33].mean(0)
        for k in (4, 8, 16, 24, 28):
            d = (lm[k] - centre) / np.linalg.norm(lm[k] - centre)
            inside, outside = _pixel(img, lm[k] - 4 * d), _pixel(img, lm[k] + 4 * d)
            skin = np.array(p.skin)
            assert np.abs(inside - skin).max() < 45, (seed, k, inside, skin)
            assert np.abs(outside - inside).max() > 10, (seed, k)


def test_render_options_and_errors():
    p = random_face_params(np.random.default_rng(0))
    a, lm_a = render_face(p, (200, 300))
    assert a.shape == (200, 300, 3) and a.dtype == np.uint8
    np.testing.assert_allclose(lm_a, face_landmarks(p, (200, 300)))
    b, _ = render_face(p, (200, 300))
    np.testing.assert_array_equal(a, b)  # rng=None: derived from the params
    with pytest.raises(TypeError, match="params: expected FaceParams"):
        render_face({"cx": 0.5}, 256)
    with pytest.raises(ValueError, match="size: expected at least 16x16"):
        render_face(p, 8)
    with pytest.raises(ValueError, match="split: expected 'train' or 'test'"):
        SyntheticFaces("val")


def test_interpolation_moves_landmarks_smoothly():
    a = random_face_params(np.random.default_rng(1))
    b = dataclasses.replace(a, cx=a.cx + 0.02, yaw=a.yaw + 0.1)
    assert interpolate_params(a, b, 0.0) == a
    lms = np.stack([face_landmarks(interpolate_params(a, b, t), 256) for t in np.linspace(0, 1, 11)])
    steps = np.linalg.norm(np.diff(lms, axis=0), axis=-1).max(axis=1)
    assert steps.max() < 2.0 and steps.min() > 0.0


def test_attributes_follow_params():
    p = dataclasses.replace(FaceParams(), **CLEAN)
    assert face_attributes(p).tolist() == [0, 0, 0, 0, 0, 0]
    q = dataclasses.replace(p, yaw=0.6, mouth_open=0.3, light=0.7, makeup=1.0, occluder=1, blur=2.0)
    assert face_attributes(q).tolist() == [1, 1, 1, 1, 1, 1]


def test_export_round_trip(tmp_path):
    counts = export_wflw_cropped(tmp_path, n_train=3, n_test=12, seed=5, progress=False)
    assert counts["train"] == 3 and counts["test"] == 12
    src = SyntheticFaces("test", 12, seed=5)
    ds = WFLWCropped(tmp_path, "test")
    for i in (0, 7):
        x, y = ds[i]
        img, lm = src.render(i)
        np.testing.assert_array_equal(denormalize(x), img)  # PNG is lossless
        np.testing.assert_allclose(y.numpy(), lm / 256, atol=1e-6)
    flags = np.stack([face_attributes(src.params(i)) for i in range(12)])
    for name, k in (("test_largepose", 0), ("test_occlusion", 4)):
        if flags[:, k].sum():
            assert len(WFLWCropped(tmp_path, name)) == flags[:, k].sum()
    assert len(WFLWCropped(tmp_path, "train")) == 3
    idx = src.split_indices()  # in-memory subsets agree with the exported lists
    assert idx["test"].tolist() == list(range(12))
    for name, k in (("test_largepose", 0), ("test_occlusion", 4), ("test_blur", 5)):
        assert idx[name].tolist() == np.flatnonzero(flags[:, k]).tolist()


def test_augment_and_cache():
    ds = SyntheticFaces("train", 4, seed=0, out_size=128, augment=Augmenter(), cache=True)
    torch.manual_seed(1)
    x, y = ds[0]
    assert x.shape == (3, 128, 128) and y.shape == (98, 2)
    assert 0 in ds._cache
    torch.manual_seed(1)
    assert torch.equal(ds[0][1], y)
