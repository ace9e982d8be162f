"""``ldeq export --onnx``: the solve from zeros and one RwR step, run with onnxruntime, against the
PyTorch video runner on a short clip (issue 13, point 6). onnx / onnxruntime are test
dependencies (requirements.txt): a missing one fails this file.

Tolerances. onnxruntime and PyTorch run the same float32 graph with different kernels (relative
rounding ~1e-6 per conv). The test model is a random, untrained LDEQ; its cell is made contractive
by scaling the head's weights by 0.1 (an untrained random cell is expansive: rounding would grow
~10x per frame through the recurrence, which says nothing about the export). Then on the 6-frame
clip the measured max landmark difference is 1.2e-4 to 2.7e-4 px (warm) and 2.7e-5 to 5.4e-5 px
(prox), depending on which CPU convolution path PyTorch takes (printed with -s); the test allows 2e-3 px (faces ~60 px). Single graph calls (same inputs, no recurrence):
1e-4 in crop units and state values. The model's solver is 'fixed_point_last' with tol = 0 (the official video
setting), which the init graph reproduces exactly.
"""
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from ldeq.cli import main as ldeq_main
from ldeq.model import LDEQ, LDEQConfig, save_checkpoint
from ldeq.video.model_solve import LDEQSolve
from ldeq.video.rwr import RwRConfig, RwRRunner, crop_batch, uncrop_points
from ldeq.video.synthetic import make_synthetic_video

MAX_PX = 2e-3
ATOL_CALL = 1e-4  # crop units / state values in [0, 1], one graph call (measured below 1e-5)


def tiny(scale_head=1.0):
    torch.manual_seed(0)
    m = LDEQ(LDEQConfig(injection_width=16, cell_base_width=16, cell_width_increment=4, heatmap_size=16,
                        image_size=64, max_iter=3, solver="fixed_point_last", tol=0.0)).eval()
    with torch.no_grad():
        m.deq_layer.cell.head.conv.weight.mul_(scale_head)
    return m


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    m = tiny(0.1)
    save_checkpoint(m, str(d / "tiny.pt"))
    try:
        rc = ldeq_main(["export", "--checkpoint", str(d / "tiny.pt"), "--onnx", str(d / "onnx")])
    except SystemExit as e:
        rc = e.code
    assert rc == 0
    return d, m


def _sessions(folder):
    return (ort.InferenceSession(str(folder / "ldeq_init.onnx"), providers=["CPUExecutionProvider"]),
            ort.InferenceSession(str(folder / "ldeq_step.onnx"), providers=["CPUExecutionProvider"]))


@pytest.mark.parametrize("mode,gamma", [("warm", 0.0), ("prox", 1.0)])
def test_onnx_rwr_on_a_clip_matches_pytorch(exported, mode, gamma):
    d, m = exported
    init, step = _sessions(d / "onnx")
    meta = json.loads((d / "onnx" / "ldeq_onnx.json").read_text())
    assert (meta["crop_size"], meta["n_keypoints"], meta["max_iter_full"], meta["max_iter_step"]) == (64, 98, 3, 1)
    videos = [make_synthetic_video(s, n_frames=6, size=(96, 128)) for s in (11, 12)]
    cfg = RwRConfig(mode=mode, max_iter_full=3, gamma=gamma if gamma > 0 else 1.0, crop_size=64)
    ref = RwRRunner(LDEQSolve(m), cfg).run([v.frames for v in videos], [v.boxes for v in videos], progress=False)
    # the deployment loop: crop, init on frame 0, step after, uncrop; both videos in one batch
    state, got = None, []
    for t in range(6):
        images, mats = crop_batch([v.frames[t] for v in videos], [v.boxes[t] for v in videos], 64)
        x = images.numpy()
        if state is None:
            kp, unc, state = init.run(None, {"image": x})
        else:
            kp, unc, state = step.run(None, {"image": x, "state": state, "gamma": np.array([gamma], np.float32)})
        assert kp.shape == (2, 98, 2) and unc.shape == (2, 98) and np.isfinite(unc).all()
        got.append(uncrop_points(kp, mats, 64))
    got = np.stack(got, axis=1)  # (videos, T, K, 2)
    diff = float(np.abs(got - np.stack(ref)).max())
    print(f"{mode}: max landmark difference onnxruntime vs PyTorch {diff:.2e} px")
    assert diff < MAX_PX, f"max landmark difference {diff:.2e} px"


def test_single_graph_calls_with_two_steps_and_three_faces(tmp_path):
    from ldeq.export import export_onnx
    m = tiny(0.1)
    export_onnx(m, str(tmp_path), max_iter_step=2)
    init, step = _sessions(tmp_path)
    torch.manual_seed(1)
    image = torch.rand(3, 3, 64, 64)
    solve = LDEQSolve(m)
    kp0, z0 = solve(image, None, 3)
    got = init.run(None, {"image": image.numpy()})
    np.testing.assert_allclose(got[0], kp0.numpy(), atol=ATOL_CALL, rtol=0)
    np.testing.assert_allclose(got[1], m.decode(z0)[2].detach().numpy(), atol=ATOL_CALL, rtol=0)
    for gamma in (0.0, 2.0):
        kp, z = solve(image, z0, 2, gamma=gamma, anchor=z0 if gamma else None)
        got = step.run(None, {"image": image.numpy(), "state": z0.numpy(), "gamma": np.array([gamma], np.float32)})
        print(f"gamma {gamma}: max |landmarks| diff {np.abs(got[0] - kp.numpy()).max():.2e}, "
              f"max |state| diff {np.abs(got[2] - z.numpy()).max():.2e}")
        np.testing.assert_allclose(got[0], kp.numpy(), atol=ATOL_CALL, rtol=0)
        np.testing.assert_allclose(got[2], z.numpy(), atol=ATOL_CALL, rtol=0)


def test_export_bad_input(tmp_path, capsys):
    (tmp_path / "x.pt").write_text("text")
    assert ldeq_main(["export", "--checkpoint", str(tmp_path / "x.pt"), "--onnx", str(tmp_path / "o")]) == 2
    assert "cannot be loaded safely" in capsys.readouterr().err and not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as e:
        ldeq_main(["export", "--checkpoint", str(tmp_path / "x.pt"), "--onnx", str(tmp_path / "o"),
                   "--max-iter-step", "0"])
    assert e.value.code == 2 and "--max-iter-step" in capsys.readouterr().err


def test_export_without_the_onnx_package_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    assert ldeq_main(["export", "--checkpoint", str(tmp_path / "x.pt"), "--onnx", str(tmp_path / "o")]) == 2
    assert "pip install 'ldeq[export]'" in capsys.readouterr().err and not (tmp_path / "o").exists()
