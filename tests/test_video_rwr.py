"""RwR runner against a small stand-in DEQ (no landmark model needed): per-frame references written
as plain loops, batching invariance, crop mapping on a hand-computed case, gaps and bad boxes."""
import numpy as np
import pytest
import torch

from ldeq.video.rwr import BoxesTooShort, CellSolve, RwRConfig, RwRRunner, crop_batch

S = 32  # small crops keep the test fast; the mapping is size-independent
K = 4


class StandIn:
    """f(z; x) = 0.5 tanh(W z) + U x: a contraction whose fixed point depends on the image."""

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(2 * K, 2 * K, generator=g, dtype=torch.float64) / (2 * K) ** 0.5
        self.U = torch.randn(2 * K, 48, generator=g, dtype=torch.float64)

    def inject(self, images):
        return torch.nn.functional.adaptive_avg_pool2d(images.double(), 4).flatten(1)

    def cell(self, z, x):
        return 0.5 * torch.tanh(z @ self.W.T) + x @ self.U.T

    def decode(self, z):
        return torch.sigmoid(z).view(-1, K, 2)

    def solve(self):
        return CellSolve(self.inject, self.cell, self.decode, lambda x: x.new_zeros(x.shape[0], 2 * K))


def _videos(lengths, seed=0):
    rng = np.random.default_rng(seed)
    vids, boxes = [], []
    for T in lengths:
        base = rng.integers(0, 255, size=(48, 64, 3)).astype(np.float64)
        vids.append([np.clip(base + rng.normal(scale=20, size=base.shape), 0, 255).astype(np.uint8) for _ in range(T)])
        c = np.array([30.0, 24.0]) + rng.normal(size=(T, 2))
        boxes.append(np.concatenate([c - 12, c + 12], axis=1))
    return vids, boxes


def _frame_crop(frame, box):
    images, mats = crop_batch([frame], [box], S)
    return images, mats


def _reference(m, vids, boxes, mode, full, warm, gamma=0.0):
    """Video by video, frame by frame, written directly from the definitions."""
    from ldeq.video.rwr import uncrop_points
    outs = []
    for frames, bx in zip(vids, boxes):
        z_prev, seq = None, []
        for frame, box in zip(frames, bx):
            images, mats = _frame_crop(frame, box)
            x = m.inject(images)
            if mode == "off" or z_prev is None:
                z = torch.zeros(1, 2 * K, dtype=torch.float64)
                for _ in range(full):
                    z = m.cell(z, x)
                out = m.cell(z, x)
            else:
                T = lambda z: (m.cell(z, x) + gamma * z_prev) / (1 + gamma)  # noqa: E731
                z = z_prev
                for _ in range(warm):
                    z = T(z)
                out = T(z)
            z_prev = out  # the carried state is the decoded one (after the extra final step)
            seq.append(uncrop_points(m.decode(out), mats, S)[0])
        outs.append(np.stack(seq))
    return outs


@pytest.mark.parametrize("mode,gamma", [("off", 0.0), ("warm", 0.0), ("prox", 2.0)])
def test_runner_matches_frame_by_frame_reference(mode, gamma):
    m = StandIn()
    vids, boxes = _videos([5, 3, 7])
    cfg = RwRConfig(mode=mode, max_iter_full=6, max_iter_warm=1, max_iter_prox=2, gamma=gamma,
                    batch_size=2, crop_size=S)
    got = RwRRunner(m.solve(), cfg).run(vids, boxes, progress=False)
    ref = _reference(m, vids, boxes, mode, 6, 2 if mode == "prox" else 1, gamma)
    assert [g.shape for g in got] == [(5, K, 2), (3, K, 2), (7, K, 2)]
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-9)


def test_prox_gamma0_is_warm_and_large_gamma_sticks_to_previous():
    m = StandIn()
    vids, boxes = _videos([6])
    base = dict(max_iter_full=6, max_iter_warm=1, max_iter_prox=1, batch_size=1, crop_size=S)
    warm = RwRRunner(m.solve(), RwRConfig(mode="warm", **base)).run(vids, boxes, progress=False)[0]
    prox0 = RwRRunner(m.solve(), RwRConfig(mode="prox", gamma=0.0, **base)).run(vids, boxes, progress=False)[0]
    np.testing.assert_allclose(prox0, warm, rtol=0, atol=1e-12)
    # gamma -> inf: z*_t = z*_0 for all t, so crop-unit keypoints are frozen (frame points move only with the box)
    runner = RwRRunner(m.solve(), RwRConfig(mode="prox", gamma=1e9, **base))
    runner.run(vids, boxes, progress=False)
    warm_r = RwRRunner(m.solve(), RwRConfig(mode="warm", **base))
    warm_r.run(vids, boxes, progress=False)
    # compare the carried state through the returned landmarks in crop units
    from ldeq.data.crop import square_crop_affine, transform_points
    def crop_units(lm, bx):
        return np.stack([transform_points(p, square_crop_affine(b, S)) / S for p, b in zip(lm, bx)])
    prox_cu = crop_units(runner.collect()[0], boxes[0])
    warm_cu = crop_units(warm_r.collect()[0], boxes[0])
    assert np.abs(np.diff(prox_cu[1:], axis=0)).max() < 1e-6
    assert np.abs(np.diff(warm_cu[1:], axis=0)).max() > 1e-4


def test_batching_does_not_change_results():
    m = StandIn(1)
    vids, boxes = _videos([4, 9, 2, 6], seed=3)
    outs = [RwRRunner(m.solve(), RwRConfig(mode="warm", max_iter_full=5, batch_size=b, crop_size=S))
            .run(vids, boxes, progress=False) for b in (1, 3, 8)]
    for o in outs[1:]:
        for a, b in zip(outs[0], o):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_crop_mapping_hand_computed():
    # solve returns the crop centre (S-1)/2 and the crop corner 0 for every frame.
    def solve(images, z0, max_iter):
        B = images.shape[0]
        kp = torch.tensor([[(S - 1) / 2 / S] * 2, [0.0, 0.0]], dtype=torch.float64).expand(B, 2, 2)
        return kp, torch.zeros(B, 1)
    frames = [np.zeros((300, 200, 3), np.uint8)]
    boxes = [np.array([[10.0, 20.0, 110.0, 220.0]])]  # centre (60, 120), side 200 * 1.2 = 240
    out = RwRRunner(solve, RwRConfig(mode="off", crop_size=S)).run([frames], boxes, progress=False)[0]
    np.testing.assert_allclose(out[0, 0], [60.0, 120.0], atol=1e-9)
    scale = S / 240.0
    np.testing.assert_allclose(out[0, 1], [60.0 - (S - 1) / 2 / scale, 120.0 - (S - 1) / 2 / scale], atol=1e-9)


def test_no_face_frames_are_skipped_and_restart():
    m = StandIn()
    vids, boxes = _videos([6])
    boxes[0][2] = np.nan
    runner = RwRRunner(m.solve(), RwRConfig(mode="warm", max_iter_full=6, crop_size=S))
    out = runner.run(vids, boxes, progress=False)[0]
    assert np.isnan(out[2]).all() and np.isfinite(out[[0, 1, 3, 4, 5]]).all()
    assert runner.iters[0] == [6, 1, 0, 6, 1, 1]  # restart from zeros with the full budget after the gap
    # frames 3.. equal a fresh run on the clip that starts at frame 3
    fresh = RwRRunner(m.solve(), RwRConfig(mode="warm", max_iter_full=6, crop_size=S)).run(
        [vids[0][3:]], [boxes[0][3:]], progress=False)[0]
    np.testing.assert_allclose(out[3:], fresh, atol=1e-12)


def test_short_boxes_error_keeps_partial_results():
    m = StandIn()
    vids, boxes = _videos([5, 3])
    boxes[0] = boxes[0][:3]
    runner = RwRRunner(m.solve(), RwRConfig(mode="warm", crop_size=S, batch_size=2))
    with pytest.raises(BoxesTooShort, match="clipA.*3 boxes"):
        runner.run(vids, boxes, progress=False, names=["clipA", "clipB"])
    part = runner.collect()
    assert part[0].shape == (3, K, 2) and part[1].shape == (3, K, 2)


def test_bad_config_and_boxes():
    with pytest.raises(ValueError, match="mode"):
        RwRConfig(mode="recurrent")
    with pytest.raises(ValueError, match="gamma"):
        RwRConfig(gamma=-1)
    with pytest.raises(ValueError, match="max_iter_warm"):
        RwRConfig(max_iter_warm=0)
    with pytest.raises(ValueError, match="n_frames, 4"):
        RwRRunner(StandIn().solve()).run([[]], [np.zeros((3, 5))], progress=False)
    with pytest.raises(ValueError, match="anchor"):
        StandIn().solve()(torch.zeros(1, 3, S, S), None, 1, gamma=1.0)


def test_on_frame_called_in_order():
    m = StandIn()
    vids, boxes = _videos([3, 2])
    calls = []
    RwRRunner(m.solve(), RwRConfig(mode="off", max_iter_full=2, crop_size=S, batch_size=2)).run(
        vids, boxes, progress=False, on_frame=lambda v, t, f, p, b: calls.append((v, t)))
    assert [c for c in calls if c[0] == 0] == [(0, 0), (0, 1), (0, 2)]
    assert [c for c in calls if c[0] == 1] == [(1, 0), (1, 1)]
