"""Acceptance: the real LDEQ with the ``synthetic-small`` preset (its model, solver, gradient,
loss and optimiser settings, on fewer images and steps) learns: the loss falls by a margin."""
import os

import pytest

from ldeq.train.config import build_config  # noqa: E402
from ldeq.train.logs import read_metrics  # noqa: E402
from ldeq.train.trainer import train  # noqa: E402

STEPS = 24


def test_small_preset_loss_falls(tmp_path):
    cfg = build_config("synthetic-small", overrides=[
        f"data.root={tmp_path / 'data'}", "data.num_train=96", "data.num_test=8", f"train.steps={STEPS}",
        "train.log_every=1", "train.ckpt_every=0", "train.eval_batch_size=8"])
    summary = train(cfg, str(tmp_path / "run"), progress=False)
    rows = [r for r in read_metrics(os.path.join(tmp_path, "run", "metrics.jsonl")) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    first = sum(r["loss"] for r in rows[:4]) / 4
    last = sum(r["loss"] for r in rows[-4:]) / 4
    # untrained, every heatmap is flat and every landmark decodes to the crop centre; a model that
    # learns moves them out: the L1 loss drops by more than a third within two dozen steps
    assert last < 0.67 * first, (first, last)
    # the DEQ solver ran and reported its statistics
    assert all(1 <= r["iters"] <= cfg.solver.max_iter for r in rows)
    assert all(0 <= r["residual"] < float("inf") for r in rows)
    assert summary["final_eval"]["test_nme"] < rows[0]["nme"]


def test_wflw_dataset_option_reads_precropped_layout(tmp_path):
    """data.dataset=wflw on a folder in the pre-cropped WFLW layout (here a synthetic export)."""
    from ldeq.data import export_wflw_cropped
    export_wflw_cropped(str(tmp_path / "wflw"), n_train=8, n_test=4, out_size=64, progress=False)
    tiny = ["model.injection_width=8", "model.cell_base_width=8", "model.cell_width_increment=4", "solver.max_iter=2",
            "solver.eval_max_iter=2", "train.steps=1", "train.batch_size=4", "train.eval_batch_size=4"]
    cfg = build_config("wflw", overrides=tiny + ["model.image_size=64", f"data.root={tmp_path / 'wflw'}",
                                                 "data.num_workers=0", "train.amp=off"])
    s = train(cfg, str(tmp_path / "run"), progress=False)
    assert s["steps"] == 1 and s["final_eval"]["test_nme"] > 0
    bad = build_config("wflw", overrides=tiny + [f"data.root={tmp_path / 'missing'}"])
    with pytest.raises(FileNotFoundError, match="missing"):
        train(bad, str(tmp_path / "run2"), progress=False)
