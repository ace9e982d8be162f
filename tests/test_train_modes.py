"""Every gradient mode and the Jacobian regulariser train through the real LDEQ training step; the
tensorboard writer is used when the package is importable."""
import os
import sys
import types

import pytest
import torch

from benchmarks_path import make_step  # noqa: E402
from ldeq.train.config import build_config  # noqa: E402
from ldeq.train.logs import MetricsWriter  # noqa: E402
from ldeq.train.task import TrainStep  # noqa: E402


@pytest.mark.filterwarnings("ignore:implicit backward solve failed")
@pytest.mark.parametrize("grad, jac", [("ift", 0.0), ("jfb", 0.0), ("phantom", 0.0), ("jfb", 0.5)])
def test_modes_give_finite_gradients(grad, jac):
    step, images, _ = make_step("jfb", 2, image_size=64, B=1)
    cfg = build_config("synthetic-small", overrides=[f"solver.grad={grad}", f"solver.jac_reg={jac}",
                                                     "solver.phantom_steps=2"])
    ts = TrainStep(step.model, cfg)
    out = ts(images, 2)
    assert out.keypoints.shape == (1, 98, 2)
    assert 1 <= out.nstep <= 2
    loss = out.keypoints.sum() + jac * out.reg
    loss.backward()
    grads = [p.grad for p in ts.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    cell_grad = ts.model.deq_layer.cell.tail.conv.weight.grad
    assert cell_grad is not None and cell_grad.abs().sum() > 0
    if jac > 0:
        assert out.reg.item() > 0 and out.reg.requires_grad
    else:
        assert out.reg.item() == 0
    if grad == "ift":
        assert out.backward is not None and out.backward.failed is not None  # backward solve ran


def test_ift_and_jfb_differ():
    # the implicit gradient is not the one-step gradient (J != 0), so the modes are really wired
    grads = {}
    for grad in ("ift", "jfb"):
        step, images, _ = make_step("jfb", 3, image_size=64, B=1)
        cfg = build_config("synthetic-small", overrides=[f"solver.grad={grad}", "solver.b_max_iter=8"])
        ts = TrainStep(step.model, cfg)
        ts(images, 3).keypoints.sum().backward()
        grads[grad] = ts.model.deq_layer.cell.tail.conv.weight.grad.clone()
    rel = (grads["ift"] - grads["jfb"]).norm() / grads["jfb"].norm()
    assert rel > 1e-3


def test_tensorboard_used_when_installed(tmp_path, monkeypatch):
    calls = []

    class FakeWriter:
        def __init__(self, logdir):
            calls.append(("init", logdir))

        def add_scalar(self, k, v, step):
            calls.append((k, v, step))

        def close(self):
            calls.append(("close",))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    w = MetricsWriter(str(tmp_path))
    w.write({"step": 3, "loss": 0.5})
    w.close()
    assert calls == [("init", os.path.join(str(tmp_path), "tensorboard")), ("loss", 0.5, 3), ("close",)]
