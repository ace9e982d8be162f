"""The LDEQ cell's fast inference path on CPU: prepacked oneDNN weights, convolution + LeakyReLU
fused, channels-last activations.

What ``torch.compile`` with freezing does for the convolutions, without compiling: each Conv
block's weight is reordered once into oneDNN's blocked layout (``mkldnn_reorder_conv2d_weight``)
and applied with ``torch.ops.mkldnn._convolution_pointwise`` (bias and LeakyReLU fused), so no
call pays a weight reorder, none falls back to ``aten::_slow_conv2d_forward`` (which plain
``F.conv2d`` picks for small maps at batch 1 and for 1x1 kernels at one thread), and the
activations stay channels-last from the cell's first 1x1 convolution to its head. The norms,
pooling, upsampling, residual adds and the soft-argmax are the modules' own.

The packed weights are a cache of the parameters, never state: kept outside the module (a
``WeakKeyDictionary`` keyed by the Cell), rebuilt whenever a convolution weight changes
(``Tensor._version`` / storage, so an optimizer step or ``load_state_dict`` invalidates them),
and used only where they cannot be wrong: autograd off, no autocast, float32 on CPU, not while
tracing with ``torch.compile``, oneDNN present and ``LDEQ_PACKED_CELL`` not ``0``. Everywhere else
the cell runs its plain modules (the clean fallback), with the same values up to float32
rounding (tested).
"""
import os
import weakref
from typing import Dict, Optional, Tuple

import torch

from .layers import Conv, _autocast_on

__all__ = ["packed_available", "use_packed", "packed_cell", "set_packed_enabled"]

_ENABLED = os.environ.get("LDEQ_PACKED_CELL", "1") != "0"
_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
CHANNELS_LAST = torch.channels_last


def set_packed_enabled(enabled: bool) -> bool:
    """Switch the packed path on or off for this process; returns the previous setting."""
    global _ENABLED
    prev, _ENABLED = _ENABLED, bool(enabled)
    return prev


def packed_available() -> bool:
    """True when this torch build has oneDNN and the fused pointwise convolution op."""
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
                    and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight"))
    except (AttributeError, RuntimeError):
        return False


_AVAILABLE = packed_available()


def _compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # older torch
        return False


def use_packed(z: torch.Tensor) -> bool:
    """Whether a cell call on state ``z`` may take the packed path (see module docstring)."""
    return (_ENABLED and _AVAILABLE and z.device.type == "cpu" and z.dtype == torch.float32
            and not torch.is_grad_enabled() and not _compiling() and not _autocast_on("cpu"))


class _PackedConv:
    """One Conv block with its weight in oneDNN's layout: (B, Cin, H, W) -> (B, Cout, H', W')
    channels-last, = block(x) up to float32 rounding."""

    def __init__(self, block: Conv, weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                 act: Optional[bool] = None):
        conv = block.conv
        self.weight = (conv.weight if weight is None else weight).detach()
        self.bias = None if bias is False else (conv.bias if bias is None else bias)
        self.bias = None if self.bias is None else self.bias.detach()
        self.padding, self.stride = list(conv.padding), list(conv.stride)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        act = block.act if act is None else act
        self.attr, self.scalars = ("leaky_relu", [0.01]) if act else ("none", [])
        self.norm = block.norm
        self.norm_cache: dict = {}
        self._packed: Dict[Tuple[int, ...], torch.Tensor] = {}

    def _pack(self, shape: Tuple[int, ...]) -> torch.Tensor:
        w = self._packed.get(shape)
        if w is None:
            w = torch._C._nn.mkldnn_reorder_conv2d_weight(self.weight.contiguous().to_mkldnn(), self.padding,
                                                          self.stride, self.dilation, self.groups, list(shape))
            self._packed[shape] = w
        return w

    def conv(self, x: torch.Tensor, attr: Optional[str] = None) -> torch.Tensor:
        x = x.contiguous(memory_format=CHANNELS_LAST)
        return torch.ops.mkldnn._convolution_pointwise(
            x, self._pack(tuple(x.shape)), self.bias, self.padding, self.stride, self.dilation, self.groups,
            self.attr if attr is None else attr, self.scalars if attr is None else [], "")

    def conv_add(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """conv(x) + bias + other in one oneDNN call (no activation)."""
        x = x.contiguous(memory_format=CHANNELS_LAST)
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, other.contiguous(memory_format=CHANNELS_LAST), self._pack(tuple(x.shape)), self.bias, self.padding,
            self.stride, self.dilation, self.groups, "add", None, None, [], None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return norm(self.norm, self.conv(x), self.norm_cache)


class _PackedMerge:
    """A decoder merge without the concat: the 1x1 conv W [skip; up(d)] + b = W_s skip + b + up(W_u d)
    (a 1x1 convolution commutes with nearest upsampling), so the up half runs at the low resolution
    (a quarter of its FLOPs) and neither the upsampled map nor the concat is materialised at full
    width. Then LeakyReLU and the norm, as the block."""

    def __init__(self, block: Conv, skip_channels: int):
        w = block.conv.weight
        self.skip = _PackedConv(block, weight=w[:, :skip_channels], act=False)
        self.up = _PackedConv(block, weight=w[:, skip_channels:], bias=False, act=False)
        self.act, self.norm = block.act, block.norm

    def __call__(self, skip: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        u = torch.nn.functional.interpolate(self.up.conv(d), scale_factor=2, mode="nearest")
        y = self.skip.conv_add(skip, u)
        if self.act:
            torch.nn.functional.leaky_relu_(y, 0.01)
        return norm(self.norm, y, self.skip.norm_cache)


def norm(module: torch.nn.Module, y: torch.Tensor, cache: Optional[dict] = None) -> torch.Tensor:
    """``module(y)`` for a channels-last y (B, C, H, W). A one-group GroupNorm normalises over
    (C, H, W), which in channels-last memory is a LayerNorm over the contiguous (H, W, C) block, with
    the per-channel affine expanded to (H, W, C) (kept in ``cache`` per shape). torch's
    channels-last GroupNorm kernel computes E[y^2] - E[y]^2 and loses about 10x more (measured on
    224x64x64 maps with mean 5, std 3: 2.1e-5 against 2.5e-6 here and 1.1e-6 for the NCHW kernel),
    at the same speed as this (0.32 vs 0.35 ms, one thread)."""
    if not (isinstance(module, torch.nn.GroupNorm) and module.num_groups == 1 and y.dim() == 4
            and y.is_contiguous(memory_format=CHANNELS_LAST)):
        return module(y)
    B, C, H, W = y.shape
    key = (id(module), H, W)
    wb = None if cache is None else cache.get(key)
    if wb is None:
        if module.affine:
            wb = tuple(t.detach().view(1, 1, C).expand(H, W, C).contiguous() for t in (module.weight, module.bias))
        else:
            wb = (None, None)
        if cache is not None:
            cache[key] = wb
    out = torch.nn.functional.layer_norm(y.permute(0, 2, 3, 1), (H, W, C), wb[0], wb[1], module.eps)
    return out.permute(0, 3, 1, 2)


class PackedCell:
    """The packed twin of a :class:`ldeq.model.ldeq.Cell` for one set of weights.

    ``step(z, c)``: z (B, Z, S, S), c = ``cell.inject(x)`` (B, w, S, S) -> (B, Z, S, S), the value
    of ``cell.step(z, c)``. The first 1x1 convolution sees only z: its injection half (and bias) is
    the constant c, computed once per solve.
    """

    def __init__(self, cell, key):
        self.key = key  # no reference to the cell itself: the cache is keyed weakly by it
        self.tail_norm, self.hourglass, self.to_heatmaps = cell.tail.norm, cell.hourglass, cell.features_to_heatmaps
        Z = cell.z_width
        # z half of the tail conv: no bias (it is in c), activation after adding c
        self.tail_z = _PackedConv(cell.tail, weight=cell.tail.conv.weight[:, :Z], bias=False, act=False)
        self.tail_act = cell.tail.act
        # x half of the tail conv, with the bias: the injection constant c = W_x x + b
        self.tail_x = _PackedConv(cell.tail, weight=cell.tail.conv.weight[:, Z:], act=False)
        hg = cell.hourglass
        self.blocks = {id(m): _PackedConv(m) for m in hg.modules() if isinstance(m, Conv)}
        self.merges = {id(b): _PackedMerge(b, b.conv.in_channels // 2)  # concat[skip, up]: equal halves
                       for b in (hg.downchan2, hg.downchan4, hg.downchan6, hg.downchan8)}
        self.head = _PackedConv(cell.head)

    def _apply(self, block: Conv, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[id(block)](x)

    def _merge(self, block: Conv, skip: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return self.merges[id(block)](skip, d)

    def inject(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail_x.conv(x)

    def step(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        y = self.tail_z.conv_add(z, c)  # conv(z, W_z) + c in one pass (c holds the bias)
        if self.tail_act:
            torch.nn.functional.leaky_relu_(y, 0.01)
        y = norm(self.tail_norm, y, self.tail_z.norm_cache)
        y = self.hourglass(y, conv=self._apply, merge=self._merge)
        return self.to_heatmaps(self.head(y))


def _weights_key(cell) -> Tuple:
    return tuple((p.data_ptr(), p._version) for p in cell.parameters())


def packed_cell(cell) -> PackedCell:
    """The cell's PackedCell for its current weights (built on first use and after any change)."""
    key = _weights_key(cell)
    pc = _CACHE.get(cell)
    if pc is None or pc.key != key:
        pc = PackedCell(cell, key)
        _CACHE[cell] = pc
    return pc


# ----------------------------------------------------------------------------------- sync-free steps
def warm_step(model, images: torch.Tensor, z0: torch.Tensor, max_iter: int,
              extra_step: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """The RwR step with no host synchronisation: normalised images (B, 3, 4S, 4S) and the previous
    state z0 (B, Z, S, S) -> keypoints (B, K, 2), state (B, Z, S, S).

    Exactly ``max_iter`` applications of f from z0, then the extra final step (the official video
    setting, what :class:`ldeq.video.model_solve.LDEQSolve` runs for a warm frame), with no input
    checks, no residuals and no data-dependent branch: nothing reads a device value back, so on
    CUDA the call can be captured as a CUDA graph, and ``torch.compile(fullgraph=True)`` traces it
    whole. Validate inputs before a loop of such steps (``model.injection`` does for one call).
    """
    c = model.cell_inject(model.tail(images.contiguous(memory_format=CHANNELS_LAST)
                                     if images.device.type == "cpu" else images))
    z = z0
    for _ in range(int(max_iter) + int(bool(extra_step))):
        z = model.cell_step(z, c)
    return model.decode(z)[1], z


def fixed_budget_solve(model, images: torch.Tensor, max_iter: int,
                       extra_step: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """A fixed-budget solve from zeros with no host synchronisation (tol=0 with 'fixed_point_last':
    the last iterate after ``max_iter`` steps, then the extra final step): images (B, 3, 4S, 4S) ->
    keypoints (B, K, 2), state (B, Z, S, S). See :func:`warm_step`."""
    S = model.cfg.heatmap_size
    z0 = torch.zeros(images.shape[0], model.cfg.z_width, S, S, dtype=images.dtype, device=images.device)
    return warm_step(model, images, z0, max_iter, extra_step)
