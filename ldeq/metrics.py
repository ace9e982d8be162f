"""Image landmark metrics for WFLW (reference section 4): NME, FR@10, AUC@10 and CED curves.

* NME (inter-ocular): per image ``sum_k ||p_k - g_k|| / (K * ||g_60 - g_72||)``; tables report x100.
* FR@10: percentage of images whose NME is above 0.10.
* AUC@10: integral over [0, 0.10] of the cumulative error distribution (CED), divided by 0.10,
  by Simpson's rule on the grid ``np.arange(0, 0.1 + 1e-4, 1e-4)`` (1001 points), as in the
  reference evaluation code.

Predictions and ground truth may be in any common unit (pixels or [0, 1] crop units): NME is
scale free. Inputs are numpy arrays or torch tensors of shape (N, K, 2).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from scipy.integrate import simpson

from ._io import atomic_savefig

__all__ = ["IOD_INDICES", "nme_per_image", "failure_rate", "auc", "ced_curve", "SplitMetrics",
           "split_metrics", "metrics_table", "format_table", "plot_ced"]

# 0-based outer eye corners of the 98-point WFLW mark-up.
IOD_INDICES = (60, 72)


def _as_points(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().double().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[-1] != 2:
        raise ValueError(f"{name}: expected landmarks of shape (N, K, 2), got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: landmarks contain NaN or inf")
    return a


def nme_per_image(pred, gt, iod_indices=IOD_INDICES) -> np.ndarray:
    """Per-image inter-ocular NME (a fraction, not x100).

    Args:
        pred, gt: ``(N, K, 2)`` (or ``(K, 2)``) landmark coordinates, same unit.
        iod_indices: the two ground-truth landmarks whose distance normalises the error.
    Returns:
        ``(N,)`` float64 array.
    """
    p, g = _as_points(pred, "pred"), _as_points(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got {p.shape} and {g.shape}")
    i, j = iod_indices
    if not (0 <= i < g.shape[1] and 0 <= j < g.shape[1]):
        raise ValueError(f"iod_indices {iod_indices} out of range for K={g.shape[1]} landmarks")
    iod = np.linalg.norm(g[:, i] - g[:, j], axis=-1)
    if (iod <= 0).any():
        bad = np.flatnonzero(iod <= 0)[:5].tolist()
        raise ValueError(f"gt: inter-ocular distance is zero for image(s) {bad}")
    return np.linalg.norm(p - g, axis=-1).mean(axis=1) / iod


def _as_nmes(nmes) -> np.ndarray:
    a = np.asarray(nmes, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise ValueError("nmes: expected at least one value")
    if not np.isfinite(a).all() or (a < 0).any():
        raise ValueError("nmes: expected finite non-negative values")
    return a


def ced_curve(nmes, threshold: float = 0.10, step: float = 1e-4):
    """Cumulative error distribution: ``(xs, ys)`` with ``ys[i] = mean(nmes <= xs[i])``."""
    a = _as_nmes(nmes)
    xs = np.arange(0, threshold + step, step)
    ys = np.searchsorted(np.sort(a), xs, side="right") / float(a.size)
    return xs, ys


def failure_rate(nmes, threshold: float = 0.10) -> float:
    """Fraction of images with NME > ``threshold`` (x100 for the usual FR@10 percentage)."""
    return float((_as_nmes(nmes) > threshold).mean())


def auc(nmes, threshold: float = 0.10, step: float = 1e-4) -> float:
    """Area under the CED on ``[0, threshold]`` divided by ``threshold`` (Simpson's rule)."""
    xs, ys = ced_curve(nmes, threshold, step)
    return float(simpson(ys, x=xs) / threshold)


@dataclass(frozen=True)
class SplitMetrics:
    """One table row. ``nme`` and ``fr`` are percentages, ``auc`` a fraction in [0, 1]."""
    split: str
    n: int
    nme: float
    fr: float
    auc: float


def split_metrics(split: str, pred=None, gt=None, nmes=None, threshold: float = 0.10) -> SplitMetrics:
    """Metrics of one split, from landmarks (``pred``, ``gt``) or from precomputed per-image ``nmes``."""
    if nmes is None:
        if pred is None or gt is None:
            raise ValueError("split_metrics: give pred and gt, or nmes")
        nmes = nme_per_image(pred, gt)
    a = _as_nmes(nmes)
    return SplitMetrics(split, int(a.size), 100.0 * float(a.mean()), 100.0 * failure_rate(a, threshold),
                        auc(a, threshold))


def metrics_table(per_split: dict) -> list:
    """``{split: per-image nmes}`` -> list of :class:`SplitMetrics`, in the dict's order."""
    return [split_metrics(name, nmes=v) for name, v in per_split.items()]


def format_table(rows) -> str:
    """Plain-text table: split, images, NME %, FR@10 %, AUC@10."""
    lines = [f"{'split':<18} {'images':>7} {'NME %':>7} {'FR@10 %':>8} {'AUC@10':>7}"]
    for r in rows:
        lines.append(f"{r.split:<18} {r.n:>7d} {r.nme:>7.2f} {r.fr:>8.2f} {r.auc:>7.4f}")
    return "\n".join(lines)


def plot_ced(per_split: dict, path, threshold: float = 0.10, title: str = "CED") -> str:
    """Write a PNG of the CED curves of ``{label: per-image nmes}`` to ``path`` (atomic write)."""
    import matplotlib
    matplotlib.use("Agg")  # headless: no display on CI or the training machine
    import matplotlib.pyplot as plt

    path = os.fspath(path)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    for label, nmes in per_split.items():
        xs, ys = ced_curve(nmes, threshold)
        ax.plot(100 * xs, ys, label=f"{label} (AUC {auc(nmes, threshold):.3f})")
    ax.set_xlabel("NME (%)")
    ax.set_ylabel("fraction of images")
    ax.set_xlim(0, 100 * threshold)
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title)
    return atomic_savefig(fig, path)
