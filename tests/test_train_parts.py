"""Model-independent training machinery against hand-computed / float64 references:
config validation, losses, LR schedule, EMA, atomic checkpoints, metrics files, seeded data."""
import json
import math
import os
import random

import numpy as np
import pytest
import torch

from ldeq.train import checkpoint as ckpt
from ldeq.train.config import PRESETS, ConfigError, build_config, parse_override
from ldeq.train.data import SeededDataset, batch_stream, sample_seed
from ldeq.train.ema import EMA
from ldeq.train.logs import MetricsWriter, read_metrics
from ldeq.train.losses import l1_loss, l2_loss, make_loss, wing_loss
from ldeq.train.schedule import lr_factor, make_scheduler


# ---------------------------------------------------------------- config
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_validate(preset):
    cfg = build_config(preset)
    assert cfg.model.arch == "ldeq"
    assert cfg.train.batch_size >= 1


def test_precedence_preset_file_override(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 0.5\ntrain:\n  steps: 7\n")
    cfg = build_config("synthetic-small", [str(f)], ["train.steps=9", "solver.grad=jfb"])
    assert cfg.optim.lr == 0.5            # file over preset
    assert cfg.train.steps == 9           # override over file
    assert cfg.solver.grad == "jfb"
    assert cfg.model.injection_width == PRESETS["synthetic-small"]["model"]["injection_width"]


def test_every_solver_option_reaches_the_model_config():
    """solver.<solver>_<kwarg> from a train config land in the LDEQConfig the model is built from."""
    from ldeq.train.task import make_task
    cfg = build_config("synthetic-small", overrides=["solver.anderson_kind=I", "solver.broyden_memory=7",
                                                     "solver.anderson_lam_mode=abs", "solver.anderson_m=4"])
    mc = make_task(cfg).ldeq_config()
    assert (mc.anderson_kind, mc.broyden_memory, mc.anderson_lam_mode, mc.anderson_m) == ("I", 7, "abs", 4)
    with pytest.raises(ConfigError, match="anderson_kind"):
        build_config("synthetic-small", overrides=["solver.anderson_kind=III"])


def test_json_file(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"train": {"loss": "wing", "seed": 3}}))
    cfg = build_config(None, [str(f)])
    assert (cfg.train.loss, cfg.train.seed) == ("wing", 3)


def test_unknown_key_names_it_and_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        build_config(None, overrides=["optim.learning_rate=1"])
    msg = str(e.value)
    assert "optim.learning_rate" in msg and "lr" in msg and "warmup_steps" in msg


def test_unknown_key_in_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match=r"train\.stepz.*valid keys.*steps"):
        build_config(None, [str(f)])


@pytest.mark.parametrize("override, pattern", [
    ("bogus.x=1", r"unknown section 'bogus'.*model, solver, data, optim, train"),
    ("train.steps=abc", r"train\.steps expects an integer"),
    ("train.steps=0", r"train\.steps must be >= 1"),
    ("train.loss=huber", r"train\.loss='huber'; expected one of \['l1', 'l2', 'wing'\]"),
    ("optim.ema_decay=1.0", r"optim\.ema_decay must be in \[0, 1\)"),
    ("train.deterministic=maybe", r"train\.deterministic expects true/false"),
    ("lr=3", r"must look like section\.key=value"),
])
def test_bad_values(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_config(None, overrides=[override])


def test_override_typing():
    assert parse_override("optim.lr=3e-4") == {"optim": {"lr": 3e-4}}
    assert parse_override("train.deterministic=false") == {"train": {"deterministic": False}}
    assert build_config(None, overrides=["optim.lr=1"]).optim.lr == 1.0  # int accepted for float
    assert build_config(None, overrides=["train.amp=off"]).train.amp == "off"  # YAML reads off as False


def test_missing_and_corrupt_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(None, [str(tmp_path / "nope.yaml")])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        build_config(None, [str(bad)])


def test_cli_reports_config_error(capsys):
    from ldeq.train import main
    assert main(["--print-config", "train.nope=1"]) == 2
    err = capsys.readouterr().err
    assert "train.nope" in err and "batch_size" in err
    assert main(["--preset", "wflw", "--print-config", "optim.lr=0.01"]) == 0
    assert json.loads(capsys.readouterr().out)["optim"]["lr"] == 0.01


# ---------------------------------------------------------------- losses
def test_l1_l2_hand_computed():
    pred = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])
    gt = torch.tensor([[[0.3, 0.4], [1.0, 0.0]]])
    # L1: (0.3 + 0.4 + 0 + 1) / 2 landmarks; L2: (0.5 + 1) / 2
    assert l1_loss(pred, gt).item() == pytest.approx(0.85)
    assert l2_loss(pred, gt).item() == pytest.approx(0.75, abs=1e-6)


def test_wing_matches_formula_and_is_continuous():
    w, eps = 10.0, 2.0
    d_px = torch.tensor([0.5, 3.0, 9.999, 10.0, 25.0], dtype=torch.float64)
    pred = torch.zeros(1, 5, 2, dtype=torch.float64)
    gt = torch.stack([d_px / 256, torch.zeros(5, dtype=torch.float64)], -1)[None]
    c = w - w * math.log(1 + w / eps)
    per = [w * math.log(1 + d / eps) if d < w else d - c for d in d_px.tolist()]
    assert wing_loss(pred, gt, w, eps).item() == pytest.approx(sum(per) / 5, rel=1e-12)
    # continuity at |x| = w
    assert w * math.log(1 + w / eps) == pytest.approx(w - c)


def test_loss_gradients_gradcheck():
    pred = torch.rand(2, 3, 2, dtype=torch.float64, requires_grad=True)
    gt = torch.rand(2, 3, 2, dtype=torch.float64)
    for name in ("l1", "l2", "wing"):
        assert torch.autograd.gradcheck(lambda p: make_loss(name)(p, gt), (pred,))


def test_loss_shape_error():
    with pytest.raises(ValueError, match=r"\(B, K, 2\).*pred \(2, 3\)"):
        l1_loss(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="loss must be one of"):
        make_loss("huber")


# ---------------------------------------------------------------- schedule
def test_schedule_hand_values():
    total, warm, lo = 110, 10, 0.1
    assert lr_factor(0, total, warm, lo) == pytest.approx(0.1)
    assert lr_factor(9, total, warm, lo) == pytest.approx(1.0)
    assert lr_factor(10, total, warm, lo) == pytest.approx(1.0)
    # half-way through the 99 decay steps: cos(pi/2) = 0 -> lo + (1 - lo) / 2
    mid = 10 + 99 / 2
    assert lr_factor(mid, total, warm, lo) == pytest.approx(lo + (1 - lo) * 0.5)
    assert lr_factor(109, total, warm, lo) == pytest.approx(lo)


def test_scheduler_drives_optimizer_lr():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = make_scheduler(opt, 20, 4, 0.0)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([2.0 * lr_factor(s, 20, 4, 0.0) for s in range(20)])


# ---------------------------------------------------------------- EMA
def test_ema_matches_manual_average():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(m, decay=0.9)
    ref = {k: v.double().clone() for k, v in m.state_dict().items()}
    for n in range(5):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p))
            m[1].running_mean.add_(1.0)
            m[1].num_batches_tracked += 1
        ema.update(m)
        d = min(0.9, (1 + n) / (10 + n))
        for k, v in m.state_dict().items():
            ref[k] = ref[k] * d + (1 - d) * v.double() if v.is_floating_point() else v.double()
    for k, v in ema.shadow.items():
        assert torch.allclose(v.double(), ref[k], atol=1e-6), k
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with ema.applied(m):
        assert torch.equal(m[0].weight, ema.shadow["0.weight"])
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k])  # restored
    state = ema.state_dict()
    ema2 = EMA(m, 0.5)
    ema2.load_state_dict(state)
    assert ema2.num_updates == 5 and ema2.decay == 0.9
    assert torch.equal(ema2.shadow["0.bias"], ema.shadow["0.bias"])


# ---------------------------------------------------------------- checkpoints
def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = str(tmp_path / "c.pt")
    ckpt.atomic_torch_save({"v": 1}, path)

    def boom(obj, f, *a, **k):
        f.write(b"partial")
        raise KeyboardInterrupt  # a kill in the middle of the write

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        ckpt.atomic_torch_save({"v": 2}, path)
    monkeypatch.undo()
    assert torch.load(path)["v"] == 1
    assert os.listdir(tmp_path) == ["c.pt"]  # no temp file left behind


def test_save_checkpoint_rotation_and_resume_resolution(tmp_path):
    d = str(tmp_path / "checkpoints")
    for s in (10, 20, 30):
        ckpt.save_checkpoint(d, {"step": s}, s, keep=2)
    assert sorted(os.listdir(d)) == ["last.pt", "step_00000020.pt", "step_00000030.pt"]
    assert ckpt.resolve_resume("auto", str(tmp_path)) == os.path.join(d, "last.pt")
    assert ckpt.resolve_resume(str(tmp_path), "x") == os.path.join(d, "last.pt")
    assert ckpt.resolve_resume("auto", str(tmp_path / "fresh")) is None
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        ckpt.resolve_resume(str(tmp_path / "nope.pt"), "x")


def test_load_checkpoint_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(RuntimeError, match="unreadable or corrupt"):
        ckpt.load_checkpoint(str(bad))
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(RuntimeError, match="missing 'model'"):
        ckpt.load_checkpoint(str(other))


def test_rng_capture_restore():
    state = ckpt.capture_rng()
    a = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.restore_rng(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


# ---------------------------------------------------------------- metrics files
def test_metrics_writer_truncates_on_resume(tmp_path):
    w = MetricsWriter(str(tmp_path))
    for s in range(1, 6):
        w.write({"step": s, "loss": 1.0 / s})
    w.close()
    w = MetricsWriter(str(tmp_path), truncate_after=3)
    w.write({"step": 4, "loss": 9.0})
    w.write({"step": 4, "test_nme": 3.0})
    w.close()
    rows = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 4] and rows[-2]["loss"] == 9.0
    csv_lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv_lines[0] == "step,loss" and len(csv_lines) == 5 and csv_lines[-1] == "4,9.0"
    assert (tmp_path / "eval.csv").read_text().splitlines() == ["step,test_nme", "4,3.0"]
    # a fresh (non-resumed) run starts empty
    MetricsWriter(str(tmp_path)).close()
    assert read_metrics(str(tmp_path / "metrics.jsonl")) == []


# ---------------------------------------------------------------- data determinism
class _RandomItems(torch.utils.data.Dataset):
    def __len__(self):
        return 20

    def __getitem__(self, i):
        return torch.rand(2) + i, torch.tensor([float(np.random.rand()), random.random()])


def test_seeded_dataset_is_deterministic_and_leaves_rng_alone():
    torch.manual_seed(5)
    expected_next = torch.rand(1)
    torch.manual_seed(5)
    ds = SeededDataset(_RandomItems(), seed=1, epoch=0)
    a = ds[3]
    assert torch.equal(torch.rand(1), expected_next)  # caller's stream untouched
    b = ds[3]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = SeededDataset(_RandomItems(), seed=1, epoch=1)[3]
    assert not torch.equal(a[0], c[0])
    assert len({sample_seed(0, e, i) for e in range(3) for i in range(100)}) == 300


def test_batch_stream_shards_and_resume():
    ds = _RandomItems()
    single = batch_stream(ds, 4, 0, 1, seed=3, start_step=0)
    r0 = batch_stream(ds, 4, 0, 2, seed=3, start_step=0)
    r1 = batch_stream(ds, 4, 1, 2, seed=3, start_step=0)
    key = lambda x: sorted(x[0][:, 0].floor().tolist())  # noqa: E731  sample indices of a batch
    first = [next(single) for _ in range(12)]  # 5 batches per epoch: crosses two epoch boundaries
    for s in range(12):
        b0, b1 = next(r0), next(r1)
        assert sorted(key(b0) + key(b1)) == key(first[s])
        assert len(b0[0]) == 2
    resumed = batch_stream(ds, 4, 0, 1, seed=3, start_step=7)
    for s in range(7, 12):
        b = next(resumed)
        assert torch.equal(b[0], first[s][0]) and torch.equal(b[1], first[s][1])
    with pytest.raises(ValueError, match="divisible"):
        next(batch_stream(ds, 5, 0, 2, 0, 0))
    with pytest.raises(ValueError, match="larger than the training set"):
        next(batch_stream(ds, 32, 0, 1, 0, 0))


def test_batch_stream_same_with_workers():
    ds = _RandomItems()
    a = batch_stream(ds, 4, 0, 1, seed=9, start_step=3, num_workers=0)
    b = batch_stream(ds, 4, 0, 1, seed=9, start_step=3, num_workers=2)
    for _ in range(3):
        x, y = next(a), next(b)
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
