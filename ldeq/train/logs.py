"""Metrics on disk (JSONL + CSV, one row per logged step, flushed at once so an interrupted run
keeps its history), TensorBoard when the package is installed, and the loss/NME curves PNG."""
import csv
import io
import json
import os
import warnings
from typing import Dict, List, Optional

from .._io import atomic_savefig, atomic_write_text




class MetricsWriter:
    """Appends rows to ``metrics.jsonl`` (everything) and to CSV files: training rows (those with a
    'loss') to ``metrics.csv``, evaluation rows to ``eval.csv``.

    ``truncate_after`` (the resumed step) drops rows logged after the checkpoint, so a resumed run's
    files hold one uninterrupted history. A CSV's columns are fixed by its first row.
    """

    def __init__(self, out_dir: str, truncate_after: Optional[int] = None, tensorboard: bool = True):
        os.makedirs(out_dir, exist_ok=True)
        self.jsonl_path = os.path.join(out_dir, "metrics.jsonl")
        self.csv_paths = {"train": os.path.join(out_dir, "metrics.csv"), "eval": os.path.join(out_dir, "eval.csv")}
        self.csv_path = self.csv_paths["train"]
        rows = read_metrics(self.jsonl_path) if os.path.exists(self.jsonl_path) else []
        if truncate_after is None:
            rows = []
        else:
            rows = [r for r in rows if r.get("step", -1) <= truncate_after]
        self._columns: Dict[str, Optional[List[str]]] = {}
        self._rewrite(rows)
        self._tb = _tensorboard(out_dir) if tensorboard else None

    @staticmethod
    def _kind(row: dict) -> str:
        return "train" if "loss" in row else "eval"

    def _rewrite(self, rows: List[dict]) -> None:
        # Rewritten through temp files: a kill here leaves the old files intact.
        atomic_write_text(self.jsonl_path, "".join(json.dumps(r) + "\n" for r in rows))
        for kind, path in self.csv_paths.items():
            mine = [r for r in rows if self._kind(r) == kind]
            self._columns[kind] = list(mine[0].keys()) if mine else None
            text = io.StringIO(newline="")
            if mine:
                w = csv.DictWriter(text, fieldnames=self._columns[kind], extrasaction="ignore")
                w.writeheader()
                w.writerows(mine)
            atomic_write_text(path, text.getvalue(), newline="")

    def write(self, row: Dict[str, float]) -> None:
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        kind = self._kind(row)
        new_file = self._columns.get(kind) is None
        if new_file:
            self._columns[kind] = list(row.keys())
        with open(self.csv_paths[kind], "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self._columns[kind], extrasaction="ignore")
            if new_file:
                w.writeheader()
            w.writerow(row)
        if self._tb is not None:
            step = int(row.get("step", 0))
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str) -> List[dict]:
    """Rows of a metrics.jsonl file (a torn last line from a kill is skipped)."""
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _tensorboard(out_dir: str):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(os.path.join(out_dir, "tensorboard"))


def plot_curves(rows: List[dict], path: str) -> Optional[str]:
    """Training loss and NME (train batches and, where logged, test) against step -> PNG."""
    if not rows:
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed: no curves PNG")
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    train = [r for r in rows if "loss" in r]
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    axes[0].set(xlabel="step", ylabel="loss", title="training loss", yscale="log")
    axes[1].plot([r["step"] for r in train if "nme" in r], [r["nme"] for r in train if "nme" in r],
                 lw=1, label="train batches")
    test = [r for r in rows if "test_nme" in r]
    if test:
        axes[1].plot([r["step"] for r in test], [r["test_nme"] for r in test], "o-", label="test (EMA)")
    axes[1].set(xlabel="step", ylabel="NME (%)", title="NME", yscale="log")
    axes[1].legend()
    for a in axes:
        a.grid(alpha=0.3)
    fig.tight_layout()
    return atomic_savefig(fig, path, dpi=110)
