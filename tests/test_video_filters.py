"""Temporal filter baselines against hand-computed values and independent scalar references."""
import math

import numpy as np
import pytest

from ldeq.video.filters import (EMA, ConstantVelocityKalman, MovingAverage, OneEuro, filter_with_gaps,
                                make_filter)


def test_moving_average_hand():
    out = MovingAverage(3).filter_sequence([1.0, 2.0, 3.0, 4.0, 5.0])
    np.testing.assert_allclose(out, [1.0, 1.5, 2.0, 3.0, 4.0])


def test_ema_hand():
    np.testing.assert_allclose(EMA(0.5).filter_sequence([0.0, 4.0, 4.0]), [0.0, 2.0, 3.0])


def test_one_euro_beta0_is_fixed_lowpass():
    # fps = 2 pi, cutoff 1 Hz -> tau = 1 / (2 pi), a = 1 / (1 + tau * fps) = 1/2 -> EMA(0.5)
    rng = np.random.default_rng(1)
    seq = rng.normal(size=(20, 4, 2))
    out = OneEuro(fps=2 * math.pi, min_cutoff=1.0, beta=0.0).filter_sequence(seq)
    np.testing.assert_allclose(out, EMA(0.5).filter_sequence(seq), rtol=1e-12)


def _one_euro_scalar(xs, fps, min_cutoff, beta, d_cutoff):
    """Straight transcription of Casiez et al.'s pseudocode for one scalar signal."""
    def alpha(c):
        te = 1.0 / fps
        tau = 1.0 / (2 * math.pi * c)
        return 1.0 / (1.0 + tau / te)
    out, x_prev, dx_prev = [], None, 0.0
    for x in xs:
        if x_prev is None:
            x_prev = x
            out.append(x)
            continue
        dx = (x - x_prev) * fps
        edx = alpha(d_cutoff) * dx + (1 - alpha(d_cutoff)) * dx_prev
        c = min_cutoff + beta * abs(edx)
        x_hat = alpha(c) * x + (1 - alpha(c)) * x_prev
        out.append(x_hat)
        x_prev, dx_prev = x_hat, edx
    return out


def test_one_euro_matches_scalar_reference():
    rng = np.random.default_rng(2)
    seq = np.cumsum(rng.normal(scale=3.0, size=(40, 3, 2)), axis=0)
    f = OneEuro(fps=30.0, min_cutoff=0.7, beta=0.05, d_cutoff=1.3)
    out = f.filter_sequence(seq)
    for k in range(3):
        for c in range(2):
            ref = _one_euro_scalar(seq[:, k, c], 30.0, 0.7, 0.05, 1.3)
            np.testing.assert_allclose(out[:, k, c], ref, rtol=1e-12)


def _kalman_matrix(zs, q, r, dt, v0):
    """Textbook matrix Kalman filter for one scalar measurement stream."""
    F = np.array([[1, dt], [0, 1]], float)
    H = np.array([[1.0, 0.0]])
    Q = q * np.array([[dt ** 3 / 3, dt ** 2 / 2], [dt ** 2 / 2, dt]])
    x = np.array([[zs[0]], [0.0]])
    P = np.diag([r, v0])
    out = [zs[0]]
    for z in zs[1:]:
        x = F @ x
        P = F @ P @ F.T + Q
        S = H @ P @ H.T + r
        K = P @ H.T @ np.linalg.inv(S)
        x = x + K @ (np.array([[z]]) - H @ x)
        P = (np.eye(2) - K @ H) @ P
        out.append(x[0, 0])
    return out


def test_kalman_matches_matrix_reference():
    rng = np.random.default_rng(3)
    seq = np.cumsum(rng.normal(size=(30, 5, 2)), axis=0)
    out = ConstantVelocityKalman(process_noise=0.3, measurement_noise=2.0, dt=0.5,
                                 initial_velocity_var=10.0).filter_sequence(seq)
    for k in range(5):
        for c in range(2):
            ref = _kalman_matrix(seq[:, k, c], 0.3, 2.0, 0.5, 10.0)
            np.testing.assert_allclose(out[:, k, c], ref, rtol=1e-10, atol=1e-10)


def test_kalman_tracks_ramp_without_lag():
    # A constant-velocity model has no steady-state lag on a noiseless ramp.
    ramp = np.arange(200, dtype=float)[:, None] * 1.5
    out = ConstantVelocityKalman(process_noise=0.01, measurement_noise=1.0).filter_sequence(ramp)
    assert abs(out[-1, 0] - ramp[-1, 0]) < 1e-3
    ema = EMA(0.3).filter_sequence(ramp)
    assert abs(ema[-1, 0] - ramp[-1, 0]) > 1.0  # whereas an EMA lags


def test_filters_reduce_jitter_on_noisy_constant():
    rng = np.random.default_rng(4)
    seq = 5.0 + rng.normal(size=(300, 10, 2))
    for name, kw in [("moving_average", {"window": 5}), ("ema", {"alpha": 0.3}),
                     ("one_euro", {"min_cutoff": 1.0}), ("kalman", {"process_noise": 1e-3})]:
        out = make_filter(name, **kw).filter_sequence(seq)
        assert np.diff(out[50:], axis=0).std() < 0.7 * np.diff(seq[50:], axis=0).std(), name


def test_filter_with_gaps_restarts_each_run():
    seq = np.array([1.0, 3.0, np.nan, 10.0, 20.0])[:, None]
    out = filter_with_gaps(EMA(0.5), seq)
    np.testing.assert_allclose(out[[0, 1, 3, 4], 0], [1.0, 2.0, 10.0, 15.0])
    assert np.isnan(out[2, 0])


def test_filter_with_gaps_passes_per_frame_arrays_run_by_run():
    from ldeq.video.filters import MotionKalman
    rng = np.random.default_rng(0)
    seq = rng.normal(size=(9, 3, 2)) * 5
    seq[4] = np.nan
    scales = rng.uniform(50, 100, size=9)
    out = filter_with_gaps(MotionKalman(0.1, 0.01), seq, scales)
    for a, b in ((0, 4), (5, 9)):  # each run from a fresh state, with its own frames' scales
        np.testing.assert_array_equal(out[a:b], MotionKalman(0.1, 0.01).filter_sequence(seq[a:b], scales[a:b]))
    assert np.isnan(out[4]).all()


def test_bad_parameters_and_input():
    with pytest.raises(ValueError, match="window"):
        MovingAverage(0)
    with pytest.raises(ValueError, match="alpha"):
        EMA(1.5)
    with pytest.raises(ValueError, match="min_cutoff"):
        OneEuro(min_cutoff=0)
    with pytest.raises(ValueError, match="measurement_noise"):
        ConstantVelocityKalman(measurement_noise=-1)
    with pytest.raises(ValueError, match="unknown filter"):
        make_filter("median")
    with pytest.raises(ValueError, match="NaN"):
        EMA(0.5).filter_sequence([1.0, np.nan])


# ----------------------------------------------------------------------------- MotionKalman (issue 15)
def test_motion_kalman_without_gate_is_the_kalman():
    from ldeq.video.filters import ConstantVelocityKalman, MotionKalman
    rng = np.random.default_rng(0)
    seq = np.cumsum(rng.normal(size=(40, 5, 2)), axis=0)
    ref = ConstantVelocityKalman(process_noise=0.3, measurement_noise=1.0).filter_sequence(seq)
    got = MotionKalman(process_noise=0.3, gate=1e12).filter_sequence(seq)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)


def test_motion_kalman_follows_a_jump_sooner_and_smooths_jitter_alike():
    from ldeq.video.filters import ConstantVelocityKalman, MotionKalman
    rng = np.random.default_rng(1)
    truth = np.zeros((60, 4, 2))
    truth[30:] += 40.0  # a jump of 40 px (scale 100 px: 0.4 face scales)
    seq = truth + rng.normal(scale=1.0, size=truth.shape)
    plain = ConstantVelocityKalman(process_noise=0.01, measurement_noise=1.0).filter_sequence(seq)
    gated = MotionKalman(process_noise=0.01, gate=0.02).filter_sequence(seq, np.full(60, 100.0))
    err = lambda y, a, b: np.abs(y[a:b] - truth[a:b]).mean()  # noqa: E731
    assert err(gated, 30, 36) < 0.4 * err(plain, 30, 36)
    # before the jump the innovations are noise (e ~ 0.015, about the gate): about the same smoothing
    assert err(gated, 10, 30) < 1.5 * err(plain, 10, 30)
    assert err(gated, 10, 30) < 0.7 * np.abs(seq[10:30] - truth[10:30]).mean()


def test_motion_kalman_errors():
    from ldeq.video.filters import MotionKalman, make_filter
    with pytest.raises(ValueError, match="gate"):
        MotionKalman(gate=0.0)
    with pytest.raises(ValueError, match="process_noise"):
        make_filter("motion_kalman", process_noise=-1.0)
    with pytest.raises(ValueError, match="scale"):
        MotionKalman().step(np.zeros((3, 2)), scale=0.0)
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        MotionKalman().step(np.zeros((3, 3)))
