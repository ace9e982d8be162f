"""RwR mode 'adaptive' (issue 15): the state warp between crops, the per-landmark gamma of the
solve contract, and the runner against a frame-by-frame reference, on a small stand-in DEQ whose
state is a stack of heatmaps (so it can be warped and soft-argmax decoded)."""
import numpy as np
import pytest
import torch

from ldeq.data.crop import transform_points
from ldeq.video.rwr import CellSolve, RwRConfig, RwRRunner, crop_batch, uncrop_points, warp_states

S = 32      # crop side (pixels)
H = 16      # state map side
K = 3       # landmarks = state channels


def softargmax(z):
    """(B, K, H, H) -> (B, K, 2) crop units, x = sum(p * col) / H (the model's decode convention)."""
    p = torch.softmax(8.0 * z.flatten(2), -1).view_as(z)
    r = torch.arange(H, dtype=z.dtype)
    return torch.stack([(p.sum(2) * r).sum(-1), (p.sum(3) * r).sum(-1)], -1) / H


class MapStandIn:
    """f(z; x) = 0.5 z + 0.5 u(x): u is a fixed random projection of the pooled image into K maps,
    so the fixed point is u(x) and every iteration halves the distance to it."""

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.U = torch.randn(K * H * H, 3 * 8 * 8, generator=g, dtype=torch.float64) / 8

    def inject(self, images):
        return torch.nn.functional.adaptive_avg_pool2d(images.double(), 8).flatten(1)

    def cell(self, z, x):
        return 0.5 * z + 0.5 * (x @ self.U.T).view(-1, K, H, H)

    def solve(self):
        return CellSolve(self.inject, self.cell, softargmax, lambda x: x.new_zeros(x.shape[0], K, H, H))


def _videos(lengths, seed=0, move=1.0):
    rng = np.random.default_rng(seed)
    vids, boxes = [], []
    for T in lengths:
        base = rng.integers(0, 255, size=(48, 64, 3)).astype(np.float64)
        vids.append([np.clip(base + rng.normal(scale=20, size=base.shape), 0, 255).astype(np.uint8) for _ in range(T)])
        c = np.array([30.0, 24.0]) + move * rng.normal(size=(T, 2))
        boxes.append(np.concatenate([c - 12, c + 12], axis=1))
    return vids, boxes


def _affine(shift=(0.0, 0.0), scale=1.0):
    return np.array([[scale, 0.0, -shift[0]], [0.0, scale, -shift[1]]])


# ----------------------------------------------------------------------------- warp_states
def test_warp_identity_and_integer_shift():
    z = torch.rand(2, K, H, H, dtype=torch.float64)
    m = np.stack([_affine((3.0, 4.0))] * 2)
    assert warp_states(z, m, m, S) is z
    # the new crop starts 4 crop px (= 2 map px) further right: content moves 2 map px left
    out = warp_states(z, m, np.stack([_affine((7.0, 4.0))] * 2), S)
    torch.testing.assert_close(out[..., :, :H - 2], z[..., :, 2:], rtol=0, atol=1e-12)
    # beyond the edge: the border value
    torch.testing.assert_close(out[..., :, H - 1], z[..., :, H - 1], rtol=0, atol=1e-12)


def test_warp_moves_a_decoded_point_to_the_same_frame_point():
    """A peak at frame point P seen in crop A decodes, after the warp into crop B, at P's coordinates
    in crop B (up to the smoothing of bilinear resampling)."""
    P = np.array([[40.0, 30.0]])
    mA, mB = _affine((20.0, 14.0), 1.0), _affine((25.0, 10.0), 1.1)  # B is shifted and zoomed
    u = transform_points(P, mA)[0] / S * H                           # P in map pixels of crop A
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(H, dtype=torch.float64), indexing="ij")
    z = (-((xx - u[0]) ** 2 + (yy - u[1]) ** 2) / 2.0).expand(1, K, H, H).contiguous()
    kpA = softargmax(z)[0, 0].numpy()
    np.testing.assert_allclose(kpA, transform_points(P, mA)[0] / S, atol=0.01)
    kpB = softargmax(warp_states(z, mA[None], mB[None], S))[0, 0].numpy()
    np.testing.assert_allclose(kpB, transform_points(P, mB)[0] / S, atol=0.01)
    assert np.abs(kpB - kpA).max() > 0.1  # the point did move in crop units


def test_warp_bad_shapes():
    with pytest.raises(ValueError, match="states"):
        warp_states(torch.zeros(2, 6), np.zeros((2, 2, 3)), np.zeros((2, 2, 3)), S)
    with pytest.raises(ValueError, match="affines"):
        warp_states(torch.zeros(2, K, H, H), np.zeros((1, 2, 3)), np.zeros((2, 2, 3)), S)


# ----------------------------------------------------------------------------- tensor gamma
def test_tensor_gamma_matches_float_and_is_per_landmark():
    m = MapStandIn()
    solve = m.solve()
    images = torch.rand(2, 3, S, S)
    anchor = torch.rand(2, K, H, H, dtype=torch.float64)
    z0 = torch.rand(2, K, H, H, dtype=torch.float64)
    ref = solve(images, z0, 2, gamma=1.5, anchor=anchor)
    for g in (torch.full((2, 1), 1.5), torch.full((2, K), 1.5, dtype=torch.float64)):
        got = solve(images, z0, 2, gamma=g, anchor=anchor)
        torch.testing.assert_close(got[1], ref[1], rtol=0, atol=1e-12)
    # an enormous weight on landmark 1 of sample 0 only freezes that channel at the anchor
    g = torch.zeros(2, K, dtype=torch.float64)
    g[0, 1] = 1e12
    kp, out = solve(images, anchor, 3, gamma=g, anchor=anchor)
    torch.testing.assert_close(out[0, 1], anchor[0, 1], rtol=0, atol=1e-9)
    assert (out[0, 0] - anchor[0, 0]).abs().max() > 1e-3 and (out[1, 1] - anchor[1, 1]).abs().max() > 1e-3
    warm = solve(images, anchor, 3)
    torch.testing.assert_close(out[0, 0], warm[1][0, 0], rtol=0, atol=1e-12)


def test_bad_gamma_tensors():
    solve = MapStandIn().solve()
    images, a = torch.rand(2, 3, S, S), torch.rand(2, K, H, H, dtype=torch.float64)
    with pytest.raises(ValueError, match="gamma"):
        solve(images, a, 1, gamma=torch.ones(2, K + 1), anchor=a)
    with pytest.raises(ValueError, match="gamma"):
        solve(images, a, 1, gamma=-torch.ones(2, 1), anchor=a)
    with pytest.raises(ValueError, match="gamma_speed"):
        solve(images, a, 1, gamma=1.0, anchor=a, gamma_speed=0.0)
    with pytest.raises(ValueError, match="anchor"):
        solve(images, a, 1, gamma=1.0, gamma_speed=0.1)


def test_gamma_speed_limits():
    """gamma_speed -> inf: plain prox with gamma; gamma_speed -> 0: warm (no memory); and the first
    step reuses f(anchor) so the cost is the prox cost."""
    m = MapStandIn()
    calls = []
    cell = m.cell
    m.cell = lambda z, x: (calls.append(1), cell(z, x))[1]
    solve = m.solve()
    images, a = torch.rand(2, 3, S, S), torch.rand(2, K, H, H, dtype=torch.float64)
    prox = solve(images, a, 2, gamma=3.0, anchor=a)
    calls.clear()
    far = solve(images, a, 2, gamma=3.0, anchor=a, gamma_speed=1e9)
    assert len(calls) == 3  # f(anchor), one more prox step, the final step: as prox
    torch.testing.assert_close(far[1], prox[1], rtol=0, atol=1e-12)
    near = solve(images, a, 2, gamma=3.0, anchor=a, gamma_speed=1e-9)
    torch.testing.assert_close(near[1], solve(images, a, 2)[1], rtol=0, atol=1e-9)


# ----------------------------------------------------------------------------- the runner
def _reference(m, vids, boxes, full, iters, gamma, speed):
    """Frame by frame from the definitions (rwr module doc, mode 'adaptive')."""
    outs = []
    for frames, bx in zip(vids, boxes):
        z_prev, m_prev, seq = None, None, []
        for frame, box in zip(frames, bx):
            images, mats = crop_batch([frame], [box], S)
            x = m.inject(images)
            if z_prev is None:
                z = torch.zeros(1, K, H, H, dtype=torch.float64)
                for _ in range(full):
                    z = m.cell(z, x)
                out = m.cell(z, x)
            else:
                a = warp_states(z_prev, m_prev, mats, S)
                q = m.cell(a, x)
                d = (softargmax(q) - softargmax(a)).norm(dim=-1)
                g = (gamma / (1 + (d / speed) ** 2)).view(1, K, 1, 1)
                T = lambda z: (m.cell(z, x) + g * a) / (1 + g)  # noqa: E731
                z = (q + g * a) / (1 + g)
                for _ in range(iters - 1):
                    z = T(z)
                out = T(z)
            z_prev, m_prev = out, mats
            seq.append(uncrop_points(softargmax(out), mats, S)[0])
        outs.append(np.stack(seq))
    return outs


def test_runner_adaptive_matches_reference_and_batching():
    m = MapStandIn()
    vids, boxes = _videos([5, 3, 6])
    ref = _reference(m, vids, boxes, 4, 2, 3.0, 0.05)
    for b in (1, 2, 3):
        cfg = RwRConfig(mode="adaptive", max_iter_full=4, max_iter_adaptive=2, adaptive_gamma=3.0,
                        adaptive_speed=0.05, adaptive_q=0.0, batch_size=b, crop_size=S)
        got = RwRRunner(m.solve(), cfg).run(vids, boxes, progress=False)
        for g, r in zip(got, ref):
            np.testing.assert_allclose(g, r, rtol=0, atol=1e-9)


def test_adaptive_static_boxes_far_speed_is_prox():
    m = MapStandIn()
    vids, boxes = _videos([6], move=0.0)
    base = dict(max_iter_full=4, batch_size=1, crop_size=S)
    prox = RwRRunner(m.solve(), RwRConfig(mode="prox", gamma=2.0, max_iter_prox=1, **base)).run(vids, boxes, progress=False)
    ada = RwRRunner(m.solve(), RwRConfig(mode="adaptive", adaptive_gamma=2.0, adaptive_speed=1e9, adaptive_q=0.0,
                                         **base)).run(
        vids, boxes, progress=False)
    np.testing.assert_allclose(ada[0], prox[0], rtol=0, atol=1e-9)


def test_output_stage_is_the_motion_kalman_on_each_run():
    """adaptive_q > 0: the landmarks of each face run (restarted at a gap) go through MotionKalman
    with the crop side as the scale; adaptive_q = 0 leaves them as the state decodes them."""
    from ldeq.data.crop import square_crop_affine
    from ldeq.video.filters import MotionKalman
    from ldeq.video.rwr import crop_sides
    m = MapStandIn()
    vids, boxes = _videos([7, 5])
    boxes[0][3] = np.nan
    base = dict(mode="adaptive", max_iter_full=4, adaptive_gamma=2.0, adaptive_speed=0.05, crop_size=S, batch_size=2)
    raw = RwRRunner(m.solve(), RwRConfig(adaptive_q=0.0, **base)).run(vids, boxes, progress=False)
    got = RwRRunner(m.solve(), RwRConfig(adaptive_q=0.5, adaptive_gate=0.03, **base)).run(vids, boxes, progress=False)
    assert RwRConfig(adaptive_q=0.0, **base).output_filter() is None and RwRConfig().output_filter() is None
    for r, g, bx in zip(raw, got, boxes):
        for a, e in ((0, 3), (4, len(r))) if len(r) == 7 else ((0, len(r)),):
            sides = crop_sides(np.stack([square_crop_affine(b, S) for b in bx[a:e]]), S)
            ref = MotionKalman(0.5, 0.03).filter_sequence(r[a:e], sides)
            np.testing.assert_allclose(g[a:e], ref, rtol=0, atol=1e-9)
            assert np.abs(g[a + 1:e] - r[a + 1:e]).max() > 1e-6  # the stage does something
    assert np.isnan(got[0][3]).all()


def test_adaptive_config_errors():
    with pytest.raises(ValueError, match="adaptive_speed"):
        RwRConfig(mode="adaptive", adaptive_speed=0.0)
    with pytest.raises(ValueError, match="adaptive_gamma"):
        RwRConfig(mode="adaptive", adaptive_gamma=-1.0)
    with pytest.raises(ValueError, match="max_iter_adaptive"):
        RwRConfig(mode="adaptive", max_iter_adaptive=0)
    with pytest.raises(ValueError, match="adaptive_q"):
        RwRConfig(mode="adaptive", adaptive_q=-1.0)
    with pytest.raises(ValueError, match="adaptive_gate"):
        RwRConfig(mode="adaptive", adaptive_gate=0.0)
