"""Temporary: reference-backed API while the fused kernels land."""
import torch
from . import _reference as ref


def heatmap_softargmax(logits, beta=1.0):
    if not torch.is_tensor(beta):
        beta = torch.tensor(float(beta), dtype=logits.dtype, device=logits.device)
    return ref.heatmap_softargmax(logits, beta)


def heatmap_decode(heatmaps, official_std=False):
    return ref.heatmap_decode(heatmaps, official_std)


def heatmap_softargmax_decode(logits, beta=1.0, official_std=False):
    h = heatmap_softargmax(logits, beta)
    return (h,) + tuple(heatmap_decode(h, official_std))
