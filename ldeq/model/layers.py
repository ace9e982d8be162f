"""Building blocks of the official LDEQ: the ``Conv`` block and the soft-argmax heatmap normalisation."""
import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldeq.ops import heatmap_softargmax


class _Identity(nn.Module):
    """Parameter-free stand-in (the official code uses ``lambda x: x``, which leaves no state)."""

    def forward(self, x):
        return x


def make_norm(kind: str, channels: int, gn_groups: int = 1) -> nn.Module:
    """'bn' -> BatchNorm2d, 'gn' -> GroupNorm(gn_groups, channels), 'none' -> identity."""
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(gn_groups, channels)
    if kind == "none":
        return _Identity()
    raise ValueError(f"norm={kind!r}: expected one of 'bn', 'gn', 'none'")


class Conv(nn.Module):
    """Conv2d(bias, 'same' padding) -> LeakyReLU(0.01) -> norm: (B, in_ch, H, W) -> (B, out_ch, H/stride, W/stride).

    The norm comes after the activation, as in the official release; ``act=False`` drops the
    activation (the cell head). State-dict names: ``conv.*`` and ``norm.*``.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, norm: str = "bn",
                 gn_groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding=(kernel_size - 1) // 2, bias=True)
        self.act = act
        self.norm = make_norm(norm, out_ch, gn_groups)

    def forward(self, x):
        x = self.conv(x)
        if self.act:
            x = F.leaky_relu(x, 0.01)
        return self.norm(x)


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # older torch: no device argument
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()


def _no_autocast(device_type: str):
    """Autocast off on ``device_type`` (a no-op context where autocast is not enabled)."""
    return torch.autocast(device_type, enabled=False) if _autocast_on(device_type) else contextlib.nullcontext()


def _softplus_inverse(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class SoftArgmaxNorm(nn.Module):
    """Per-channel ``h <- exp(beta * (h - max_spatial(h)))``: (B, C, H, W) -> (B, C, H, W) in (0, 1], peak 1.

    beta is a fixed float, or (``learn=True``) one learned value per channel kept positive through a
    softplus and initialised to ``beta``. The official release's "learned" beta was never registered
    as a parameter (so it left no state-dict key and was never trained); ours is a real parameter
    ``raw_beta`` of shape (C,).
    """

    def __init__(self, channels: int, beta: float = 1.0, learn: bool = False):
        super().__init__()
        self.channels = channels
        self.learn = learn
        if learn:
            self.raw_beta = nn.Parameter(torch.full((channels,), _softplus_inverse(float(beta))))
        else:
            self.beta = float(beta)
            # the fixed beta as a tensor per (device, dtype), made on first use: a call then copies
            # nothing host-to-device, which a CUDA graph capture forbids (not state: no buffer)
            self._beta_tensors = {}

    def effective_beta(self):
        """() float or (C,) tensor: the inverse temperature actually applied (a learned beta is
        computed in the parameter's dtype even under autocast)."""
        if not self.learn:
            return self.beta
        with _no_autocast(self.raw_beta.device.type):
            return F.softplus(self.raw_beta)

    def forward(self, h):
        """h (B, C, H, W) -> (B, C, H, W) heatmaps.

        Under autocast the normalisation runs in float32 with a float32 beta and returns float32
        (whatever dtype autocast gave ``h``): the heatmaps are the DEQ state, which must not be
        rounded to the autocast dtype on every application of the cell. Without autocast the
        output has ``h``'s dtype.
        """
        low = _autocast_on(h.device.type) and h.dtype in (torch.float16, torch.bfloat16)
        with _no_autocast(h.device.type):
            beta = self.effective_beta()
            if low:
                h = h.float()
            if torch.is_tensor(beta):
                beta = beta.to(h.dtype)
            elif h.dtype in (torch.float32, torch.float64):
                key = (h.device, h.dtype)
                cache = self.__dict__.setdefault("_beta_tensors", {})
                t = cache.get(key)
                if t is None:
                    t = cache[key] = torch.tensor(beta, dtype=h.dtype, device=h.device)
                beta = t
            return heatmap_softargmax(h, beta)

    def extra_repr(self):
        return f"channels={self.channels}, " + ("learned beta" if self.learn else f"beta={self.beta}")
