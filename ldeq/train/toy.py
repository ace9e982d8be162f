"""A tiny stand-in task for testing the training machinery in seconds: 4 coloured blobs on a
32x32 image, and a small conv net (with BatchNorm, so DDP BatchNorm synchronisation is exercised)
that regresses them through the same heatmap soft-argmax decode as the LDEQ. Not a DEQ."""
from types import SimpleNamespace

import torch
from torch import nn
from torch.utils.data import Dataset

from ldeq.ops import heatmap_decode, heatmap_softargmax

TOY_LANDMARKS = 4
TOY_SIZE = 32
TOY_IOD = (0, 1)  # landmarks whose distance normalises the toy NME


class ToyBlobs(Dataset):
    """Item i -> (image (3, 32, 32) float32, landmarks (4, 2) in [0, 1)); positions are a fixed
    function of (seed, i). ``augment`` adds pixel noise drawn from torch's global RNG, as a real
    augmentation would (the trainer seeds it per sample)."""

    def __init__(self, n: int, seed: int = 0, augment: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.points = 0.15 + 0.7 * torch.rand(n, TOY_LANDMARKS, 2, generator=g)
        self.augment = augment
        colours = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0]])
        self.colours = colours[:, :, None, None]

    def __len__(self):
        return len(self.points)

    def __getitem__(self, i):
        pts = self.points[i]
        grid = torch.arange(TOY_SIZE, dtype=torch.float32) / TOY_SIZE
        gx = torch.exp(-((grid[None, :] - pts[:, :1]) ** 2) / (2 * 0.04 ** 2))  # (4, W)
        gy = torch.exp(-((grid[None, :] - pts[:, 1:]) ** 2) / (2 * 0.04 ** 2))  # (4, H)
        blobs = gy[:, :, None] * gx[:, None, :]                                  # (4, H, W)
        img = (self.colours * blobs[:, None]).sum(0)
        if self.augment:
            img = img + 0.05 * torch.randn_like(img)
        return img, pts.clone()


class ToyRegressor(nn.Module):
    """(B, 3, 32, 32) -> keypoints (B, 4, 2). Accepts (and ignores) the LDEQ's solver keywords."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            # momentum=None: cumulative statistics, right after a few dozen steps
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width, momentum=None), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, TOY_LANDMARKS, 1))

    def forward(self, images, max_iter=None, grad=None, **_):
        h = heatmap_softargmax(self.net(images), 1.0)
        kp, std = heatmap_decode(h)
        return SimpleNamespace(keypoints=kp, uncertainty=std, heatmaps=h, stats=None, z_star=None)
