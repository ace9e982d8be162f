"""Square-box crop: hand-computed matrices, exact pixel copies, and points that follow the image."""
import numpy as np
import pytest

from ldeq.data.crop import compose_affine, invert_affine, square_crop_affine, transform_points, warp_image


def test_square_crop_hand_computed():
    # Box 100 x 50 centred at (60, 45): square side 120, scale 256 / 120.
    m = square_crop_affine((10, 20, 110, 70), out_size=256, scale=1.2)
    s = 256 / 120
    np.testing.assert_allclose(m, [[s, 0, 127.5 - 60 * s], [0, s, 127.5 - 45 * s]], rtol=1e-12)
    # The square's corners land on the crop's outer pixel edges (-0.5 and 255.5).
    corners = transform_points([[0.0, -15.0], [120.0, 105.0]], m)
    np.testing.assert_allclose(corners, [[-0.5, -0.5], [255.5, 255.5]], atol=1e-9)


def test_scale_one_crop_is_an_exact_slice():
    img = np.random.default_rng(0).integers(0, 256, size=(150, 200, 3), dtype=np.uint8)
    # Pixels 50..113 x 40..103 span the continuous box [49.5, 113.5] x [39.5, 103.5].
    m = square_crop_affine((49.5, 39.5, 113.5, 103.5), out_size=64, scale=1.0)
    np.testing.assert_array_equal(warp_image(img, m, 64), img[40:104, 50:114])


def test_points_follow_the_warped_image():
    img = np.zeros((300, 400), np.float32)
    pt = np.array([231.3, 118.7])
    yy, xx = np.mgrid[0:300, 0:400]
    img[:] = np.exp(-((xx - pt[0]) ** 2 + (yy - pt[1]) ** 2) / (2 * 3.0 ** 2))
    m = square_crop_affine((150, 60, 330, 260), out_size=256)
    crop = warp_image(img, m, 256)
    cy, cx = np.mgrid[0:256, 0:256]
    centroid = np.array([(crop * cx).sum(), (crop * cy).sum()]) / crop.sum()
    np.testing.assert_allclose(centroid, transform_points(pt, m), atol=0.05)


def test_invert_and_compose():
    m = square_crop_affine((5, 7, 90, 60))
    pts = np.random.default_rng(1).uniform(0, 100, size=(10, 98, 2))
    back = transform_points(transform_points(pts, m), invert_affine(m))
    np.testing.assert_allclose(back, pts, atol=1e-9)
    np.testing.assert_allclose(compose_affine(invert_affine(m), m), np.eye(3)[:2], atol=1e-12)
    full = np.vstack([m, [0, 0, 1]])  # 3x3 accepted too
    np.testing.assert_allclose(transform_points(pts, full), transform_points(pts, m))


def test_bad_input_errors():
    with pytest.raises(ValueError, match=r"bbox: expected 4 numbers"):
        square_crop_affine((1, 2, 3))
    with pytest.raises(ValueError, match=r"bbox: expected x2 > x1"):
        square_crop_affine((10, 10, 5, 20))
    with pytest.raises(ValueError, match=r"bbox: expected finite"):
        square_crop_affine((0, 0, np.nan, 5))
    with pytest.raises(ValueError, match="singular"):
        invert_affine([[1, 2, 0], [2, 4, 0]])
    with pytest.raises(ValueError, match=r"points: expected shape \(\.\.\., 2\)"):
        transform_points(np.zeros((5, 3)), np.eye(3)[:2])
    with pytest.raises(ValueError, match=r"matrix: expected a 2x3"):
        transform_points(np.zeros((5, 2)), np.eye(2))
    with pytest.raises(ValueError, match="image: expected a non-empty"):
        warp_image(np.zeros((0, 4, 3), np.uint8), np.eye(3)[:2])


def test_warp_border_is_constant():
    img = np.full((20, 20, 3), 200, np.uint8)
    m = square_crop_affine((-40, -40, 10, 10), out_size=32, scale=1.0)  # mostly outside the image
    out = warp_image(img, m, 32, border_value=7)
    assert out[0, 0].tolist() == [7, 7, 7] and out[-1, -1].tolist() == [200, 200, 200]
