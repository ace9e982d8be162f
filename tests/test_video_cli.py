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


# ----------------------------------------------------------------------------- issue 13: bad input
def _rc(argv):
    try:
        return main(argv)
    except SystemExit as e:  # argparse refuses a value: exit 2 with 'argument --NAME: ...'
        return e.code


def _bad_inputs(env, tmp_path):
    (tmp_path / "x.pt").write_text("this is a text file, not a checkpoint\n")
    gt = np.load(env / "gt.npy")
    np.save(tmp_path / "gt68.npy", gt[:, :68])
    nan = gt.copy()
    nan[2, 5] = np.nan
    np.save(tmp_path / "gtnan.npy", nan)
    np.save(tmp_path / "gtshort.npy", gt[:T - 2])
    np.save(tmp_path / "gtlong.npy", np.concatenate([gt, gt[:1]]))
    return [
        (["--checkpoint", str(tmp_path / "x.pt")], "cannot be loaded safely"),
        (["--gt", str(tmp_path / "gt68.npy")], "68 landmarks per frame but the model predicts 98"),
        (["--gt", str(tmp_path / "gtnan.npy")], "NaN or Inf in frame 2"),
        (["--gt", str(tmp_path / "gtshort.npy")], f"{T - 2} frames of landmarks for a video of {T} frames"),
        (["--gt", str(tmp_path / "gtlong.npy")], f"{T + 1} frames of landmarks for a video of {T} frames"),
        (["--max-iter-warm", "0"], "argument --max-iter-warm: expected an integer >= 1, got 0"),
        (["--max-iter-warm", "-3"], "argument --max-iter-warm"),
        (["--max-iter-prox", "1.5"], "argument --max-iter-prox"),
        (["--max-iter-full", "0"], "argument --max-iter-full"),
        (["--gamma", "-1"], "--gamma: expected >= 0"),
        (["--gamma", "nan"], "argument --gamma: expected a finite number"),
        (["--gamma", "inf"], "argument --gamma: expected a finite number"),
        (["--filter", "ema", "--filter-params", '{"alpah": 0.3}'], "--filter-params"),
        (["--filter", "ema", "--filter-params", "[0.3]"], "--filter-params: expected a JSON object"),
        (["--filter", "ema", "--filter-params", "{oops"], "--filter-params: not valid JSON"),
        (["--filter-params", '{"alpha": 0.3}'], "--filter-params: given without --filter"),
        (["--batch-size", "0"], "argument --batch-size"),
        (["--device", "cuda:9" if not torch.cuda.is_available() else "nonsense"], "--device"),
        (["--mode", "turbo"], "argument --mode"),
    ]


def test_every_bad_input_exits_2_naming_the_argument_before_any_output(env, tmp_path, capsys):
    for extra, msg in _bad_inputs(env, tmp_path):
        out = tmp_path / "out"
        argv = _args(env, out) + extra
        if extra[0] == "--checkpoint":
            argv = _args(env, out)
            argv[argv.index("--checkpoint") + 1] = extra[1]
        assert _rc(argv) == 2, extra
        err = capsys.readouterr().err
        assert msg in err, (extra, err)
        assert "Traceback" not in err
        assert not out.exists(), extra  # nothing written, not even the folder


def test_unknown_filter_param_names_the_known_ones(env, tmp_path, capsys):
    assert _rc(_args(env, tmp_path / "o") + ["--filter", "kalman", "--filter-params", '{"q": 1}']) == 2
    err = capsys.readouterr().err
    assert "process_noise" in err and "'q'" in err


def test_new_rwr_parameters_get_flags_automatically():
    """Every RwRConfig field but mode / batch / crop is a flag (helper modes added to rwr.py
    appear without a change to the CLI)."""
    import dataclasses

    from ldeq.video.cli import _video_parser, rwr_fields
    from ldeq.video.rwr import RwRConfig
    names = {f.name for f in rwr_fields()}
    assert names == {f.name for f in dataclasses.fields(RwRConfig)} - {"mode", "batch_size", "crop_size", "crop_scale"}
    flags = {a.dest for a in _video_parser()._actions}
    assert names <= flags


def test_sigterm_flushes_partial_outputs_and_leaves_no_temp_file(env, tmp_path, monkeypatch):
    import os
    import signal

    from ldeq.video import model_solve
    calls = {"n": 0}
    real = model_solve.LDEQSolve.__call__

    def killed(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *a, **k)

    monkeypatch.setattr(model_solve.LDEQSolve, "__call__", killed)
    before = signal.getsignal(signal.SIGTERM)
    assert main(_args(env, tmp_path)) == 1
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is restored
    assert np.load(tmp_path / "clip_landmarks.npy").shape[0] in (3, 4)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_gt_of_a_video_shorter_than_its_frame_count_gives_no_metrics(env, tmp_path, monkeypatch, capsys):
    """OpenCV's frame count is an estimate: when the decoded video is shorter than --gt, the run
    is an error (exit 1) and no metrics are computed on the overlap."""
    from ldeq.video import cli as video_cli
    real_init = video_cli.VideoReader.__init__

    def lying_count(self, path):
        real_init(self, path)
        if path.endswith("clip.mp4"):
            self.frame_count = T + 1
    monkeypatch.setattr(video_cli.VideoReader, "__init__", lying_count)
    gt = np.load(env / "gt.npy")
    np.save(tmp_path / "gt7.npy", np.concatenate([gt, gt[:1]]))
    b = np.load(env / "boxes.npy")
    np.save(tmp_path / "b7.npy", np.concatenate([b, b[:1]]))
    args = _args(env, tmp_path / "o", "--gt", str(tmp_path / "gt7.npy"))
    args[2] = str(tmp_path / "b7.npy")
    assert _rc(args) == 1
    assert f"{T + 1} frames of landmarks but the video decoded to {T} frames" in capsys.readouterr().err
    assert not (tmp_path / "o" / "clip_metrics.json").exists()


def test_haar_ensemble_detector_is_selectable(env, tmp_path, capsys):
    write_video(str(tmp_path / "blank.mp4"), [np.full((96, 128, 3), 90, np.uint8)] * 3, 30)
    rc = main([str(tmp_path / "blank.mp4"), "--detector", "haar-ensemble", "--checkpoint", str(env / "tiny.pt"),
               "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2 and "no face in any of 3 frames" in capsys.readouterr().err
