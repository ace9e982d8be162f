"""Coordinate losses on landmarks in [0, 1] crop units. The paper's loss is unreleased; its decoder
feeds coordinates in [0, 1] to the loss, so L1 on coordinates is the default."""
import math

import torch

CROP_PIXELS = 256.0  # Wing's w/eps are defined in pixels of the 256x256 crop


def _check(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape or pred.dim() != 3 or pred.shape[-1] != 2:
        raise ValueError(f"coordinate loss: pred and target must both be (B, K, 2); got pred "
                         f"{tuple(pred.shape)}, target {tuple(target.shape)}")


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, K, 2) x2 -> () mean over images and landmarks of the L1 distance |dx| + |dy|."""
    _check(pred, target)
    return (pred - target).abs().sum(-1).mean()


def l2_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, K, 2) x2 -> () mean over images and landmarks of the Euclidean distance."""
    _check(pred, target)
    # eps inside the sqrt keeps the gradient finite at a perfect prediction.
    return torch.sqrt(((pred - target) ** 2).sum(-1) + 1e-12).mean()


def wing_loss(pred: torch.Tensor, target: torch.Tensor, w: float = 10.0, eps: float = 2.0,
              scale: float = CROP_PIXELS) -> torch.Tensor:
    """Wing loss (Feng et al., CVPR 2018), per coordinate, in pixels (x ``scale``), summed over x/y,
    averaged over images and landmarks.

    wing(x) = w ln(1 + |x|/eps) if |x| < w else |x| - C, with C = w - w ln(1 + w/eps) (continuous).
    """
    _check(pred, target)
    if w <= 0 or eps <= 0:
        raise ValueError(f"wing_loss: w and eps must be > 0, got w={w}, eps={eps}")
    x = (pred - target).abs() * scale
    c = w - w * math.log(1.0 + w / eps)
    loss = torch.where(x < w, w * torch.log1p(x / eps), x - c)
    return loss.sum(-1).mean()


def make_loss(name: str, wing_w: float = 10.0, wing_eps: float = 2.0):
    """'l1' | 'l2' | 'wing' -> callable(pred (B,K,2), target (B,K,2)) -> scalar."""
    if name == "l1":
        return l1_loss
    if name == "l2":
        return l2_loss
    if name == "wing":
        return lambda p, t: wing_loss(p, t, wing_w, wing_eps)
    raise ValueError(f"loss must be one of 'l1', 'l2', 'wing'; got {name!r}")
