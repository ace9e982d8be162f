"""Adapter from an :class:`ldeq.model.LDEQ` to the RwR runner's ``solve`` callable.

* Images arrive as float RGB in [0, 1]; they are ImageNet-normalised here (as ldeq.data.transforms
  does for training) and cast to the model's dtype and device.
* A solve from zeros (mode off, first frame, after a gap) is the model's own forward with its
  configured solver / tolerance and the runner's ``max_iter_full`` budget.
* A warm / prox solve runs exactly ``max_iter`` fixed-point steps of f (or of the prox map) from
  z*_{t-1} (the official WFLW-V setting: fixed_point_last with a small fixed budget), then the extra final step
  (unless the model's config disables it). See :class:`ldeq.video.rwr.CellSolve`.
* The state carried to the next frame is the one the keypoints were decoded from.
"""
from typing import Optional

import torch

from ldeq.data.transforms import IMAGENET_MEAN, IMAGENET_STD

from .rwr import CellSolve, fixed_budget_iteration


class LDEQSolve:
    """``solve(images, z0, max_iter, gamma=0, anchor=None, gamma_speed=None) -> (keypoints, z_star)`` for an LDEQ
    (gamma a float or a (B, K) / (B, 1) tensor; see :class:`ldeq.video.rwr.CellSolve`).

    solver / tol override the model config for solves from zeros.
    """

    def __init__(self, model, solver: Optional[str] = None, tol: Optional[float] = None):
        self.model = model.eval()
        p = next(model.parameters())
        self.dtype, self.device = p.dtype, p.device
        self.mean = torch.tensor(IMAGENET_MEAN, dtype=p.dtype, device=p.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, dtype=p.dtype, device=p.device).view(1, 3, 1, 1)
        self.solver, self.tol = solver, tol
        self.image_size = model.cfg.image_size
        # x = the cell's injection constant (computed once per frame), f(z) = model.cell_step(z, x)
        self._warm = CellSolve(inject=lambda im: model.cell_inject(model.injection(im)), cell=model.cell_step,
                               decode=lambda z: model.decode(z)[1],
                               zeros=lambda x: model.zeros_z0(x.shape[0], x), solver=fixed_budget_iteration,
                               final_step=model.cfg.extra_step)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images.to(device=self.device, dtype=self.dtype) - self.mean) / self.std

    @torch.no_grad()
    def __call__(self, images, z0, max_iter, gamma=0.0, anchor=None, gamma_speed=None):
        x = self.normalize(images)
        if z0 is None:
            out = self.model(x, max_iter=max_iter, solver=self.solver, tol=self.tol)
            return out.keypoints, out.z_star
        same = anchor is z0  # mode 'adaptive' reuses f(anchor) when the solve starts at the anchor
        z0 = z0.to(device=self.device, dtype=self.dtype)
        anchor = None if anchor is None else z0 if same else anchor.to(device=self.device, dtype=self.dtype)
        return self._warm(x, z0, max_iter, gamma=gamma, anchor=anchor, gamma_speed=gamma_speed)


def load_ldeq_for_video(checkpoint: str, device="cpu"):
    """Loads an LDEQ checkpoint in eval mode. Raises FileNotFoundError for a missing file and
    ldeq.model.CheckpointError (a ValueError) for a file that is not a matching LDEQ checkpoint."""
    from ldeq.model import load_checkpoint
    return load_checkpoint(checkpoint, map_location=str(device))
