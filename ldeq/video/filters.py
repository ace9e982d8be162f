"""Classic temporal filters applied to per-frame landmark predictions (the baselines RwR is
compared against). All are causal (online): the output at frame t uses frames <= t only, as a
live tracker would. Each filter works on any array shape (typically (K, 2) per frame) and every
coordinate is filtered independently.

Use ``f = make_filter('one_euro', fps=30, min_cutoff=1.0, beta=0.01)`` then
``f.filter_sequence(seq)`` on a (T, K, 2) array, or ``f.reset(); f.step(x)`` frame by frame.

* ``moving_average(window)``: mean of the last ``window`` frames (fewer at the start).
* ``ema(alpha)``: y_t = alpha x_t + (1 - alpha) y_{t-1}, y_0 = x_0.
* ``one_euro(fps, min_cutoff, beta, d_cutoff)``: Casiez et al. (CHI 2012). Speed-adaptive low-pass:
  the cutoff is ``min_cutoff + beta * |dx/dt|`` (Hz, units of the input per second), smoothing
  factor ``a = 1 / (1 + fps / (2 pi cutoff))``; dx/dt itself is low-passed at ``d_cutoff``.
* ``kalman(process_noise, measurement_noise, dt)``: constant-velocity Kalman filter per coordinate,
  state (position, velocity), F = [[1, dt], [0, 1]], H = [1, 0], white-acceleration process noise
  Q = q [[dt^3/3, dt^2/2], [dt^2/2, dt]], R = r; initialised at the first measurement with zero
  velocity and covariance diag(r, initial_velocity_var).
* ``motion_kalman(process_noise, gate)``: the same model with r = 1 and a per-landmark process noise
  that grows with the landmark's innovation relative to the face scale (:class:`MotionKalman`; the
  output stage of RwR mode 'adaptive', not one of the four baselines).
"""
import math
from typing import Dict

import numpy as np


class Filter:
    """Base class: ``reset()``, ``step(x) -> y`` (one frame), ``filter_sequence((T, ...)) -> (T, ...)``."""
    name = "filter"

    def reset(self) -> None:
        raise NotImplementedError

    def step(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def filter_sequence(self, seq) -> np.ndarray:
        """Filters a whole (T, ...) sequence from a fresh state. Frames must be finite."""
        seq = np.asarray(seq, dtype=np.float64)
        if seq.ndim < 1 or seq.shape[0] == 0:
            raise ValueError(f"{self.name}: expected a non-empty (T, ...) sequence, got shape {seq.shape}")
        if not np.isfinite(seq).all():
            raise ValueError(f"{self.name}: sequence contains NaN/inf; filter each finite run separately")
        self.reset()
        return np.stack([self.step(x) for x in seq])

    def params(self) -> Dict[str, float]:
        return {}

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.params().items())})"


class MovingAverage(Filter):
    name = "moving_average"

    def __init__(self, window: int = 5):
        if int(window) != window or window < 1:
            raise ValueError(f"moving_average: window must be an integer >= 1, got {window}")
        self.window = int(window)
        self.reset()

    def reset(self):
        self._buf = []

    def step(self, x):
        self._buf.append(np.asarray(x, dtype=np.float64))
        if len(self._buf) > self.window:
            self._buf.pop(0)
        return np.mean(self._buf, axis=0)

    def params(self):
        return {"window": self.window}


class EMA(Filter):
    name = "ema"

    def __init__(self, alpha: float = 0.5):
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"ema: alpha must be in (0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.reset()

    def reset(self):
        self._y = None

    def step(self, x):
        x = np.asarray(x, dtype=np.float64)
        self._y = x.copy() if self._y is None else self.alpha * x + (1.0 - self.alpha) * self._y
        return self._y.copy()

    def params(self):
        return {"alpha": self.alpha}


def _lowpass_alpha(cutoff, fps: float):
    # Exponential smoothing factor of a first-order low-pass at `cutoff` Hz sampled at `fps`.
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau * fps)


class OneEuro(Filter):
    name = "one_euro"

    def __init__(self, fps: float = 30.0, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0):
        for k, v in (("fps", fps), ("min_cutoff", min_cutoff), ("d_cutoff", d_cutoff)):
            if not v > 0:
                raise ValueError(f"one_euro: {k} must be > 0, got {v}")
        if beta < 0:
            raise ValueError(f"one_euro: beta must be >= 0, got {beta}")
        self.fps, self.min_cutoff, self.beta, self.d_cutoff = float(fps), float(min_cutoff), float(beta), float(d_cutoff)
        self.reset()

    def reset(self):
        self._x = None
        self._dx = None

    def step(self, x):
        x = np.asarray(x, dtype=np.float64)
        if self._x is None:
            self._x, self._dx = x.copy(), np.zeros_like(x)
            return x.copy()
        dx = (x - self._x) * self.fps
        a_d = _lowpass_alpha(self.d_cutoff, self.fps)
        self._dx = a_d * dx + (1 - a_d) * self._dx
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx)
        a = _lowpass_alpha(cutoff, self.fps)
        self._x = a * x + (1 - a) * self._x
        return self._x.copy()

    def params(self):
        return {"fps": self.fps, "min_cutoff": self.min_cutoff, "beta": self.beta, "d_cutoff": self.d_cutoff}


class ConstantVelocityKalman(Filter):
    name = "kalman"

    def __init__(self, process_noise: float = 1.0, measurement_noise: float = 4.0, dt: float = 1.0,
                 initial_velocity_var: float = 100.0):
        for k, v in (("process_noise", process_noise), ("measurement_noise", measurement_noise), ("dt", dt),
                     ("initial_velocity_var", initial_velocity_var)):
            if not v > 0:
                raise ValueError(f"kalman: {k} must be > 0, got {v}")
        self.q, self.r, self.dt, self.v0 = float(process_noise), float(measurement_noise), float(dt), float(initial_velocity_var)
        dt = self.dt
        self.F = np.array([[1.0, dt], [0.0, 1.0]])
        self.Q = self.q * np.array([[dt ** 3 / 3, dt ** 2 / 2], [dt ** 2 / 2, dt]])
        self.reset()

    def reset(self):
        self._pos = self._vel = None
        self._P = None

    def step(self, z):
        z = np.asarray(z, dtype=np.float64)
        if self._pos is None:
            self._pos, self._vel = z.copy(), np.zeros_like(z)
            self._P = np.diag([self.r, self.v0])
            return z.copy()
        # Every coordinate shares F, Q, H, R and the initial P, so one 2x2 covariance serves all.
        pos = self._pos + self.dt * self._vel
        vel = self._vel
        P = self.F @ self._P @ self.F.T + self.Q
        S = P[0, 0] + self.r
        k_pos, k_vel = P[0, 0] / S, P[1, 0] / S
        innov = z - pos
        self._pos = pos + k_pos * innov
        self._vel = vel + k_vel * innov
        K = np.array([[k_pos], [k_vel]])
        self._P = (np.eye(2) - K @ np.array([[1.0, 0.0]])) @ P
        return self._pos.copy()

    def params(self):
        return {"process_noise": self.q, "measurement_noise": self.r, "dt": self.dt}


FILTERS = {"moving_average": MovingAverage, "ema": EMA, "one_euro": OneEuro, "kalman": ConstantVelocityKalman}


def make_filter(name: str, **params) -> Filter:
    """Builds a filter by name ('moving_average', 'ema', 'one_euro', 'kalman', 'motion_kalman') with its
    parameters."""
    if name not in FILTERS:
        raise ValueError(f"unknown filter {name!r}; expected one of {sorted(FILTERS)}")
    return FILTERS[name](**params)


def filter_with_gaps(filt: Filter, seq, *per_frame) -> np.ndarray:
    """Filters a (T, ...) sequence in which whole frames may be NaN (no face): each finite run is
    filtered from a fresh state and NaN frames stay NaN. ``per_frame``: further (T, ...) arrays
    sliced like ``seq`` and passed on to ``filter_sequence`` (e.g. MotionKalman's face scales)."""
    seq = np.asarray(seq, dtype=np.float64)
    out = np.full_like(seq, np.nan)
    ok = np.isfinite(seq.reshape(len(seq), -1)).all(axis=1)
    t = 0
    while t < len(seq):
        if not ok[t]:
            t += 1
            continue
        e = t
        while e < len(seq) and ok[e]:
            e += 1
        out[t:e] = filt.filter_sequence(seq[t:e], *(a[t:e] for a in per_frame))
        t = e
    return out


class MotionKalman(Filter):
    """Innovation-gated constant-velocity Kalman (the output stage of RwR mode 'adaptive').

    Per coordinate the model of :class:`ConstantVelocityKalman` with measurement noise r = 1, but
    the process noise of landmark k at frame t grows with its innovation (measured minus predicted
    position, relative to the face scale):

        e_k = ||x_k - x_pred_k|| / scale_t,     q_k = q (1 + (e_k / gate)^2)

    so a landmark that jumps (a head turn, a cut-like jump) is followed within a frame or two,
    while one that only jitters around a slow trajectory is smoothed as by a plain Kalman of
    process noise q. ``step(x, scale)`` takes the face scale of the frame (RwR passes the crop side
    in frame pixels; default 1.0, i.e. ``gate`` in the units of x); x is (K, 2) (or (..., 2)).
    A very large gate gives the plain Kalman with process noise q.
    """
    name = "motion_kalman"

    def __init__(self, process_noise: float = 1.0, gate: float = 0.02, initial_velocity_var: float = 100.0):
        for k, v in (("process_noise", process_noise), ("gate", gate), ("initial_velocity_var", initial_velocity_var)):
            if not v > 0:
                raise ValueError(f"motion_kalman: {k} must be > 0, got {v}")
        self.q, self.gate, self.v0 = float(process_noise), float(gate), float(initial_velocity_var)
        self.reset()

    def reset(self):
        self._x = None

    def step(self, x, scale: float = 1.0):
        x = np.asarray(x, dtype=np.float64)
        if x.ndim < 1 or x.shape[-1] != 2:
            raise ValueError(f"motion_kalman: expected points (..., 2), got shape {x.shape}")
        if not scale > 0:
            raise ValueError(f"motion_kalman: scale must be > 0, got {scale}")
        if self._x is None:
            self._x, self._v = x.copy(), np.zeros_like(x)
            self._p00, self._p01, self._p11 = np.ones_like(x), np.zeros_like(x), np.full_like(x, self.v0)
            return x.copy()
        xp = self._x + self._v
        nu = x - xp
        e = np.linalg.norm(nu, axis=-1, keepdims=True) / scale
        q = self.q * (1.0 + (e / self.gate) ** 2)
        # P <- F P F^T + Q (F = [[1, 1], [0, 1]], Q = q [[1/3, 1/2], [1/2, 1]]), then the update with H = [1, 0]
        a00 = self._p00 + 2 * self._p01 + self._p11 + q / 3
        a01 = self._p01 + self._p11 + q / 2
        a11 = self._p11 + q
        k0, k1 = a00 / (a00 + 1.0), a01 / (a00 + 1.0)
        self._x, self._v = xp + k0 * nu, self._v + k1 * nu
        self._p00, self._p01, self._p11 = (1 - k0) * a00, (1 - k0) * a01, a11 - k1 * a01
        return self._x.copy()

    def filter_sequence(self, seq, scales=None) -> np.ndarray:
        """(T, ..., 2) -> filtered, with per-frame face scales (T,) (default 1)."""
        seq = np.asarray(seq, dtype=np.float64)
        if seq.ndim < 2 or seq.shape[0] == 0:
            raise ValueError(f"{self.name}: expected a non-empty (T, ..., 2) sequence, got shape {seq.shape}")
        if not np.isfinite(seq).all():
            raise ValueError(f"{self.name}: sequence contains NaN/inf; filter each finite run separately")
        scales = np.ones(len(seq)) if scales is None else np.asarray(scales, dtype=np.float64)
        self.reset()
        return np.stack([self.step(x, s) for x, s in zip(seq, scales)])

    def params(self):
        return {"process_noise": self.q, "gate": self.gate}


FILTERS["motion_kalman"] = MotionKalman
