"""What the trainer needs from a model family: build the model and datasets, run one training
forward (the DEQ recipe of reference section 2) and an inference forward, and score NME.

``TrainStep`` wraps the model so that DistributedDataParallel sees the whole training forward
(injection, no-grad solve, tracked step with its gradient, Jacobian regulariser) as one
``forward`` call: DDP only all-reduces gradients of work done inside its wrapped forward.
"""
from __future__ import annotations

import dataclasses
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
    """keypoints (B, K, 2); reg: () Jacobian regulariser (0 when off); nstep/residual: mean solver
    iterations and lowest residual (NaN for a non-DEQ model); backward: the implicit backward
    solve's record (filled in by backward; None for jfb/phantom/non-DEQ)."""
    keypoints: torch.Tensor
    reg: torch.Tensor
    nstep: float = float("nan")
    residual: float = float("nan")
    backward: Optional[object] = None


class TrainStep(nn.Module):
    """The training forward of an LDEQ, through the model's own forward: x = backbone(images);
    z* = solve(f(., x)) without grad; z = f(z*) tracked, with the gradient of ``solver.grad``
    ('ift' implicit, 'jfb', 'phantom'); keypoints = decode(z); optional Hutchinson estimate of
    ||df/dz||_F^2 at z* (``solver.jac_reg``), per state element. A model without a ``deq_layer``
    (the toy) is simply called."""

    def __init__(self, model: nn.Module, cfg: Config):
        super().__init__()
        self.model = model
        self.scfg = cfg.solver
        self.is_deq = hasattr(model, "deq_layer")

    def deq_kwargs(self) -> Dict[str, object]:
        s = self.scfg
        return dict(b_max_iter=s.b_max_iter, b_tol=s.b_tol, phantom_steps=s.phantom_steps,
                    phantom_tau=s.phantom_tau, jac_reg_samples=1 if s.jac_reg > 0 else 0,
                    # keep the lowest-residual backward iterate when b_tol is not reached (the
                    # trainer logs the failure rate instead of warning every step)
                    on_backward_fail="warn", subset_args=True)

    def forward(self, images: torch.Tensor, max_iter: int) -> StepOutput:
        if not self.is_deq:
            out = self.model(images)
            return StepOutput(out.keypoints, images.new_zeros(()))
        out = self.model(images, max_iter=int(max_iter), grad=self.scfg.grad, deq_kwargs=self.deq_kwargs())
        st = out.stats
        jac = getattr(st, "jac_loss", None)
        reg = jac.mean() / out.z_star[0].numel() if jac is not None else images.new_zeros(())
        bwd = getattr(st, "backward", None) if self.scfg.grad == "ift" else None
        return StepOutput(out.keypoints, reg, float(st.nstep.float().mean()), float(st.lowest.float().mean()), bwd)


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
        model = {k: v for k, v in dataclasses.asdict(mc).items() if k != "arch"}
        solve = {k: getattr(sc, k) for k in ("solver", "tol", "stop_mode", "extra_step", "anderson_m",
                                             "anderson_lam", "anderson_lam_mode", "anderson_restart",
                                             "anderson_beta", "anderson_kind", "broyden_memory")}
        return LDEQConfig(**model, **solve, heatmap_size=mc.image_size // 4, max_iter=sc.eval_max_iter,
                          stochastic_max_iter=False)

    def build_model(self):
        from ldeq.model import LDEQ
        return LDEQ(self.ldeq_config())

    def datasets(self, is_main=True, barrier=lambda: None):
        from .data import build_datasets
        return build_datasets(self.cfg, is_main, barrier)

    @torch.no_grad()
    def predict(self, model, images):
        out = model(images, max_iter=self.cfg.solver.eval_max_iter)
        nstep = float(out.stats.nstep.float().mean()) if out.stats is not None else float("nan")
        return out.keypoints, nstep


def make_task(cfg: Config) -> Task:
    return ToyTask(cfg) if cfg.model.arch == "toy" else LDEQTask(cfg)
