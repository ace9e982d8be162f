"""Video landmark metrics, exactly as in the LDEQ paper (reference section 4).

All inputs are landmark sequences in original frame pixels, shape (T, K, 2) as (x, y).

* Video NME: mean over frames and landmarks of ``100 * ||g - p|| / IOD`` with IOD the distance
  between the outer eye corners (0-based WFLW indices 60 and 72) of the ground truth in that frame.
* NMF (normalized mean flicker): with the error ``r_n = g_n - p_n`` of frame n and the face scale
  ``s_n = sqrt(w_n * h_n / 256^2)`` (w, h: extent of the ground-truth landmarks in frame n),
  ``NMF = RMS_{n>=1}( RMS_k( 100 * ||r_n,k - r_{n-1},k|| / s_n ) )``.
  A constant offset of the prediction costs nothing; a change of the error between frames does.

Both are computed per video; :func:`dataset_video_metrics` averages them over videos.
Computations run in float64 numpy.
"""
from typing import Dict, Sequence, Tuple

import numpy as np

WFLW_EYE_CORNERS: Tuple[int, int] = (60, 72)


def _as_seq(x, name: str) -> np.ndarray:
    try:
        a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: expected a numeric (T, K, 2) array, got {type(x).__name__}") from e
    if a.ndim != 3 or a.shape[-1] != 2:
        raise ValueError(f"{name}: expected shape (T, K, 2) of (x, y) landmarks, got {tuple(a.shape)}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name}: empty sequence, shape {tuple(a.shape)}")
    return a


def _check_pair(pred, gt, ignore_nan: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    p, g = _as_seq(pred, "pred"), _as_seq(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same (T, K, 2) shape, got pred {p.shape} and gt {g.shape}")
    if not np.isfinite(g).all():
        raise ValueError("gt: contains NaN/inf landmarks")
    if not np.isfinite(p).all() and not ignore_nan:
        bad = np.where(~np.isfinite(p).all(axis=(1, 2)))[0]
        raise ValueError(f"pred: NaN/inf landmarks in {len(bad)} frame(s), first at frame {int(bad[0])}")
    return p, g


def _valid_frames(p: np.ndarray) -> np.ndarray:
    return np.isfinite(p).all(axis=(1, 2))


def video_nme(pred, gt, eye_corners: Tuple[int, int] = WFLW_EYE_CORNERS, ignore_nan: bool = False) -> float:
    """Video NME (x100) of one video: mean over frames and landmarks of 100 ||g - p|| / IOD_frame.

    pred, gt: (T, K, 2) frame pixels. eye_corners: indices of the two points whose ground-truth
    distance normalises each frame (default WFLW outer eye corners 60, 72). ignore_nan: frames
    whose prediction has a NaN (skipped, no face) are left out instead of raising.
    """
    p, g = _check_pair(pred, gt, ignore_nan)
    ok = _valid_frames(p)
    if not ok.any():
        raise ValueError("pred: no frame with a finite prediction")
    p, g = p[ok], g[ok]
    i, j = eye_corners
    K = g.shape[1]
    if not (0 <= i < K and 0 <= j < K):
        raise ValueError(f"eye_corners {eye_corners} out of range for K={K} landmarks")
    iod = np.linalg.norm(g[:, i] - g[:, j], axis=-1)  # (T,)
    if (iod <= 0).any():
        raise ValueError(f"gt: zero inter-ocular distance at frame {int(np.argmin(iod))}")
    err = np.linalg.norm(g - p, axis=-1)  # (T, K)
    return float(np.mean(100.0 * err / iod[:, None]))


def face_scale(gt) -> np.ndarray:
    """(T,) ``s_n = sqrt(w_n h_n / 256^2)`` from the extent of the ground-truth landmarks per frame."""
    g = _as_seq(gt, "gt")
    ext = g.max(axis=1) - g.min(axis=1)  # (T, 2) = (w, h)
    s = np.sqrt(ext[:, 0] * ext[:, 1] / 256.0 ** 2)
    if (s <= 0).any():
        raise ValueError(f"gt: degenerate landmark extent (zero width or height) at frame {int(np.argmin(s))}")
    return s


def video_nmf(pred, gt, ignore_nan: bool = False) -> float:
    """NMF of one video (see module doc). pred, gt: (T, K, 2) frame pixels, T >= 2.

    ignore_nan: frame pairs (n-1, n) where either prediction has a NaN are left out.
    """
    p, g = _check_pair(pred, gt, ignore_nan)
    if g.shape[0] < 2:
        raise ValueError(f"NMF needs at least 2 frames, got T={g.shape[0]}")
    ok = _valid_frames(p)
    pair = ok[1:] & ok[:-1]
    if not pair.any():
        raise ValueError("pred: no two consecutive frames with finite predictions")
    r = g - p
    dr = np.linalg.norm(r[1:] - r[:-1], axis=-1)[pair]  # (n_pairs, K)
    s = face_scale(g)[1:][pair]  # scale of frame n for the change r_n - r_{n-1}
    per_frame = np.sqrt(np.mean((100.0 * dr / s[:, None]) ** 2, axis=1))  # RMS over landmarks
    return float(np.sqrt(np.mean(per_frame ** 2)))  # RMS over frames n >= 1


def dataset_video_metrics(preds: Sequence, gts: Sequence, eye_corners: Tuple[int, int] = WFLW_EYE_CORNERS,
                          ignore_nan: bool = False) -> Dict[str, float]:
    """Per-video NME and NMF averaged over videos: {'nme', 'nmf', 'n_videos'}.

    preds, gts: sequences of (T_i, K, 2) arrays (videos may have different lengths).
    """
    if len(preds) != len(gts):
        raise ValueError(f"got {len(preds)} predicted videos but {len(gts)} ground-truth videos")
    if len(preds) == 0:
        raise ValueError("no videos to evaluate")
    nme = [video_nme(p, g, eye_corners, ignore_nan) for p, g in zip(preds, gts)]
    nmf = [video_nmf(p, g, ignore_nan) for p, g in zip(preds, gts)]
    return {"nme": float(np.mean(nme)), "nmf": float(np.mean(nmf)), "n_videos": len(preds)}
