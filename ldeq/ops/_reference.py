"""Pure-PyTorch references of every ldeq kernel: the test oracle and the fallback when the
compiled extension (or the backend for a device) is missing. Written for clarity, not speed."""
import torch

DECODE_EPS = 1e-4  # p = h / (sum h + 1e-4), as in the official LDEQ decoder


def heatmap_softargmax(logits: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) logits, beta () or (K,) -> (B, K, H, W) ``exp(beta * (l - max_spatial(l)))``.

    NaN rule (the kernels follow it): the max is ``torch.amax``, so a NaN of either sign anywhere in
    a channel makes the channel's max, heatmap (and so its coords and std) NaN; other channels are
    untouched. beta is validated (finite, > 0) by the public entry points, not here."""
    b = beta.reshape(1, -1, 1, 1) if beta.dim() > 0 else beta
    return torch.exp(b * (logits - logits.amax(dim=(-2, -1), keepdim=True)))


def heatmap_decode(heatmaps: torch.Tensor, official_std: bool = False):
    """(B, K, H, W) non-negative heatmaps -> coords (B, K, 2) as (x, y) in [0, 1) crop units and
    std (B, K).

    p = h / (sum h + 1e-4); x = sum(p * col) / W, y = sum(p * row) / H.
    std = sqrt(0.5 var_x + 0.5 var_y) with var_x = sum(p * (col / W - x)^2) (a true spread), or,
    with ``official_std``, the official release's value sqrt(0.5 a_x + 0.5 a_y) / W with
    a_x = sum(p * (col - x)^2) where x is already in [0, 1) (a second moment, kept for compatibility;
    for H != W each axis is divided by its own size).

    Overflow rule (the kernels follow it): the sums are taken in float64 (float32 inputs too; float32
    on devices without float64), then rounded to the input dtype, so a finite float32 heatmap whose
    channel sums past FLT_MAX (values ~3e38) decodes to its true centre. A channel whose sum is not
    finite in float64 (an inf or NaN in it, or float64 values summing past 1.8e308) gets NaN coords
    and std.
    """
    B, K, H, W = heatmaps.shape
    wide = torch.float32 if heatmaps.device.type == "mps" else torch.float64
    h = heatmaps.to(wide)
    cols = torch.arange(W, dtype=wide, device=h.device) / W
    rows = torch.arange(H, dtype=wide, device=h.device) / H
    S = h.sum(dim=(-2, -1), keepdim=True) + DECODE_EPS
    p = h / S
    px = p.sum(dim=-2)  # (B, K, W) marginal over rows
    py = p.sum(dim=-1)  # (B, K, H)
    x = (px * cols).sum(-1)
    y = (py * rows).sum(-1)
    mx, my = (x / W, y / H) if official_std else (x, y)
    var_x = (px * (cols - mx[..., None]) ** 2).sum(-1)
    var_y = (py * (rows - my[..., None]) ** 2).sum(-1)
    std = torch.sqrt(0.5 * var_x + 0.5 * var_y)
    coords = torch.stack([x, y], dim=-1)
    finite = torch.isfinite(S[..., 0, 0])
    nan = torch.full((), float("nan"), dtype=wide, device=h.device)
    coords = torch.where(finite[..., None], coords, nan)
    std = torch.where(finite, std, nan)
    return coords.to(heatmaps.dtype), std.to(heatmaps.dtype)


def heatmap_softargmax_decode(logits, beta, official_std: bool = False):
    """Both steps: logits -> (heatmaps, coords, std)."""
    h = heatmap_softargmax(logits, beta)
    coords, std = heatmap_decode(h, official_std)
    return h, coords, std
