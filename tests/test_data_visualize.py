"""Landmark drawing and grids: dots land where the landmarks are; PNGs are written atomically."""
import os

import cv2
import numpy as np
import pytest
import torch

from ldeq.data.transforms import to_tensor
from ldeq.data.visualize import GT_COLOUR, PRED_COLOUR, draw_landmarks, landmark_grid


def test_dots_drawn_at_landmarks():
    img = np.zeros((64, 64, 3), np.uint8)
    out = draw_landmarks(img, [[0.25, 0.5]], radius=2)  # crop units -> pixel (16, 32)
    assert out[32, 16].tolist() == list(GT_COLOUR)
    assert out[10, 50].tolist() == [0, 0, 0] and img.max() == 0  # input untouched
    out = draw_landmarks(img, [[40.0, 8.0]], PRED_COLOUR, radius=2, units="pixels")
    assert out[8, 40].tolist() == list(PRED_COLOUR)
    with pytest.raises(ValueError, match=r"landmarks: expected shape \(K, 2\)"):
        draw_landmarks(img, np.zeros(4))
    with pytest.raises(ValueError, match="units"):
        draw_landmarks(img, np.zeros((1, 2)), units="mm")


def test_grid_layout_and_png(tmp_path):
    imgs = [np.full((32, 32, 3), 10 * i, np.uint8) for i in range(5)]
    imgs[1] = to_tensor(imgs[1])  # tensors from the datasets are accepted
    gts = [torch.tensor([[0.5, 0.5]])] * 5
    preds = [np.array([[0.1, 0.1]])] * 5
    path = tmp_path / "grid.png"
    g = landmark_grid(imgs, gts, preds, ncols=2, path=path)
    assert g.shape == (3 * 32, 2 * 32, 3)
    assert g[32 + 16, 32 + 16].tolist() == list(GT_COLOUR)       # tile 3 (row 1, col 1) centre
    assert g[64 + 3, 3].tolist() == list(PRED_COLOUR)            # tile 4 prediction at (3.2, 3.2)
    assert g[-1, -1].tolist() == [0, 0, 0]                       # empty 6th slot
    back = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, g)
    assert os.listdir(tmp_path) == ["grid.png"]
