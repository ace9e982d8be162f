"""The Landmark Deep Equilibrium model (LDEQ, Micaelli et al. CVPR 2023), official "Cell0" architecture.

images (B, 3, 4S, 4S) --backbone--> injection x (B, W, S, S)
z* = f(z*, x), f = cell: concat[z, x] -> 1x1 -> hourglass -> 1x1 head -> soft-argmax normalisation
keypoints, uncertainty = soft-argmax decode of z*[:, :K]

Attribute names (``tail``, ``deq_layer.cell.{tail,hourglass,head}``) match the official state_dict.
"""
import os
from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldeq.ops import heatmap_decode
from ldeq.solvers import SolverStats
from ldeq.solvers.deq import GRAD_MODES

from . import fast
from .config import LDEQConfig
from .hourglass import Hourglass
from .layers import Conv, SoftArgmaxNorm, _Identity
from .solve import residuals, run_deq, stats_from_traces


@dataclass
class LDEQOutput:
    """What :meth:`LDEQ.forward` returns (B batch, K keypoints, Z z channels, S heatmap size).

    keypoints:   (B, K, 2) x, y in [0, 1) crop units (times image_size gives crop pixels).
    uncertainty: (B, K) spread of each heatmap in [0, 1] crop units (official 2nd moment if asked).
    z_star:      (B, Z, S, S) final state (tracked by autograd in training; detach it to reuse as z0).
    heatmaps:    (B, K, S, S) normalised heatmaps the keypoints were decoded from.
    stats:       SolverStats of the forward solve (explicit mode: residuals of the unrolled steps).
    """
    keypoints: torch.Tensor
    uncertainty: torch.Tensor
    z_star: torch.Tensor
    heatmaps: torch.Tensor
    stats: Optional[SolverStats] = None
    trajectory: List[torch.Tensor] = field(default_factory=list)


def make_backbone(cfg: LDEQConfig) -> nn.Sequential:
    """(B, 3, 4S, 4S) -> (B, W, S, S): Conv k7 s2 -> Conv k3 -> MaxPool 2 -> Conv k3 (official ``tail``)."""
    W, n = cfg.injection_width, cfg.backbone_norm_layer
    return nn.Sequential(Conv(3, W // 4, 7, 2, norm=n), Conv(W // 4, W // 2, 3, 1, norm=n),
                         nn.MaxPool2d(2, 2), Conv(W // 2, W, 3, 1, norm=n))


def _activation_layout(t: torch.Tensor) -> torch.Tensor:
    """Channels-last on CPU (oneDNN's fast layout for these convolutions), unchanged elsewhere.
    ``LDEQ_CHANNELS_LAST=0`` (read at every call) keeps NCHW, e.g. to compare the two layouts."""
    if t.device.type != "cpu" or t.dim() != 4 or os.environ.get("LDEQ_CHANNELS_LAST", "1") == "0":
        return t
    return t.contiguous(memory_format=torch.channels_last)


class Cell(nn.Module):
    """f(z, x): (B, Z, S, S), (B, W, S, S) -> (B, Z, S, S) normalised heatmaps in (0, 1] (official Cell0)."""

    def __init__(self, cfg: LDEQConfig):
        super().__init__()
        self.z_width = cfg.z_width
        kw = dict(norm=cfg.cell_norm_layer, gn_groups=cfg.cell_gn_groups)
        self.tail = Conv(cfg.z_width + cfg.injection_width, cfg.cell_base_width, 1, **kw)
        self.hourglass = Hourglass(cfg.cell_base_width, cfg.cell_width_increment, **kw)
        self.head = Conv(cfg.cell_base_width, cfg.z_width, 1, norm="none", act=False)
        self.features_to_heatmaps = (SoftArgmaxNorm(cfg.z_width, cfg.cell_softargmax_beta,
                                                    cfg.cell_learn_softargmax_beta)
                                     if cfg.cell_norm == "softargmax" else _Identity())

    def forward(self, z: torch.Tensor, injection: torch.Tensor) -> torch.Tensor:
        """z (B, Z, S, S), injection x (B, W, S, S) -> (B, Z, S, S); = ``step(z, inject(x))``."""
        return self.step(z, self.inject(injection))

    def inject(self, injection: torch.Tensor) -> torch.Tensor:
        """x (B, W, S, S) -> c (B, w, S, S): the injection's constant part of the first 1x1 conv.

        The official cell convolves concat[z, x]; that equals W_z * z + (W_x * x + bias), and the
        bracket does not change during a solve: compute it once per solve, then call ``step``.
        """
        if fast.use_packed(injection):
            return fast.packed_cell(self).inject(injection)
        conv = self.tail.conv
        return F.conv2d(injection, conv.weight[:, self.z_width:], conv.bias)

    def step(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """One application of f given c = ``inject(x)``: z (B, Z, S, S) -> (B, Z, S, S).

        Without autograd in float32 on CPU the packed path runs (:mod:`ldeq.model.fast`: prepacked
        oneDNN weights, conv + LeakyReLU fused, channels-last); otherwise the plain modules.
        """
        if fast.use_packed(z):
            return fast.packed_cell(self).step(z, c)
        if c.is_contiguous(memory_format=torch.channels_last) and c.dim() == 4:
            z = z.contiguous(memory_format=torch.channels_last)
        y = F.conv2d(z, self.tail.conv.weight[:, :self.z_width]) + c
        if self.tail.act:
            y = F.leaky_relu(y, 0.01)
        return self.features_to_heatmaps(self.head(self.hourglass(self.tail.norm(y))))


def solver_options(cfg: LDEQConfig, solver: str) -> dict:
    """The ``<solver>_<kwarg>`` fields of ``cfg`` as keyword arguments of that solver."""
    if solver == "anderson":
        return dict(m=cfg.anderson_m, lam=cfg.anderson_lam, lam_mode=cfg.anderson_lam_mode,
                    restart=cfg.anderson_restart, beta=cfg.anderson_beta, kind=cfg.anderson_kind)
    if solver == "broyden" and cfg.broyden_memory > 0:
        return dict(memory=cfg.broyden_memory)
    return {}


class DEQLayer(nn.Module):
    """Finds z* = cell(z*, x): implicitly (solver, then tracked step) or explicitly (unrolled, weight-tied)."""

    def __init__(self, cfg: LDEQConfig):
        super().__init__()
        self.cfg = cfg
        self.cell = Cell(cfg)

    def forward(self, x, z0, *, mode, solver, max_iter, tol, stop_mode, extra_step, grad,
                save_trajectory=False, deq_kwargs=None):
        """x (B, W, S, S), z0 (B, Z, S, S) -> (z (B, Z, S, S), SolverStats, trajectory list).

        f is ``cell.step(z, c)`` with c = ``cell.inject(x)`` computed once (it carries the gradient
        to x and the injection half of the first conv's weight)."""
        c = self.cell.inject(x)  # the injection's half of the first 1x1 conv: once per solve
        if mode == "explicit":
            return self._explicit(lambda z: self.cell.step(z, c), z0, save_trajectory)
        cfg = self.cfg
        skw = solver_options(cfg, solver)
        stochastic = self.training and cfg.stochastic_max_iter
        if save_trajectory and not stochastic:  # solver iterates at every iteration (best so far)
            skw["trajectory"] = list(range(1, max_iter + 1))
        z, stats = run_deq(self.cell.step, z0, c, solver=solver, max_iter=max_iter, tol=tol, stop_mode=stop_mode,
                           solver_kwargs=skw, grad=grad, extra_step=extra_step,
                           stochastic_max_iter=stochastic, **(deq_kwargs or {}))
        traj = getattr(stats, "trajectory", None) or {}
        return z, stats, [traj[k] for k in sorted(traj)]

    def _explicit(self, f, z0, save_trajectory):
        """``explicit_depth`` tracked applications of the same cell (memory linear in depth)."""
        z, at, rt, traj = z0, [], [], []
        for _ in range(self.cfg.explicit_depth):
            fz = f(z)
            with torch.no_grad():
                a, r = residuals(fz, z)
            at.append(a)
            rt.append(r)
            z = fz
            if save_trajectory:
                traj.append(z.detach())
        return z, stats_from_traces(at, rt, self.cfg.tol, self.cfg.stop_mode, "explicit"), traj


class LDEQ(nn.Module):
    """Landmark DEQ: (B, 3, 4S, 4S) images -> :class:`LDEQOutput` (see module docstring)."""

    def __init__(self, cfg: Optional[LDEQConfig] = None, **overrides):
        super().__init__()
        cfg = (cfg or LDEQConfig()).replace(**overrides) if overrides else (cfg or LDEQConfig())
        self.cfg = cfg.validate()
        self.tail = make_backbone(cfg)
        self.deq_layer = DEQLayer(cfg)
        # official: when the cell does not normalise, heatmaps are normalised once after the solve
        self.final_features_to_heatmaps = (SoftArgmaxNorm(cfg.z_width, cfg.cell_softargmax_beta)
                                           if cfg.cell_norm == "none" else _Identity())

    # -- pieces, usable on their own -----------------------------------------------------------
    def injection(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 4S, 4S) -> (B, W, S, S) backbone features (channels-last on CPU)."""
        return self.tail(_activation_layout(self._check_images(images)))

    def cell_inject(self, injection: torch.Tensor) -> torch.Tensor:
        """(B, W, S, S) injection -> c (B, w, S, S), its constant part of the cell's first conv."""
        return self.deq_layer.cell.inject(injection)

    def cell_step(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """f given c = ``cell_inject(x)``: (B, Z, S, S) -> (B, Z, S, S); = ``cell(z, x)``."""
        return self.deq_layer.cell.step(z, c)

    def cell(self, z: torch.Tensor, injection: torch.Tensor) -> torch.Tensor:
        """One application of f: (B, Z, S, S), (B, W, S, S) -> (B, Z, S, S)."""
        return self.deq_layer.cell(z, injection)

    def decode(self, z: torch.Tensor, official_std: Optional[bool] = None):
        """(B, Z, S, S) state -> heatmaps (B, K, S, S), keypoints (B, K, 2), uncertainty (B, K)."""
        official_std = self.cfg.official_std if official_std is None else official_std
        h = self.final_features_to_heatmaps(z)[:, :self.cfg.n_keypoints]
        kp, std = heatmap_decode(h, official_std=official_std)
        return h, kp, std

    def zeros_z0(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        S = self.cfg.heatmap_size
        return torch.zeros(batch, self.cfg.z_width, S, S, dtype=like.dtype, device=like.device)

    # -- the model -------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, z0: Optional[torch.Tensor] = None, *, mode: Optional[str] = None,
                solver: Optional[str] = None, max_iter: Optional[int] = None, tol: Optional[float] = None,
                stop_mode: Optional[str] = None, extra_step: Optional[bool] = None,
                official_std: Optional[bool] = None, grad: str = "ift",
                save_trajectory: bool = False, deq_kwargs: Optional[dict] = None) -> LDEQOutput:
        """images (B, 3, 4S, 4S) float, normalised; z0 (B, Z, S, S) or None for zeros.

        Keyword arguments override the config for this call. The solve always runs without
        autograd. When autograd is enabled, a tracked step z = f(z*) carries the gradient chosen by
        ``grad``: 'ift' (implicit), 'jfb' (that step only) or 'phantom'; ``deq_kwargs`` go to
        ``ldeq.solvers.deq`` (e.g. b_max_iter, b_tol, phantom_steps, jac_reg_samples) -- this is
        the trainer's hook. Without autograd the extra final step f(z*) is applied unless
        ``extra_step=False``. Stochastic max_iter applies in training mode only.
        ``save_trajectory`` returns the solver iterates (when the solver records them).
        """
        cfg = self.cfg
        mode = cfg.model_mode if mode is None else mode
        if mode not in ("implicit", "explicit"):
            raise ValueError(f"mode={mode!r}: expected 'implicit' or 'explicit'")
        if grad not in GRAD_MODES:
            raise ValueError(f"grad={grad!r}: expected one of {GRAD_MODES}")
        x = self.injection(images)
        # the state has the images' (= the model's) dtype: float32 even when autocast runs the backbone in bf16
        z0 = self.zeros_z0(x.shape[0], images) if z0 is None else self._check_z0(z0, images)
        z, stats, traj = self.deq_layer(
            x, z0, mode=mode, solver=cfg.solver if solver is None else solver,
            max_iter=cfg.max_iter if max_iter is None else int(max_iter),
            tol=cfg.tol if tol is None else float(tol),
            stop_mode=cfg.stop_mode if stop_mode is None else stop_mode,
            extra_step=cfg.extra_step if extra_step is None else extra_step,
            grad=grad, save_trajectory=save_trajectory, deq_kwargs=deq_kwargs)
        h, kp, std = self.decode(z, official_std)
        return LDEQOutput(keypoints=kp, uncertainty=std, z_star=z, heatmaps=h, stats=stats, trajectory=traj)

    # -- input checks ----------------------------------------------------------------------------
    def _check_images(self, images):
        n = 4 * self.cfg.heatmap_size
        if not torch.is_tensor(images):
            raise TypeError(f"images: expected a torch.Tensor of shape (B, 3, {n}, {n}), got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (n, n):
            raise ValueError(f"images: expected shape (B, 3, {n}, {n}) (image_size = 4 * heatmap_size), "
                             f"got {tuple(images.shape)}")
        p = next(self.parameters())
        if images.dtype != p.dtype:
            raise TypeError(f"images: expected dtype {p.dtype} (the model's), got {images.dtype}")
        if images.device != p.device:
            raise ValueError(f"images: expected device {p.device} (the model's), got {images.device}")
        if not bool(torch.isfinite(images).all()):
            raise ValueError("images: contains NaN or Inf")
        return images

    def _check_z0(self, z0, x):
        S, Z = self.cfg.heatmap_size, self.cfg.z_width
        want = (x.shape[0], Z, S, S)
        if not torch.is_tensor(z0) or tuple(z0.shape) != want:
            got = tuple(z0.shape) if torch.is_tensor(z0) else type(z0).__name__
            raise ValueError(f"z0: expected shape {want} (B, z_width, heatmap_size, heatmap_size), got {got}")
        if z0.dtype != x.dtype or z0.device != x.device:
            raise ValueError(f"z0: expected dtype {x.dtype} on {x.device}, got {z0.dtype} on {z0.device}")
        if not bool(torch.isfinite(z0).all()):
            raise ValueError("z0: contains NaN or Inf")
        return z0
