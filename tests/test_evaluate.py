"""``ldeq eval``: end to end on a tiny synthetic export in the pre-cropped WFLW layout.

The oracle re-reads the list file and PNGs itself (cv2 + numpy, no ldeq.data), runs the model and
computes the inter-ocular NME by hand.
"""
import json
import os

import cv2
import numpy as np
import pytest
import torch

from ldeq.data import export_wflw_cropped
from ldeq.evaluate import main
from ldeq.model import LDEQ, LDEQConfig, save_checkpoint

TINY = dict(injection_width=8, cell_base_width=4, cell_width_increment=2, heatmap_size=16, image_size=64,
            solver="fixed_point_last", max_iter=2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("wflw")
    counts = export_wflw_cropped(root, n_train=1, n_test=6, seed=3, out_size=64, progress=False)
    torch.manual_seed(0)
    model = LDEQ(LDEQConfig(**TINY)).eval()
    ckpt = save_checkpoint(model, root / "model.pt")
    return root, ckpt, model, counts


def _independent_nme(root, model):
    lines = [l.split() for l in open(os.path.join(root, "test.txt")) if l.strip()]
    mean, std = np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255
    imgs, gts = [], []
    for f in lines:
        img = cv2.cvtColor(cv2.imread(os.path.join(root, "test", f[0])), cv2.COLOR_BGR2RGB).astype(np.float64)
        imgs.append(((img - mean) / std).transpose(2, 0, 1))
        gts.append(np.array(f[1:], dtype=np.float64).reshape(98, 2))
    with torch.no_grad():
        pred = model(torch.tensor(np.stack(imgs), dtype=torch.float32)).keypoints.double().numpy()
    gts = np.stack(gts)
    iod = np.linalg.norm(gts[:, 60] - gts[:, 72], axis=1)
    return np.linalg.norm(pred - gts, axis=2).mean(1) / iod


def test_eval_wflw_layout_table_json_ced_and_grid(setup, tmp_path, capsys):
    root, ckpt, model, counts = setup
    out = tmp_path / "out"
    rc = main(["--data", "wflw", "--root", str(root), "--checkpoint", ckpt, "--out", str(out),
               "--batch-size", "4", "--grid", "6", "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    res = json.loads((out / "metrics.json").read_text())
    present = [s for s in ("test", "test_largepose", "test_expression", "test_illumination", "test_makeup",
                           "test_occlusion", "test_blur") if counts.get(s)]
    assert list(res["splits"]) == present
    for s in present:
        assert res["splits"][s]["n"] == counts[s]
        assert any(line.split()[:2] == [s, str(counts[s])] for line in text.splitlines())
    nmes = _independent_nme(root, model)
    assert res["splits"]["test"]["nme"] == pytest.approx(100 * nmes.mean(), rel=1e-4)
    assert res["splits"]["test"]["fr"] == pytest.approx(100 * (nmes > 0.10).mean())
    assert res["splits"]["test"]["mean_solver_steps"] == 2
    ced = cv2.imread(str(out / "ced.png"))
    grid = cv2.imread(str(out / "grid.png"))
    assert ced is not None and ced.shape[2] == 3
    assert grid.shape == (2 * 64, 4 * 64, 3)  # 6 crops, 4 per row
    assert not [p for p in os.listdir(out) if p.startswith(".tmp")]


def test_eval_synthetic_in_memory(setup, tmp_path, capsys):
    _, ckpt, _, _ = setup
    rc = main(["--data", "synthetic", "--num-images", "5", "--checkpoint", ckpt, "--out", str(tmp_path),
               "--batch-size", "5", "--grid", "0", "--no-progress", "--max-iter", "1"])
    assert rc == 0
    res = json.loads((tmp_path / "metrics.json").read_text())
    assert res["splits"]["test"]["n"] == 5 and res["config"]["max_iter"] == 1
    assert not (tmp_path / "grid.png").exists() and (tmp_path / "ced.png").exists()


@pytest.mark.parametrize("argv, msg", [
    (["--data", "wflw", "--root", "{root}", "--checkpoint", "{root}/missing.pt"], "missing.pt"),
    (["--data", "wflw", "--checkpoint", "{ckpt}"], "--root: required"),
    (["--data", "wflw", "--root", "{root}/nope", "--checkpoint", "{ckpt}"], "no such folder"),
    (["--data", "wflw", "--root", "{root}/train", "--checkpoint", "{ckpt}"], "not a WFLW folder"),
    (["--data", "wflw", "--root", "{root}", "--checkpoint", "{ckpt}", "--splits", "test,val"], "unknown split 'val'"),
    (["--data", "wflw", "--root", "{root}", "--checkpoint", "{root}/test.txt"], "cannot be loaded safely"),
])
def test_eval_errors_are_clear(setup, tmp_path, capsys, argv, msg):
    root, ckpt, _, _ = setup
    argv = [a.format(root=root, ckpt=ckpt) for a in argv] + ["--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 2
    assert msg in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, msg", [
    ("--max-iter", "0", "argument --max-iter: expected an integer >= 1"),
    ("--tol", "nan", "argument --tol: expected a finite number >= 0"),
    ("--tol", "-1", "argument --tol: expected a finite number >= 0"),
    ("--solver", "fpi", "argument --solver: invalid choice: 'fpi'"),
    ("--batch-size", "0", "argument --batch-size: expected an integer >= 1"),
])
def test_eval_bad_overrides_name_the_flag_before_any_output(setup, tmp_path, capsys, flag, value, msg):
    _, ckpt, _, _ = setup
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["--data", "synthetic", "--checkpoint", str(ckpt), "--out", str(out), flag, value])
    assert e.value.code == 2 and msg in capsys.readouterr().err and not out.exists()


def test_eval_original_layout_crops_on_the_fly(setup, tmp_path, capsys):
    """The original WFLW layout (annotation list with boxes and attribute flags) on the same faces."""
    root, ckpt, _, _ = setup
    orig = tmp_path / "orig"
    ann = orig / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
    (orig / "WFLW_images" / "0--Event").mkdir(parents=True)
    ann.mkdir(parents=True)
    lines = [l.split() for l in open(root / "test.txt") if l.strip()][:4]
    rows = []
    for i, f in enumerate(lines):
        img = cv2.imread(str(root / "test" / f[0]))
        big = cv2.copyMakeBorder(img, 20, 20, 30, 30, cv2.BORDER_CONSTANT)  # the face inside a larger photo
        cv2.imwrite(str(orig / "WFLW_images" / "0--Event" / f[0]), big)
        pts = np.array(f[1:], dtype=np.float64).reshape(98, 2) * 64 + [30, 20]
        box = [int(pts[:, 0].min()), int(pts[:, 1].min()), int(pts[:, 0].max()), int(pts[:, 1].max())]
        flags = [1 if i < 2 else 0, 0, 0, 0, 0, 0]
        rows.append(" ".join([f"{v:.4f}" for v in pts.reshape(-1)] + [str(b) for b in box] + [str(v) for v in flags]
                             + [f"0--Event/{f[0]}"]))
    (ann / "list_98pt_rect_attr_test.txt").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    rc = main(["--data", "wflw", "--root", str(orig), "--checkpoint", ckpt, "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((out / "metrics.json").read_text())
    assert {k: v["n"] for k, v in res["splits"].items()} == {"test": 4, "test_largepose": 2}
    assert res["splits"]["test"]["nme"] > 0
