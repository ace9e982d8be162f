"""Video NME / NMF (reference section 4) on hand-computed cases."""
import math

import numpy as np
import pytest

from ldeq.video.metrics import dataset_video_metrics, face_scale, video_nme, video_nmf


def _gt(T=3, w=256.0, h=256.0):
    """(T, 98, 2) ground truth with outer eye corners 60=(0,0), 72=(10,0) and extent exactly w x h."""
    rng = np.random.default_rng(0)
    g = np.stack([rng.uniform(0, w, 98), rng.uniform(0, h, 98)], -1)
    g[0], g[1] = (0.0, 0.0), (w, h)  # pin the extent
    g[60], g[72] = (0.0, 0.0), (10.0, 0.0)  # IOD = 10
    return np.repeat(g[None], T, 0)


def test_nme_hand_computed():
    g = _gt(T=2)
    p = g.copy()
    p[0] += (3.0, 4.0)  # error 5 everywhere, IOD 10 -> 100 * 5 / 10 = 50
    p[1] += (0.0, 1.0)  # -> 10
    assert video_nme(p, g) == pytest.approx(30.0, rel=1e-12)


def test_nme_uses_per_frame_iod():
    g = _gt(T=2)
    g[1, 72] = (20.0, 0.0)  # IOD 20 in frame 1
    p = g + 2.0 * np.array([0.6, 0.8])  # error 2 everywhere
    assert video_nme(p, g) == pytest.approx(0.5 * (100 * 2 / 10 + 100 * 2 / 20), rel=1e-12)


def test_nmf_hand_computed():
    g = _gt(T=3)  # extent 256 x 256 -> s = 1
    p = g.copy()
    p[1] -= (3.0, 4.0)  # r_1 - r_0 = 5 for every landmark -> 500; r_2 - r_1 = 0 -> 0
    p[2] -= (3.0, 4.0)
    assert video_nmf(p, g) == pytest.approx(math.sqrt((500.0 ** 2 + 0.0) / 2), rel=1e-12)


def test_nmf_rms_over_landmarks_and_scale():
    g = _gt(T=2, w=64.0, h=64.0)  # s = sqrt(64 * 64) / 256 = 0.25
    assert face_scale(g) == pytest.approx([0.25, 0.25])
    p = g.copy()
    p[1, :49, 0] += 3.0  # half the landmarks move by 3 px, half stay
    expected = math.sqrt(0.5 * (100 * 3 / 0.25) ** 2)
    assert video_nmf(p, g) == pytest.approx(expected, rel=1e-12)


def test_nmf_ignores_constant_offset_and_follows_moving_gt():
    g = _gt(T=5)
    g = g + np.arange(5)[:, None, None] * np.array([7.0, -2.0])  # the face moves
    p = g + np.array([4.0, -1.5])  # constant bias
    assert video_nmf(p, g) == pytest.approx(0.0, abs=1e-9)
    assert video_nme(p, g) > 0


def test_dataset_average_over_videos():
    g1, g2 = _gt(T=2), _gt(T=4)
    p1 = g1 + (3.0, 4.0)  # NME 50, NMF 0
    p2 = g2.copy()  # NME 0, NMF > 0
    p2[1:] += (0.0, 1.0)
    m = dataset_video_metrics([p1, p2], [g1, g2])
    assert m["nme"] == pytest.approx((50.0 + video_nme(p2, g2)) / 2)
    assert m["nmf"] == pytest.approx((0.0 + video_nmf(p2, g2)) / 2)
    assert m["n_videos"] == 2


@pytest.mark.parametrize("bad,msg", [
    (np.zeros((3, 98)), "shape"),
    (np.zeros((2, 98, 2)), "same"),
])
def test_bad_shapes(bad, msg):
    with pytest.raises(ValueError, match=msg):
        video_nme(bad, _gt(T=3))


def test_nan_prediction_and_single_frame():
    g = _gt(T=3)
    p = g.copy()
    p[1, 5] = np.nan
    with pytest.raises(ValueError, match="pred: NaN.*frame 1"):
        video_nmf(p, g)
    with pytest.raises(ValueError, match="at least 2 frames"):
        video_nmf(g[:1], g[:1])
    g0 = g.copy()
    g0[:, 72] = g0[:, 60]
    with pytest.raises(ValueError, match="inter-ocular"):
        video_nme(g0, g0)
    with pytest.raises(ValueError, match="no videos"):
        dataset_video_metrics([], [])


def test_ignore_nan_drops_frames_and_pairs():
    g = _gt(T=4)
    p = g.copy()
    p[0] += (3.0, 4.0)  # frame 0: NME 50
    p[2] = np.nan  # skipped frame
    p[3] += (0.0, 1.0)  # frame 3: NME 10
    # NME over frames 0, 1, 3: (50 + 0 + 10) / 3; NMF over the only valid pair (0, 1): 500
    assert video_nme(p, g, ignore_nan=True) == pytest.approx(20.0)
    assert video_nmf(p, g, ignore_nan=True) == pytest.approx(500.0)
    with pytest.raises(ValueError, match="consecutive"):
        q = g.copy()
        q[1::2] = np.nan
        video_nmf(q, g, ignore_nan=True)
