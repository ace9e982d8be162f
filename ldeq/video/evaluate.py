"""The comparison table of the video pipeline: NME and NMF for each RwR mode (off / warm / prox) and
for each classic filter applied to the per-frame ('off') predictions.

``compare(solve, videos, boxes, gts, ...)`` runs everything and returns rows
``{'method', 'nme', 'nmf', 'n_videos', 'sec', 'frames'}``; ``format_table`` renders them as markdown.
"""
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from .._io import atomic_write_json
from .filters import filter_with_gaps, make_filter
from .metrics import dataset_video_metrics
from .rwr import RwRConfig, RwRRunner

# Default filter parameters for 30 fps video in pixel units (override with ``filters=``).
DEFAULT_FILTERS: Dict[str, dict] = {
    "moving_average": {"window": 5},
    "ema": {"alpha": 0.5},
    "one_euro": {"fps": 30.0, "min_cutoff": 1.0, "beta": 0.05, "d_cutoff": 1.0},
    "kalman": {"process_noise": 0.5, "measurement_noise": 4.0},
}


def compare(solve, videos: Sequence, boxes: Sequence, gts: Sequence, modes: Sequence[str] = ("off", "warm", "prox"),
            filters: Optional[Dict[str, dict]] = None, config: Optional[RwRConfig] = None, progress: bool = True,
            device="cpu", predictions: Optional[dict] = None) -> List[dict]:
    """Rows of NME / NMF per method. ``videos[i]`` must be re-iterable (a list, an array or a
    VideoReader) since every mode reads it again. Filters run on the 'off' predictions (computed
    even if 'off' is not in ``modes``). ``predictions``, if a dict, receives {method: [arrays]}."""
    filters = DEFAULT_FILTERS if filters is None else filters
    config = config or RwRConfig()
    preds: Dict[str, List[np.ndarray]] = {}
    rows = []
    need = list(modes) + (["off"] if filters and "off" not in modes else [])
    for mode in need:
        cfg = RwRConfig(**{**config.__dict__, "mode": mode})
        t0 = time.perf_counter()
        out = RwRRunner(solve, cfg, device).run(videos, boxes, progress=progress)
        sec = time.perf_counter() - t0
        gts_cut = [g[:len(p)] for p, g in zip(out, gts)]
        preds[mode] = out
        if mode in modes:
            rows.append({"method": mode, **dataset_video_metrics(out, gts_cut, ignore_nan=True), "sec": sec,
                         "frames": int(sum(len(p) for p in out))})
    for name, params in (filters or {}).items():
        f = make_filter(name, **params)
        out = [filter_with_gaps(f, p) for p in preds["off"]]
        preds[f"off+{name}"] = out
        rows.append({"method": f"off+{name}", "params": params,
                     **dataset_video_metrics(out, [g[:len(p)] for p, g in zip(out, gts)], ignore_nan=True)})
    if predictions is not None:
        predictions.update(preds)
    return rows


def format_table(rows: List[dict], baseline: str = "off") -> str:
    """Markdown table with NME, NMF and the NMF change relative to ``baseline``."""
    base = next((r for r in rows if r["method"] == baseline), None)
    lines = ["| method | NME (x100) | NMF | NMF vs off |", "|---|---:|---:|---:|"]
    for r in rows:
        rel = f"{100 * (r['nmf'] / base['nmf'] - 1):+.1f}%" if base and base["nmf"] > 0 else "-"
        lines.append(f"| {r['method']} | {r['nme']:.3f} | {r['nmf']:.2f} | {rel} |")
    return "\n".join(lines)


def write_json(path: str, obj) -> None:
    """Atomic JSON write (numpy scalars as floats)."""
    atomic_write_json(path, obj, indent=2, default=float)
