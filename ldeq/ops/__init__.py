"""Python entry points of the ldeq kernels (validated inputs, autograd, compiled or reference)."""
from .heatmap import heatmap_decode, heatmap_softargmax, heatmap_softargmax_coords, heatmap_softargmax_decode

__all__ = ["heatmap_softargmax", "heatmap_decode", "heatmap_softargmax_decode", "heatmap_softargmax_coords"]
