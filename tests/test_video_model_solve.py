"""LDEQSolve (the LDEQ adapter of the RwR runner) against direct calls of the model's pieces."""
import pytest
import torch

from ldeq.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ldeq.video.model_solve import LDEQSolve


@pytest.fixture(scope="module")
def model():
    from ldeq.model import LDEQ, LDEQConfig
    torch.manual_seed(0)
    return LDEQ(LDEQConfig(injection_width=16, cell_base_width=16, cell_width_increment=4, heatmap_size=16,
                           image_size=64, max_iter=4, solver="fixed_point")).eval()


def _norm(images):
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def test_from_zeros_is_the_model_forward(model):
    images = torch.rand(2, 3, 64, 64)
    kp, z = LDEQSolve(model)(images, None, 3)
    with torch.no_grad():
        out = model(_norm(images), max_iter=3)
    torch.testing.assert_close(kp, out.keypoints)
    torch.testing.assert_close(z, out.z_star)


@pytest.mark.parametrize("gamma", [0.0, 0.7])
def test_warm_and_prox_steps(model, gamma):
    images = torch.rand(2, 3, 64, 64)
    s = LDEQSolve(model)
    _, z_prev = s(torch.rand(2, 3, 64, 64), None, 3)
    kp, z = s(images, z_prev, 2, gamma=gamma, anchor=z_prev)
    with torch.no_grad():
        x = model.injection(_norm(images))
        T = lambda v: (model.cell(v, x) + gamma * z_prev) / (1 + gamma)  # noqa: E731
        ref = T(T(T(z_prev)))  # 2 iterations + the final step
        _, ref_kp, _ = model.decode(ref)
    torch.testing.assert_close(z, ref)
    torch.testing.assert_close(kp, ref_kp)
