"""Checkpoints: official-format files, our own round trip, weights-only safety and clear errors.

The official-format files are written here exactly as the release does
(``torch.save({'args': argparse.Namespace, 'state_dict': ...})``) from the official fixture's
state_dict, and the loaded model must reproduce the fixture's keypoints.
"""
import argparse
import math
import pathlib

import pytest
import torch

from ldeq.model import (CheckpointError, LDEQ, LDEQConfig, config_from_checkpoint, load_checkpoint,
                        read_checkpoint, save_checkpoint)

from _paths import FIXTURES

FIXTURE = str(FIXTURES / "official_ldeq_small_fixture.pt")
TINY = dict(injection_width=8, cell_base_width=4, cell_width_increment=2, heatmap_size=16, image_size=64,
            n_keypoints=5, solver="fixed_point", max_iter=2)


@pytest.fixture(scope="module")
def fix():
    return torch.load(FIXTURE, weights_only=True)  # tests/fixtures/: a missing file fails


def official_args(**over):
    """The fields the official code reads from ``args`` (debug-config names), fixture widths."""
    a = dict(landmark_model_name="ldeq", cell_name="Cell0", model_mode="implicit", injection_width=32,
             cell_base_width=16, cell_width_increment=8, cell_gn_groups=1, cell_use_bn_for_explicit=True,
             cell_norm="softargmax", cell_softargmax_beta=1.0, cell_learn_softargmax_beta=False,
             solver="fpi", stop_mode="rel", rel_diff_target=1e-30, abs_diff_target=1e-30, max_iters=3,
             take_one_less_inference_step=False, anderson_m=6, anderson_lam=1e-4, anderson_beta=1.0,
             im_size=256, n_keypoints=98, cell_extra_latent_width=0, heatmap_size=64, z_width=98,
             stochastic_max_iters=True, JFB=False, z0_mode="zeros")
    a.update(over)
    return argparse.Namespace(**a)


def fixture_keypoints(model, fix):
    """Keypoints of the fixture's first image (samples are independent: GroupNorm, BN in eval)."""
    with torch.no_grad():
        return model(fix["image_uint8"][:1].float() / 127.5 - 1.0).keypoints[0]


def test_official_format_file_loads_safely_and_reproduces_the_fixture(tmp_path, fix):
    path = tmp_path / "final.pth.tar"
    torch.save({"args": official_args(), "state_dict": fix["state_dict"]}, path)
    m = load_checkpoint(path)
    assert not m.training
    assert (m.cfg.injection_width, m.cfg.cell_base_width, m.cfg.cell_width_increment) == (32, 16, 8)
    assert m.cfg.solver == "fixed_point_last" and m.cfg.max_iter == 3 and m.cfg.extra_step
    torch.testing.assert_close(fixture_keypoints(m, fix), fix["keypoints"][0], atol=1e-4, rtol=0)


def test_widths_inferred_from_shapes_when_args_are_missing(tmp_path, fix):
    path = tmp_path / "noargs.pt"
    torch.save({"state_dict": fix["state_dict"]}, path)
    cfg = config_from_checkpoint(read_checkpoint(path))
    assert (cfg.injection_width, cfg.cell_base_width, cfg.cell_width_increment, cfg.z_width,
            cfg.cell_norm_layer, cfg.backbone_norm_layer) == (32, 16, 8, 98, "gn", "bn")
    m = load_checkpoint(path, solver="fixed_point_last", max_iter=3, tol=1e-30)
    torch.testing.assert_close(fixture_keypoints(m, fix), fix["keypoints"][0], atol=1e-4, rtol=0)
    # a bare state_dict file and a DataParallel 'module.' prefix load too
    torch.save({"module." + k: v for k, v in fix["state_dict"].items()}, tmp_path / "bare.pt")
    assert load_checkpoint(tmp_path / "bare.pt").cfg.injection_width == 32


def test_official_learned_beta_was_never_a_parameter_and_acts_as_softplus(tmp_path, fix):
    path = tmp_path / "lb.pt"
    torch.save({"args": official_args(cell_learn_softargmax_beta=True, cell_softargmax_beta=1.0),
                "state_dict": fix["state_dict"]}, path)
    m = load_checkpoint(path)
    assert not m.cfg.cell_learn_softargmax_beta
    assert math.isclose(m.cfg.cell_softargmax_beta, math.log1p(math.e), rel_tol=1e-12)


def test_our_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = LDEQConfig(**TINY, cell_learn_softargmax_beta=True, cell_extra_latent_width=2, official_std=True)
    m = LDEQ(cfg).eval()
    with torch.no_grad():
        m.deq_layer.cell.features_to_heatmaps.raw_beta.uniform_(0.5, 2.0)
        m.tail[0].norm.running_mean.uniform_(-1, 1)
    path = tmp_path / "sub" / "ours.pt"
    save_checkpoint(m, path, extra={"epoch": 7, "opt": {"lr": 1e-3, "buf": torch.ones(3)}})
    assert [p.name for p in path.parent.iterdir()] == ["ours.pt"]  # no temp file left behind
    # readable with plain weights-only torch.load plus argparse.Namespace, as the official code does
    with torch.serialization.safe_globals([argparse.Namespace]):
        raw = torch.load(path, weights_only=True)
    assert isinstance(raw["args"], argparse.Namespace) and raw["args"].injection_width == 8
    m2 = load_checkpoint(path)
    assert m2.cfg == cfg
    for (k, v), (k2, v2) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert read_checkpoint(path)["extra"]["epoch"] == 7
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = m(x), m2(x)
    assert torch.equal(a.keypoints, b.keypoints) and torch.equal(a.uncertainty, b.uncertainty)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickled_code_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"args": _Evil(str(marker)), "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)
    assert not marker.exists()


def test_checkpoint_of_another_model_lists_missing_and_unexpected_keys(tmp_path):
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    torch.save({"state_dict": other.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"not an LDEQ .*missing \['tail.3.conv.weight'"):
        load_checkpoint(tmp_path / "other.pt")
    # an LDEQ-like file with a stray key and a missing one: both listed
    sd = LDEQ(LDEQConfig(**TINY)).state_dict()
    sd["classifier.weight"] = torch.zeros(3)
    del sd["deq_layer.cell.hourglass.same8.conv.bias"]
    torch.save({"state_dict": sd}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "mixed.pt", n_keypoints=5, heatmap_size=16, image_size=64)
    msg = str(e.value)
    assert "deq_layer.cell.hourglass.same8.conv.bias" in msg and "classifier.weight" in msg
    # args that contradict the tensors: shape mismatches listed
    torch.save({"args": official_args(cell_width_increment=4), "state_dict": LDEQ(LDEQConfig(
        injection_width=32, cell_base_width=16, cell_width_increment=8)).state_dict()}, tmp_path / "mis.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatches \(\d+\).*upchan1.conv.weight"):
        load_checkpoint(tmp_path / "mis.pt")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x80\x04 definitely not a torch file" * 10)
    with pytest.raises(CheckpointError, match="corrupt.pt"):
        load_checkpoint(bad)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(tmp_path / "list.pt")
    with pytest.raises(TypeError, match="model: expected an ldeq.model.LDEQ"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "x.pt")


def test_official_explicit_mode_args_select_batchnorm_cells(tmp_path):
    # official Cell0: BatchNorm in the cell only for explicit mode with cell_use_bn_for_explicit
    bn = LDEQ(LDEQConfig(**TINY, cell_norm_layer="bn", model_mode="explicit", explicit_depth=2))
    args = official_args(injection_width=8, cell_base_width=4, cell_width_increment=2, n_keypoints=5, z_width=5,
                         heatmap_size=16, im_size=64, model_mode="explicit", explicit_depth=2)
    torch.save({"args": args, "state_dict": bn.state_dict()}, tmp_path / "explicit.pt")
    m = load_checkpoint(tmp_path / "explicit.pt")
    assert (m.cfg.cell_norm_layer, m.cfg.model_mode, m.cfg.explicit_depth) == ("bn", "explicit", 2)
    assert isinstance(m.deq_layer.cell.hourglass.same1.norm, torch.nn.BatchNorm2d)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(x).keypoints, bn.eval()(x).keypoints)


def test_anderson_settings_predating_relative_lam_load_as_trained():
    """Official args (and ldeq configs saved before anderson_lam_mode existed) ran Anderson with an
    absolute lam and no restarts; a fresh config uses the solver's relative lam and restarts."""
    from ldeq.model.ldeq import solver_options
    cfg = LDEQConfig.from_namespace(official_args(solver="anderson"))
    assert (cfg.anderson_lam_mode, cfg.anderson_restart) == ("abs", 0.0)
    assert solver_options(cfg, "anderson") == dict(m=6, lam=1e-4, lam_mode="abs", restart=0.0, beta=1.0, kind="II")
    old = {k: v for k, v in LDEQConfig().to_dict().items() if k not in ("anderson_lam_mode", "anderson_restart")}
    assert (LDEQConfig.from_dict(old).anderson_lam_mode, LDEQConfig.from_dict(old).anderson_restart) == ("abs", 0.0)
    assert (LDEQConfig().anderson_lam_mode, LDEQConfig().anderson_restart) == ("rel", 1.5)
    # anderson_kind came later: a config saved without it keeps the type-II mixing it ran with
    old = {k: v for k, v in LDEQConfig().to_dict().items() if k != "anderson_kind"}
    assert LDEQConfig.from_dict(old).anderson_kind == "II"
    with pytest.raises(ValueError, match="anderson_kind"):
        LDEQConfig(anderson_kind="III")
    assert LDEQConfig.from_dict(LDEQConfig().to_dict()) == LDEQConfig()
    with pytest.raises(ValueError, match="anderson_lam_mode"):
        LDEQConfig(anderson_lam_mode="relative")
    with pytest.raises(ValueError, match="anderson_restart"):
        LDEQConfig(anderson_restart=0.5)
