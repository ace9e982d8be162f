"""``ldeq video`` end to end with a tiny random LDEQ: outputs, metrics, bad input, partial flush."""
import json

import numpy as np
import pytest
import torch

from ldeq.video.cli import main
from ldeq.video.io import VideoReader, write_video
from ldeq.video.metrics import video_nme, video_nmf
from ldeq.video.synthetic import make_synthetic_video

T = 6


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from ldeq.model import LDEQ, LDEQConfig, save_checkpoint
    d = tmp_path_factory.mktemp("video_cli")
    torch.manual_seed(0)
    m = LDEQ(LDEQConfig(injection_width=16, cell_base_width=16, cell_width_increment=4, heatmap_size=16,
                        image_size=64, max_iter=3, solver="fixed_point"))
    save_checkpoint(m, str(d / "tiny.pt"))
    v = make_synthetic_video(5, n_frames=T, size=(96, 128))
    write_video(str(d / "clip.mp4"), v.frames, 30)
    np.save(d / "boxes.npy", v.boxes)
    np.save(d / "gt.npy", v.landmarks)
    return d


def _args(env, out, *extra):
    return [str(env / "clip.mp4"), "--bboxes", str(env / "boxes.npy"), "--checkpoint", str(env / "tiny.pt"),
            "--out", str(out), "--no-progress", *extra]


def test_single_video_outputs_and_metrics(env, tmp_path):
    rc = main(_args(env, tmp_path, "--gt", str(env / "gt.npy"), "--mode", "prox", "--filter", "ema"))
    assert rc == 0
    lm = np.load(tmp_path / "clip_landmarks.npy")
    assert lm.shape == (T, 98, 2) and np.isfinite(lm).all()
    assert len((tmp_path / "clip_landmarks.csv").read_text().splitlines()) == T + 1
    assert len(list(VideoReader(str(tmp_path / "clip_annotated.mp4")))) == T
    res = json.loads((tmp_path / "clip_metrics.json").read_text())
    gt = np.load(env / "gt.npy")
    assert res["nme"] == pytest.approx(video_nme(lm, gt)) and res["nmf"] == pytest.approx(video_nmf(lm, gt))
    assert np.load(tmp_path / "clip_landmarks_ema.npy").shape == (T, 98, 2)


def test_frames_without_face_are_skipped(env, tmp_path):
    b = np.load(env / "boxes.npy")
    b[2] = np.nan
    np.save(tmp_path / "b.npy", b)
    args = _args(env, tmp_path / "o", "--no-video")
    args[2] = str(tmp_path / "b.npy")
    assert main(args) == 0
    lm = np.load(tmp_path / "o" / "clip_landmarks.npy")
    assert np.isnan(lm[2]).all() and np.isfinite(lm[[0, 1, 3, 4, 5]]).all()


def test_bad_inputs_give_clear_errors(env, tmp_path, capsys):
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert main([str(tmp_path / "empty.mp4")] + _args(env, tmp_path / "o")[1:]) == 2
    assert "cannot decode" in capsys.readouterr().err
    np.save(tmp_path / "short.npy", np.load(env / "boxes.npy")[:3])
    args = _args(env, tmp_path / "o")
    args[2] = str(tmp_path / "short.npy")
    assert main(args) == 2
    assert f"3 boxes for a video of {T} frames" in capsys.readouterr().err
    args[2] = str(tmp_path / "missing.npy")
    assert main(args) == 2 and "not found" in capsys.readouterr().err
    torch.save({"state_dict": torch.nn.Linear(3, 4).state_dict()}, tmp_path / "other.pt")
    args = _args(env, tmp_path / "o")
    args[args.index("--checkpoint") + 1] = str(tmp_path / "other.pt")
    assert main(args) == 2 and "LDEQ" in capsys.readouterr().err
    args[args.index("--checkpoint") + 1] = str(tmp_path / "nope.pt")
    assert main(args) == 2 and "nope.pt" in capsys.readouterr().err
    assert not (tmp_path / "o" / "clip_landmarks.npy").exists()


def test_interruption_flushes_partial_outputs(env, tmp_path, monkeypatch):
    from ldeq.video import model_solve
    calls = {"n": 0}
    real = model_solve.LDEQSolve.__call__

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(model_solve.LDEQSolve, "__call__", flaky)
    assert main(_args(env, tmp_path)) == 1
    assert np.load(tmp_path / "clip_landmarks.npy").shape == (3, 98, 2)
    assert len(list(VideoReader(str(tmp_path / "clip_annotated.mp4")))) == 3


def test_synth_and_eval_commands(env, tmp_path, capsys):
    root = tmp_path / "root"
    assert main(["synth", str(root), "--n-videos", "1", "--frames", "5"]) == 0
    out = tmp_path / "ev"
    rc = main(["eval", str(root), "--split-dir", str(root / "splits"), "--checkpoint", str(env / "tiny.pt"),
               "--out", str(out), "--no-progress", "--filters", "ema,kalman"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res) == {"easy", "hard"}
    assert [r["method"] for r in res["hard"]] == ["off", "warm", "prox", "adaptive", "off+ema", "off+kalman"]
    assert all(np.isfinite(r["nme"]) and np.isfinite(r["nmf"]) for r in res["hard"])
    assert "| off+kalman |" in (out / "table.md").read_text()
    assert main(["eval", str(root), "--checkpoint", str(env / "tiny.pt"), "--modes", "off,turbo"]) == 2


def test_haar_detector_without_face_is_a_clear_error(env, tmp_path, capsys):
    write_video(str(tmp_path / "blank.mp4"), [np.full((96, 128, 3), 90, np.uint8)] * 3, 30)
    rc = main([str(tmp_path / "blank.mp4"), "--detector", "haar", "--checkpoint", str(env / "tiny.pt"),
               "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2
    assert "no face in any of 3 frames" in capsys.readouterr().err


def test_top_level_cli_dispatches_video(env, tmp_path):
    from ldeq.cli import main as ldeq_main
    assert ldeq_main(["video", "synth", str(tmp_path / "r"), "--n-videos", "1", "--frames", "3"]) == 0
    assert (tmp_path / "r" / "splits" / "hard_video_IDs.txt").read_text().split() == ["synth_hard_000"]
