"""The training loop on the tiny toy task: learning, exact resume after an interruption (in
process and after a real SIGKILL of a subprocess), checkpoint contents."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ldeq.train.checkpoint import load_checkpoint
from ldeq.train.config import build_config
from ldeq.train.logs import read_metrics
from ldeq.train.trainer import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = ["model.arch=toy", "data.dataset=toy", "data.num_train=96", "data.num_test=32",
       "train.batch_size=8", "train.log_every=1", "train.threads=1", "optim.warmup_steps=3",
       "optim.lr=3e-3", "optim.ema_decay=0.9", "data.augment=true"]


def toy_cfg(*extra):
    return build_config(None, overrides=TOY + list(extra))


def losses(out_dir):
    return [(r["step"], r["loss"], r["lr"], r["max_iter"]) for r in read_metrics(os.path.join(out_dir, "metrics.jsonl"))
            if "loss" in r]


def test_toy_loss_falls(tmp_path):
    s = train(toy_cfg("train.steps=40", "train.ckpt_every=0"), str(tmp_path), progress=False)
    rows = losses(str(tmp_path))
    first = sum(r[1] for r in rows[:5]) / 5
    last = sum(r[1] for r in rows[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    assert s["final_eval"]["test_nme"] < 20.0
    for name in ("curves.png", "summary.json", "config.json", "metrics.csv", "model_final.pt"):
        assert os.path.isfile(tmp_path / name), name


def test_resume_reproduces_uninterrupted_trajectory(tmp_path):
    """Stop after step 7 (last checkpoint at 6: steps 7 is lost, as in a kill), resume, compare."""
    cfg = toy_cfg("train.steps=14", "train.ckpt_every=3")
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    train(cfg, full, progress=False)
    r = train(cfg, part, progress=False, stop_after=7)
    assert r["stopped_at"] == 7
    assert max(x[0] for x in losses(part)) == 7
    state = load_checkpoint(os.path.join(part, "checkpoints", "last.pt"))
    assert state["step"] == 6
    train(cfg, part, resume="auto", progress=False)
    a, b = losses(full), losses(part)
    assert [x[0] for x in b] == list(range(1, 15))  # rows after the checkpoint were replaced
    assert a == b  # bit-identical losses, learning rates and stochastic max_iter draws
    ma = torch.load(os.path.join(full, "model_final.pt"))["state_dict"]
    mb = torch.load(os.path.join(part, "model_final.pt"))["state_dict"]
    for k in ma:
        assert torch.equal(ma[k], mb[k]), k


def test_resume_rejects_other_model(tmp_path):
    train(toy_cfg("train.steps=2", "train.ckpt_every=1"), str(tmp_path), progress=False)
    other = toy_cfg("train.steps=4", "model.n_keypoints=5")
    with pytest.raises(ValueError, match="model config"):
        train(other, str(tmp_path), resume="auto", progress=False)


def _cli(out, steps):
    return [sys.executable, "-m", "ldeq.train", "--out", out, "--no-progress", *TOY,
            f"train.steps={steps}", "train.ckpt_every=5"]


def test_sigkill_then_resume_matches(tmp_path):
    """A real kill -9 in the middle of a run: the checkpoint on disk is intact and --resume
    continues with the same loss trajectory as an uninterrupted run."""
    steps = 80
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    env = dict(os.environ, PYTHONPATH=REPO)
    train(toy_cfg(f"train.steps={steps}", "train.ckpt_every=5"), full, progress=False)
    proc = subprocess.Popen(_cli(part, steps), env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics = os.path.join(part, "metrics.jsonl")
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until a few checkpoints were written, then kill
        rows = read_metrics(metrics) if os.path.exists(metrics) else []
        if rows and rows[-1].get("step", 0) >= 13:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(r["step"] for r in read_metrics(metrics))
    assert killed_at < steps, "the run finished before it could be killed"
    assert not os.path.exists(os.path.join(part, "summary.json"))
    resumed_from = load_checkpoint(os.path.join(part, "checkpoints", "last.pt"))["step"]
    assert 10 <= resumed_from <= killed_at
    subprocess.run([sys.executable, "-m", "ldeq.train", "--out", part, "--no-progress", "--resume"],
                   check=True, env=env, cwd=REPO, capture_output=True, timeout=300)
    assert losses(full) == losses(part)
