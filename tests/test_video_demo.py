"""The video demo writes its table, chart and annotated video (tiny random model, short clips)."""
import numpy as np
import torch

from ldeq.video.demo import run_video_demo
from ldeq.video.io import VideoReader


def test_run_video_demo_writes_everything(tmp_path):
    from ldeq.model import LDEQ, LDEQConfig, save_checkpoint
    torch.manual_seed(0)
    m = LDEQ(LDEQConfig(injection_width=16, cell_base_width=16, cell_width_increment=4, heatmap_size=16,
                        image_size=64, max_iter=2, solver="fixed_point"))
    save_checkpoint(m, str(tmp_path / "tiny.pt"))
    out = run_video_demo(str(tmp_path / "tiny.pt"), str(tmp_path / "v"), n_videos=2, n_frames=10, progress=False,
                         filters={"ema": {"alpha": 0.5}})
    assert [r["method"] for r in out["rows"]] == ["off", "warm", "prox", "adaptive", "off+ema"]
    table = (tmp_path / "v" / "video_table.md").read_text()
    assert "| prox |" in table and "NMF" in table
    png = (tmp_path / "v" / "video_nmf.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    frames = list(VideoReader(str(tmp_path / "v" / "video_annotated.mp4")))
    assert len(frames) == 10 and frames[0].shape[1] == 4 * 320  # off | warm | prox | adaptive panels
    assert all(np.isfinite(r["nmf"]) for r in out["rows"])
