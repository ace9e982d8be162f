"""WFLW loaders on small files written here in the exact published formats (reference section 6)."""
import os

import cv2
import numpy as np
import pytest
import torch

from ldeq.data.transforms import Augmenter, denormalize
from ldeq.data.wflw import (TEST_SUBSETS, WFLWCropped, WFLWFormatError, WFLWOriginal, detect_layout,
                            read_annotation_list, wflw_dataset)


def _write_png(path, img):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


def _line(rel, lm):
    return rel + " " + " ".join(f"{v:.6f}" for v in np.asarray(lm).reshape(-1)) + "\n"


@pytest.fixture
def cropped_root(tmp_path):
    """Pre-cropped layout: test.txt with 3 images, one path given relative to ROOT, one 128 px image."""
    rng = np.random.default_rng(0)
    imgs, lms, lines = [], [], []
    for i in range(3):
        size = 128 if i == 2 else 256
        img = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        lm = rng.uniform(-0.02, 1.02, size=(98, 2))
        rel = f"img_{i}.png" if i != 1 else "test/sub/img_1.png"
        _write_png(tmp_path / "test" / (rel if i != 1 else "sub/img_1.png"), img)
        imgs.append(img)
        lms.append(lm)
        lines.append(_line(rel, lm))
    (tmp_path / "test.txt").write_text("".join(lines) + "\n")  # trailing blank line is allowed
    return tmp_path, imgs, lms


def test_cropped_reads_images_and_landmarks(cropped_root):
    root, imgs, lms = cropped_root
    ds = WFLWCropped(root, "test")
    assert len(ds) == 3
    for i in range(2):
        x, y = ds[i]
        assert x.shape == (3, 256, 256) and x.dtype == torch.float32 and y.dtype == torch.float32
        np.testing.assert_array_equal(denormalize(x), imgs[i])  # identity warp of a 256 px crop
        np.testing.assert_allclose(y.numpy(), lms[i], atol=1e-6)
    x, y = ds[2]  # a 128 px crop is rescaled; landmarks in crop units are unchanged
    assert x.shape == (3, 256, 256)
    np.testing.assert_allclose(y.numpy(), lms[2], atol=1e-6)
    np.testing.assert_allclose(ds.landmarks(), np.stack(lms), atol=1e-6)
    with pytest.raises(IndexError):
        ds[3]


def test_cropped_format_errors_name_file_and_line(tmp_path):
    good = _line("a.png", np.zeros((98, 2)))
    _write_png(tmp_path / "test" / "a.png", np.zeros((8, 8, 3), np.uint8))
    lst = tmp_path / "test.txt"
    lst.write_text(good + "a.png 0.1 0.2\n")
    with pytest.raises(WFLWFormatError, match=r"test\.txt:2: expected 197 fields .* got 3"):
        WFLWCropped(tmp_path, "test")
    lst.write_text(good + good.replace("0.000000", "abc", 1))
    with pytest.raises(WFLWFormatError, match=r"test\.txt:2: landmark coordinates"):
        WFLWCropped(tmp_path, "test")
    lst.write_text(good + good.replace("a.png", "missing.png"))
    with pytest.raises(FileNotFoundError, match=r"test\.txt:2: image 'missing\.png' not found"):
        WFLWCropped(tmp_path, "test")
    lst.write_text(good + good.replace("0.000000", "nan", 1))
    with pytest.raises(WFLWFormatError, match=r"test\.txt:2: landmark coordinates: NaN or inf"):
        WFLWCropped(tmp_path, "test")
    lst.write_bytes(b"\xff\xfe\x00garbage\x80\x81")
    with pytest.raises(WFLWFormatError, match=r"test\.txt: not a text file"):
        WFLWCropped(tmp_path, "test")
    lst.write_text("\n")
    with pytest.raises(WFLWFormatError, match="empty"):
        WFLWCropped(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match=r"train\.txt"):
        WFLWCropped(tmp_path, "train")
    with pytest.raises(ValueError, match="split: expected one of"):
        WFLWCropped(tmp_path, "valid")


def test_undecodable_image_names_image_and_line(tmp_path):
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "bad.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "test.txt").write_text(_line("bad.jpg", np.zeros((98, 2))))
    ds = WFLWCropped(tmp_path, "test")
    with pytest.raises(WFLWFormatError, match=r"could not be decoded: .*bad\.jpg \(listed at .*test\.txt:1\)"):
        ds[0]


@pytest.fixture
def original_root(tmp_path):
    """Original layout: 2 train lines, 3 test lines with different attribute flags."""
    rng = np.random.default_rng(1)
    ann = tmp_path / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
    ann.mkdir(parents=True)
    recs = {"train": [], "test": []}
    flags = {"train": [[0] * 6, [1, 0, 0, 0, 0, 0]],
             "test": [[1, 0, 0, 0, 1, 0], [0, 1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1]]}
    for split in ("train", "test"):
        lines = []
        for i, fl in enumerate(flags[split]):
            img = rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
            rel = f"{i}--Event/{split}_{i}.png"
            _write_png(tmp_path / "WFLW_images" / rel, img)
            box = np.array([100 + 10 * i, 80, 260, 250])
            lm = rng.uniform(box[:2], box[2:], size=(98, 2))
            fields = [f"{v:.3f}" for v in lm.reshape(-1)] + [str(v) for v in box] + [str(v) for v in fl] + [rel]
            assert len(fields) == 207
            lines.append(" ".join(fields) + "\n")
            recs[split].append((img, lm, box, fl))
        (ann / f"list_98pt_rect_attr_{split}.txt").write_text("".join(lines))
    return tmp_path, recs


def _crop_units(lm, box, out=256, scale=1.2):
    """Independent statement of the square-box crop: centre -> crop centre, side max(w, h) * 1.2 -> out."""
    c = (box[:2] + box[2:]) / 2.0
    side = max(box[2] - box[0], box[3] - box[1]) * scale
    return ((lm - c) * out / side + (out - 1) / 2.0) / out


def test_original_crops_and_subsets(original_root):
    root, recs = original_root
    ds = WFLWOriginal(root, "test")
    assert len(ds) == 3
    for i, (img, lm, box, _) in enumerate(recs["test"]):
        x, y = ds[i]
        assert x.shape == (3, 256, 256)
        np.testing.assert_allclose(y.numpy(), _crop_units(np.round(lm, 3), box), atol=1e-5)
    # Pixels: compare with an independent bilinear resampling (scipy) of the inverse crop map.
    from scipy.ndimage import map_coordinates
    img, _, box, _ = recs["test"][0]
    crop = denormalize(ds[0][0]).astype(float)
    c = (box[:2] + box[2:]) / 2.0
    side = max(box[2] - box[0], box[3] - box[1]) * 1.2
    v, u = np.mgrid[20:236:7, 20:236:7]
    sx, sy = c[0] + (u - 127.5) * side / 256, c[1] + (v - 127.5) * side / 256
    for ch in range(3):
        ref = map_coordinates(img[..., ch].astype(float), [sy, sx], order=1)
        diff = np.abs(crop[v, u, ch] - ref)
        assert diff.mean() < 1.5 and diff.max() < 10  # OpenCV interpolates with 1/32 pixel weights
    assert len(WFLWOriginal(root, "train")) == 2
    sizes = {s: len(WFLWOriginal(root, s)) for s in TEST_SUBSETS}
    assert sizes == {"test_largepose": 1, "test_expression": 1, "test_illumination": 0, "test_makeup": 0,
                     "test_occlusion": 2, "test_blur": 1}


def test_original_format_errors(original_root):
    root, _ = original_root
    path = root / "WFLW_annotations" / "list_98pt_rect_attr_train_test" / "list_98pt_rect_attr_test.txt"
    lines = path.read_text().splitlines()
    f = lines[1].split()
    path.write_text("\n".join([lines[0], " ".join(f[:-2] + [f[-1]])]) + "\n")
    with pytest.raises(WFLWFormatError, match=r"attr_test\.txt:2: expected 207 fields .* got 206"):
        read_annotation_list(str(path))
    bad = f.copy()
    bad[200] = "2"
    path.write_text("\n".join([lines[0], " ".join(bad)]) + "\n")
    with pytest.raises(WFLWFormatError, match=r"attr_test\.txt:2: attribute flags must be 0 or 1"):
        read_annotation_list(str(path))
    bad = f.copy()
    bad[196], bad[198] = "300", "100"
    path.write_text("\n".join([lines[0], " ".join(bad)]) + "\n")
    with pytest.raises(WFLWFormatError, match=r"attr_test\.txt:2: face box must have x_max > x_min"):
        read_annotation_list(str(path))
    bad = f.copy()
    bad[-1] = "9--Nowhere/none.jpg"
    path.write_text("\n".join([lines[0], " ".join(bad)]) + "\n")
    with pytest.raises(FileNotFoundError, match=r"attr_test\.txt:2: image not found: .*none\.jpg"):
        WFLWOriginal(root, "test")


def test_layout_detection_and_factory(cropped_root, tmp_path_factory):
    root, _, _ = cropped_root
    assert detect_layout(root) == "cropped"
    assert isinstance(wflw_dataset(root, "test"), WFLWCropped)
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(FileNotFoundError, match="not a WFLW folder"):
        detect_layout(empty)


def test_original_layout_detected(original_root):
    root, _ = original_root
    assert detect_layout(root) == "original"
    assert isinstance(wflw_dataset(root, "test_blur"), WFLWOriginal)


def test_augmented_dataset_is_seeded_by_torch(original_root):
    root, _ = original_root
    ds = WFLWOriginal(root, "train", out_size=64, augment=Augmenter())
    torch.manual_seed(0)
    a = ds[0]
    torch.manual_seed(0)
    b = ds[0]
    c = ds[0]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert a[0].shape == (3, 64, 64)
