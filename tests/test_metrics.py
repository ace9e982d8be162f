"""NME / FR@10 / AUC@10 / CED against hand-computed cases and an independent Simpson's rule."""
import os

import numpy as np
import pytest
import torch

from ldeq.metrics import (auc, ced_curve, failure_rate, format_table, metrics_table, nme_per_image, plot_ced,
                          split_metrics)


def _gt(n=1, iod=10.0, seed=0):
    g = np.random.default_rng(seed).uniform(0, 50, size=(n, 98, 2))
    g[:, 60] = (0.0, 0.0)
    g[:, 72] = (iod, 0.0)
    return g


def test_nme_constant_offset_hand_computed():
    g = _gt(2)
    p = g + np.array([3.0, 4.0])  # every point 5 px off, IOD 10 -> 0.5
    np.testing.assert_allclose(nme_per_image(p, g), [0.5, 0.5], rtol=1e-12)


def test_nme_single_point_off():
    g = _gt(1, iod=20.0)
    p = g.copy()
    p[0, 5] += (0.0, 9.8)  # 9.8 / (98 * 20) = 0.005
    np.testing.assert_allclose(nme_per_image(p, g), [0.005], rtol=1e-12)


def test_nme_accepts_torch_and_single_image():
    g = _gt(1)
    p = g + 1.0
    a = nme_per_image(torch.tensor(p, dtype=torch.float32), torch.tensor(g))
    b = nme_per_image(p[0], g[0])
    np.testing.assert_allclose(a, np.sqrt(2) / 10, rtol=1e-6)
    np.testing.assert_allclose(b, np.sqrt(2) / 10, rtol=1e-12)


def test_nme_bad_input_errors():
    g = _gt(2)
    with pytest.raises(ValueError, match="same shape"):
        nme_per_image(g[:1], g)
    with pytest.raises(ValueError, match=r"pred: expected landmarks of shape \(N, K, 2\)"):
        nme_per_image(np.zeros((2, 98, 3)), g)
    bad = g.copy()
    bad[1, 3, 0] = np.nan
    with pytest.raises(ValueError, match="pred: landmarks contain NaN"):
        nme_per_image(bad, g)
    z = g.copy()
    z[1, 72] = z[1, 60]
    with pytest.raises(ValueError, match=r"inter-ocular distance is zero for image\(s\) \[1\]"):
        nme_per_image(g, z)


def test_failure_rate_threshold_is_strict():
    assert failure_rate([0.05, 0.1, 0.1000001, 0.2]) == 0.5
    assert failure_rate([0.0, 0.01]) == 0.0


def test_ced_curve_hand_values():
    xs, ys = ced_curve([0.01, 0.03])
    assert xs.shape == (1001,) and xs[0] == 0.0 and abs(xs[-1] - 0.1) < 1e-12
    assert ys[0] == 0.0
    assert ys[200] == 0.5      # x = 0.02
    assert ys[-1] == 1.0


def test_auc_hand_computed_cases():
    assert auc([0.0, 0.0]) == pytest.approx(1.0, abs=1e-12)
    assert auc([0.2, 0.5]) == 0.0
    # One image at 0.05005: CED is 1 from grid index 501 to 1000. Simpson weights there:
    # 250 odd indices x4 + 249 even interior x2 + the end point x1 = 1499, times h/3.
    assert auc([0.05005]) == pytest.approx(1499 * 1e-4 / 3 / 0.1, rel=1e-12)


def test_auc_matches_independent_simpson_and_exact_integral():
    nmes = np.random.default_rng(1).gamma(2.0, 0.025, size=300)
    xs = np.linspace(0.0, 0.1, 1001)
    ys = np.array([(nmes <= x).mean() for x in xs])
    w = np.ones(1001)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    ref = (w * ys).sum() * 1e-4 / 3 / 0.1
    assert auc(nmes) == pytest.approx(ref, rel=1e-10)
    exact = np.clip(0.1 - nmes, 0, None).mean() / 0.1  # integral of the step CED
    assert auc(nmes) == pytest.approx(exact, abs=2e-3)


def test_split_metrics_and_table():
    g = _gt(4)
    offs = np.array([0.0, 0.5, 1.0, 2.0])  # nme = off * sqrt(2) / 10 per image
    p = g + offs[:, None, None]
    r = split_metrics("test", p, g)
    nmes = offs * np.sqrt(2) / 10
    assert r.n == 4
    assert r.nme == pytest.approx(100 * nmes.mean())
    assert r.fr == pytest.approx(50.0)  # 0.141 and 0.283 are failures
    assert r.auc == pytest.approx(auc(nmes))
    rows = metrics_table({"test": nmes, "test_blur": nmes[:2]})
    assert [x.split for x in rows] == ["test", "test_blur"]
    text = format_table(rows)
    assert "test_blur" in text and f"{100 * nmes[:2].mean():.2f}" in text
    with pytest.raises(ValueError, match="give pred and gt, or nmes"):
        split_metrics("x")
    with pytest.raises(ValueError, match="at least one value"):
        split_metrics("x", nmes=[])


def test_plot_ced_writes_png(tmp_path):
    import cv2
    path = tmp_path / "sub" / "ced.png"
    plot_ced({"test": [0.01, 0.04, 0.2], "test_blur": [0.05]}, path)
    img = cv2.imread(str(path))
    assert img is not None and img.shape[0] > 100 and img.shape[1] > 100
    assert os.listdir(tmp_path / "sub") == ["ced.png"]  # no temp file left behind
