"""What the trainer needs from a model family: build the model and datasets, run one training
forward (the DEQ recipe of reference section 2) and an inference forward, and score NME.

``TrainStep`` wraps the model so that DistributedDataParallel sees the whole training forward
(injection, no-grad solve, tracked step with its gradient, Jacobian regulariser) as one
``forward`` call: DDP only all-reduces gradients of work done inside its wrapped forward.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from .config import Config

WFLW_IOD = (60, 72)  # 0-based outer eye corners of the 98-point mark-up


def nme_torch(pred: torch.Tensor, gt: torch.Tensor, iod: Tuple[int, int]) -> torch.Tensor:
    """(B, K, 2) x2 -> (B,) inter-ocular NME (fraction): mean_k ||p_k - g_k|| / ||g_i - g_j||.
    Same formula as :func:`ldeq.metrics.nme_per_image`, in torch so it stays on the device."""
    d = (pred.float() - gt.float()).norm(dim=-1).mean(-1)
    return d / (gt[:, iod[0]].float() - gt[:, iod[1]].float()).norm(dim=-1).clamp_min(1e-12)


@dataclass
class StepOutput:
    """keypoints (B, K, 2); nstep/residual: mean solver iterations and lowest residual (floats, NaN
    for a non-DEQ model); reg: () Jacobian regulariser value (0 when off)."""
    keypoints: torch.Tensor
    reg: torch.Tensor
    nstep: float = float("nan")
    residual: float = float("nan")


class TrainStep(nn.Module):
    """The training forward of an LDEQ: x = backbone(images); z* = solve(f(., x)) without grad;
    z = f(z*) tracked, with the gradient of ``solver.grad`` ('ift' implicit, 'jfb', 'phantom');
    keypoints = decode(z); optional Hutchinson estimate of ||df/dz||_F^2 at z* (``solver.jac_reg``).
    For a model without a ``deq_layer`` (the toy) it simply calls the model."""

    def __init__(self, model: nn.Module, cfg: Config):
        super().__init__()
        self.model = model
        self.scfg = cfg.solver
        self.is_deq = hasattr(model, "deq_layer")

    def forward(self, images: torch.Tensor, max_iter: int) -> StepOutput:
        if not self.is_deq:
            out = self.model(images)
            return StepOutput(out.keypoints, images.new_zeros(()))
        from ldeq.model.solve import solve
        s, m = self.scfg, self.model
        x = m.injection(images)
        f = lambda z: m.cell(z, x)  # noqa: E731
        kw = {}
        if s.name == "anderson":
            kw = dict(m=m.cfg.anderson_m, lam=m.cfg.anderson_lam, beta=m.cfg.anderson_beta)
        z_star, stats = solve(f, m.zeros_z0(x.shape[0], x), solver=s.name, max_iter=int(max_iter),
                              tol=s.tol, stop_mode=s.stop_mode, **kw)
        z, reg = _tracked_step(f, z_star.detach(), s, m)
        _, kp, _ = m.decode(z)
        return StepOutput(kp, reg, float(stats.nstep.float().mean()), float(stats.lowest.mean()))


def _tracked_step(f, z_star, s, m):
    """One tracked application of f at z* with the chosen gradient; plus the Jacobian term."""
    from ldeq.solvers.implicit import BackwardConfig, ift_grad, jfb_grad, phantom_grad
    from ldeq.solvers.regularization import jacobian_frobenius, tracked_apply
    reg = z_star.new_zeros(())
    if s.grad == "ift":
        from ldeq.model.solve import get_solver
        bcfg = BackwardConfig(solver=get_solver(s.name), max_iter=s.backward_max_iter, tol=s.backward_tol,
                              stop_mode="abs", on_fail="zero")
        z, z_req, fz = ift_grad(f, z_star, bcfg)
        if s.jac_reg > 0:
            reg = jacobian_frobenius(fz, z_req, normalize=True).mean()
        return z, reg
    z = jfb_grad(f, z_star) if s.grad == "jfb" else phantom_grad(f, z_star, s.phantom_steps, s.phantom_damping)
    if s.jac_reg > 0:
        z_req, fz = tracked_apply(f, z_star)
        reg = jacobian_frobenius(fz, z_req, normalize=True).mean()
    return z, reg


class Task:
    """Model family + data. Subclasses: :class:`LDEQTask`, :class:`ToyTask`."""
    iod: Tuple[int, int] = WFLW_IOD

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def datasets(self, is_main: bool = True, barrier=lambda: None):
        """(train, test) datasets of (image (3, S, S) float, landmarks (K, 2) in [0, 1)) items."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, model: nn.Module, images: torch.Tensor) -> Tuple[torch.Tensor, float]:
        """Inference: keypoints (B, K, 2) and mean solver iterations (NaN for a non-DEQ model)."""
        raise NotImplementedError


class ToyTask(Task):
    def __init__(self, cfg: Config):
        super().__init__(cfg)
        from .toy import TOY_IOD
        self.iod = TOY_IOD

    def build_model(self):
        from .toy import ToyRegressor
        return ToyRegressor()

    def datasets(self, is_main=True, barrier=lambda: None):
        from .toy import ToyBlobs
        d = self.cfg.data
        return (ToyBlobs(d.num_train, seed=1, augment=d.augment), ToyBlobs(d.num_test, seed=2))

    @torch.no_grad()
    def predict(self, model, images):
        return model(images).keypoints, float("nan")


class LDEQTask(Task):
    def ldeq_config(self):
        """Our training config -> the model's LDEQConfig. Stochastic max_iter is drawn by the
        trainer (from a checkpointed generator), so the model's own draw is switched off."""
        from ldeq.model import LDEQConfig
        mc, sc = self.cfg.model, self.cfg.solver
        return LDEQConfig(
            injection_width=mc.injection_width, cell_base_width=mc.base_width,
            cell_width_increment=mc.width_increment, cell_gn_groups=mc.gn_groups,
            cell_softargmax_beta=float(mc.beta), cell_extra_latent_width=mc.extra_latent,
            n_keypoints=mc.num_landmarks, image_size=mc.image_size, heatmap_size=mc.image_size // 4,
            solver=sc.name, max_iters=sc.eval_max_iter, tol=sc.tol, stop_mode=sc.stop_mode,
            extra_final_step=sc.extra_final_step, stochastic_max_iters=False)

    def build_model(self):
        from ldeq.model import LDEQ
        return LDEQ(self.ldeq_config())

    def datasets(self, is_main=True, barrier=lambda: None):
        from .data import build_datasets
        return build_datasets(self.cfg, is_main, barrier)

    @torch.no_grad()
    def predict(self, model, images):
        out = model(images, max_iters=self.cfg.solver.eval_max_iter)
        nstep = float(out.stats.nstep.float().mean()) if out.stats is not None else float("nan")
        return out.keypoints, nstep


def make_task(cfg: Config) -> Task:
    return ToyTask(cfg) if cfg.model.arch == "toy" else LDEQTask(cfg)
