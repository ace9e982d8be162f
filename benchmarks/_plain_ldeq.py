"""The LDEQ written the way the official release writes it, in plain PyTorch: the baseline of
``benchmarks/bench_e2e.py``.

NCHW, eager, ``torch.cat`` of [z, x] before the cell's first 1x1 convolution on every call, the
soft-argmax normalisation and decode as torch expressions, the official last-iterate loop
(``fpi``: z <- f(z), batch-mean relative residual checked each iteration with a host read) and
the extra final step. Module names equal the official state_dict's (and ldeq's), so
``PlainLDEQ(cfg).load_state_dict(ldeq_model.state_dict())`` is strict. For training, the
implicit gradient is the DEQ repository's backward hook on the tracked step z = f(z*): the
fixed-point iteration g <- J^T g + dL/dz (from g = dL/dz, b_max_iter VJPs, last iterate, the
arithmetic of ldeq's IFT with b_solver='fixed_point_last'), its VJPs taken through a second
tracked application of f to a copy of z* (that repository's way of avoiding a re-entrant hook:
one more tracked cell call than ldeq's autograd Function). Nothing here imports ldeq kernels.
"""
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class Conv(nn.Module):
    """Conv2d -> LeakyReLU(0.01) -> norm (official ``Conv``)."""

    def __init__(self, cin, cout, k=3, stride=1, norm="bn", groups=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding=(k - 1) // 2, bias=True)
        self.act = act
        self.norm = (nn.BatchNorm2d(cout) if norm == "bn" else nn.GroupNorm(groups, cout) if norm == "gn"
                     else None)

    def forward(self, x):
        x = self.conv(x)
        if self.act:
            x = F.leaky_relu(x, 0.01)
        return self.norm(x) if self.norm is not None else x


class Hourglass(nn.Module):
    def __init__(self, w, i, groups):
        super().__init__()
        w0, w1, w2, w3, w4 = (w + k * i for k in range(5))
        kw = dict(norm="gn", groups=groups)
        self.same1, self.upchan1 = Conv(w0, w0, 3, **kw), Conv(w0, w1, 3, **kw)
        self.same2, self.upchan2 = Conv(w1, w1, 3, **kw), Conv(w1, w2, 3, **kw)
        self.same3, self.upchan3 = Conv(w2, w2, 3, **kw), Conv(w2, w3, 3, **kw)
        self.same4, self.upchan4 = Conv(w3, w3, 3, **kw), Conv(w3, w4, 3, **kw)
        self.bottlneck = Conv(w4, w4, 3, **kw)
        for k, (a, b) in enumerate(((w4, w3), (w3, w2), (w2, w1), (w1, w0))):
            setattr(self, f"downchan{2 * k + 1}", Conv(a, b, 3, **kw))  # registration order as the official
            setattr(self, f"downchan{2 * k + 2}", Conv(2 * b, b, 1, **kw))
            setattr(self, f"same{k + 5}", Conv(b, b, 5, **kw))

    def forward(self, x):
        s1 = self.same1(x)
        s2 = self.same2(self.upchan1(F.avg_pool2d(s1, 2)))
        s3 = self.same3(self.upchan2(F.avg_pool2d(s2, 2)))
        s4 = self.same4(self.upchan3(F.avg_pool2d(s3, 2)))
        x = self.bottlneck(self.upchan4(F.avg_pool2d(s4, 2)))
        for skip, down, merge, same in ((s4, self.downchan1, self.downchan2, self.same5),
                                        (s3, self.downchan3, self.downchan4, self.same6),
                                        (s2, self.downchan5, self.downchan6, self.same7),
                                        (s1, self.downchan7, self.downchan8, self.same8)):
            m = merge(torch.cat((skip, F.interpolate(down(x), scale_factor=2, mode="nearest")), 1))
            x = same(m) + m
        return x


class Cell0(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        Z = cfg.z_width
        self.beta = float(cfg.cell_softargmax_beta)
        self.tail = Conv(Z + cfg.injection_width, cfg.cell_base_width, 1, norm="gn", groups=cfg.cell_gn_groups)
        self.hourglass = Hourglass(cfg.cell_base_width, cfg.cell_width_increment, cfg.cell_gn_groups)
        self.head = Conv(cfg.cell_base_width, Z, 1, norm="none", act=False)

    def forward(self, z, x):
        h = self.head(self.hourglass(self.tail(torch.cat([z, x], 1))))
        return torch.exp(self.beta * (h - h.amax(dim=(2, 3), keepdim=True)))


class _DEQLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cell = Cell0(cfg)


def decode(h: torch.Tensor, n_keypoints: int) -> torch.Tensor:
    """(B, Z, S, S) heatmaps -> (B, K, 2) soft-argmax coordinates in [0, 1) (official decoder)."""
    h = h[:, :n_keypoints]
    S = h.shape[-1]
    p = h / (h.sum(dim=(2, 3), keepdim=True) + 1e-4)
    grid = torch.arange(S, dtype=h.dtype, device=h.device) / S
    x = (p.sum(2) * grid).sum(-1)
    y = (p.sum(3) * grid).sum(-1)
    return torch.stack([x, y], -1)


class PlainLDEQ(nn.Module):
    """images (B, 3, 4S, 4S) -> keypoints (B, K, 2), z (B, Z, S, S); fixed cell norms 'gn', backbone 'bn'."""

    def __init__(self, cfg):
        super().__init__()
        W = cfg.injection_width
        self.cfg = cfg
        self.tail = nn.Sequential(Conv(3, W // 4, 7, 2), Conv(W // 4, W // 2, 3, 1), nn.MaxPool2d(2, 2),
                                  Conv(W // 2, W, 3, 1))
        self.deq_layer = _DEQLayer(cfg)

    def f(self, z, x):
        return self.deq_layer.cell(z, x)

    @torch.no_grad()
    def fpi(self, x, z, max_iter: int, tol: float) -> torch.Tensor:
        """The official loop: last iterate; stops when the batch-mean relative residual < tol."""
        B = z.shape[0]
        for _ in range(max_iter):
            fz = self.f(z, x)
            rel = (fz - z).reshape(B, -1).norm(dim=1) / (fz.reshape(B, -1).norm(dim=1) + 1e-5)
            z = fz
            if rel.mean().item() < tol:
                break
        return z

    def forward(self, images, z0=None, max_iter: int = 5, tol: float = 0.0, grad: str = "none",
                b_max_iter: int = 5) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.tail(images)
        S = x.shape[-1]
        z = torch.zeros(x.shape[0], self.cfg.z_width, S, S, dtype=x.dtype, device=x.device) if z0 is None else z0
        z = self.fpi(x, z, max_iter, tol)
        if grad == "none" or not torch.is_grad_enabled():
            with torch.no_grad():
                z = self.f(z, x)
        elif grad == "jfb":
            z = self.f(z.detach(), x)
        elif grad == "ift":  # the DEQ repository's hook, linearised at z*: VJPs through a tracked copy
            z_star = z.detach()
            new_z = self.f(z_star, x)
            z_cp = z_star.clone().requires_grad_()
            f_cp = self.f(z_cp, x)

            def hook(g_out):  # g <- J^T g + dL/dz from g = dL/dz, b_max_iter VJPs
                g = g_out
                for _ in range(b_max_iter):
                    g = torch.autograd.grad(f_cp, z_cp, g, retain_graph=True)[0] + g_out
                return g
            new_z.register_hook(hook)
            z = new_z
        else:
            raise ValueError(f"grad={grad!r}: expected 'none', 'jfb' or 'ift'")
        return decode(z, self.cfg.n_keypoints), z
