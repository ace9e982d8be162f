"""Fused heatmap normalisation and soft-argmax decode: validated entry points, autograd and
fake (meta) kernels for ``torch.ops.ldeq.heatmap_*``. Formulas and shapes: csrc/heatmap/heatmap.h.

Without a compiled kernel for the input's device the pure-PyTorch reference
(:mod:`ldeq.ops._reference`) runs instead, with a one-time warning.
"""
import math
from typing import Tuple, Union

import torch
from torch import Tensor

from .. import _ext
from . import _reference as ref

_NATIVE = (torch.float32, torch.float64)


# ---------------------------------------------------------------------------------------- checks
def _check_maps(t, name: str) -> None:
    if not torch.is_tensor(t):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, K, H, W), got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name} must have shape (B, K, H, W) (4 dims), got shape {tuple(t.shape)} ({t.dim()} dims)")
    if t.shape[-2] == 0 or t.shape[-1] == 0:
        raise ValueError(f"{name} must have non-empty spatial dims H and W, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float32 or float64; float16/bfloat16 are "
                        f"computed in float32), got dtype {t.dtype}")


def _compute_dtype(t: Tensor) -> torch.dtype:
    return t.dtype if t.dtype in _NATIVE else torch.float32


def _as_beta(beta, logits: Tensor) -> Tensor:
    K = logits.shape[1]
    dtype = _compute_dtype(logits)
    if isinstance(beta, (int, float)) and not isinstance(beta, bool):
        if not (math.isfinite(beta) and beta > 0):
            raise ValueError(f"beta must be finite and > 0, got {beta}")
        return torch.tensor(float(beta), dtype=dtype, device=logits.device)
    if not torch.is_tensor(beta):
        raise TypeError(f"beta must be a float or a tensor of shape () or (K,) = ({K},), got {type(beta).__name__}")
    if beta.device != logits.device:
        raise ValueError(f"beta must be on logits' device {logits.device}, got {beta.device}")
    if not beta.is_floating_point():
        raise TypeError(f"beta must be a floating-point tensor, got dtype {beta.dtype}")
    if not (beta.numel() == 1 and beta.dim() <= 1) and tuple(beta.shape) != (K,):
        raise ValueError(f"beta must be a scalar or have shape (K,) = ({K},), got shape {tuple(beta.shape)}")
    _check_beta_values(beta)
    return beta.to(dtype)


def _check_beta_values(beta: Tensor) -> None:
    """beta must be finite and > 0 (else the heatmaps are NaN or exceed 1). The check reads the tensor on
    the host, so it is skipped while torch.compile traces and while a CUDA graph is being captured."""
    if torch.compiler.is_compiling():
        return
    if beta.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return
    b = beta.detach()
    if not bool((torch.isfinite(b) & (b > 0)).all()):
        bad = b[~(torch.isfinite(b) & (b > 0))].flatten()[:4].tolist()
        raise ValueError(f"beta must be finite and > 0, got {'values ' if b.numel() > 1 else ''}"
                         f"{bad if b.numel() > 1 else bad[0]}")


def _use_kernel(op: str, t: Tensor) -> bool:
    return _ext.use_kernel(op, t.device.type)


# ---------------------------------------------------------------------------------------- public API
def heatmap_softargmax(logits: Tensor, beta: Union[float, Tensor] = 1.0) -> Tensor:
    """Per-channel soft-argmax normalisation ``exp(beta * (logits - max_{H,W} logits))``.

    Args:
        logits: (B, K, H, W) floating tensor (any strides).
        beta: a float, a tensor of shape () / (1,), or (K,) (one per landmark, may require grad);
            finite and > 0, else ValueError.
    Returns:
        (B, K, H, W) heatmaps in (0, 1] with peak 1, in ``logits``' dtype. Differentiable with
        respect to ``logits`` and ``beta`` (ties at the max share its gradient evenly, as ``amax``).
    """
    _check_maps(logits, "logits")
    b = _as_beta(beta, logits)
    x = logits.to(_compute_dtype(logits))
    if _use_kernel("heatmap_softargmax", x):
        h = torch.ops.ldeq.heatmap_softargmax(x, b)
    else:
        h = ref.heatmap_softargmax(x, b)
    return h.to(logits.dtype)


def heatmap_decode(heatmaps: Tensor, official_std: bool = False) -> Tuple[Tensor, Tensor]:
    """Soft-argmax decode of non-negative heatmaps.

    Args:
        heatmaps: (B, K, H, W) non-negative floating tensor.
        official_std: return the official LDEQ release's "uncertainty" (a second moment mixing pixel
            and unit coordinates) instead of the true standard deviation. Only for compatibility.
    Returns:
        coords: (B, K, 2) expected (x, y) in [0, 1) crop units: x = sum(p * col) / W with
            p = h / (sum h + 1e-4).
        std: (B, K) sqrt(0.5 var_x + 0.5 var_y) of p in the same units.
    """
    _check_maps(heatmaps, "heatmaps")
    h = heatmaps.to(_compute_dtype(heatmaps))
    if _use_kernel("heatmap_decode", h):
        coords, std = torch.ops.ldeq.heatmap_decode(h, bool(official_std))
    else:
        coords, std = ref.heatmap_decode(h, bool(official_std))
    return coords.to(heatmaps.dtype), std.to(heatmaps.dtype)


def heatmap_softargmax_decode(logits: Tensor, beta: Union[float, Tensor] = 1.0,
                              official_std: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """Both steps in one fused op: (B, K, H, W) logits -> heatmaps (B, K, H, W), coords (B, K, 2),
    std (B, K). Same values and gradients as ``heatmap_decode(heatmaps_softargmax(logits, beta))``,
    but each channel is decoded while in cache, and the backward goes from the gradients of coords,
    std (and heatmaps, if used) to logits and beta without writing dL/dheatmaps to memory."""
    _check_maps(logits, "logits")
    b = _as_beta(beta, logits)
    x = logits.to(_compute_dtype(logits))
    if _use_kernel("heatmap_softargmax_decode", x):
        h, coords, std = torch.ops.ldeq.heatmap_softargmax_decode(x, b, bool(official_std))
    else:
        h, coords, std = ref.heatmap_softargmax_decode(x, b, bool(official_std))
    return h.to(logits.dtype), coords.to(logits.dtype), std.to(logits.dtype)


def heatmap_softargmax_coords(logits: Tensor, beta: Union[float, Tensor] = 1.0,
                              official_std: bool = False) -> Tuple[Tensor, Tensor]:
    """Coordinates and std straight from logits, without materialising the heatmaps.

    (B, K, H, W) logits -> coords (B, K, 2), std (B, K): the values of
    ``heatmap_decode(heatmap_softargmax(logits, beta))``. Each channel's heatmap exists only in a
    per-thread buffer (CPU) or on chip (CUDA); the backward recomputes it from logits. Use it where
    only the coordinates feed the loss (e.g. the tracked final step of DEQ training): it reads the
    logits once per direction and writes only grad_logits.
    """
    _check_maps(logits, "logits")
    b = _as_beta(beta, logits)
    x = logits.to(_compute_dtype(logits))
    if _use_kernel("heatmap_softargmax_coords", x):
        coords, std = torch.ops.ldeq.heatmap_softargmax_coords(x, b, bool(official_std))
    else:
        coords, std = ref.heatmap_softargmax_decode(x, b, bool(official_std))[1:]
    return coords.to(logits.dtype), std.to(logits.dtype)


# ---------------------------------------------------------------------------------------- registration
def _reduce_beta_grad(gb: Tensor, beta: Tensor) -> Tensor:
    # the kernel returns one partial sum per (sample, channel); fold it to beta's shape
    return gb.sum().reshape(beta.shape) if beta.numel() == 1 else gb.sum(0)


def _grads_through_reference(ctx, inputs, outs, grad_outs):
    """Double backward (create_graph=True): differentiate the reference's ``outs``, computed from
    ``inputs``, instead, so second derivatives exist (the fused backward ops are not differentiable).
    Returns one gradient per input, None where ``ctx`` needs none."""
    needs = ctx.needs_input_grad[:len(inputs)]
    wrt = [t for t, need in zip(inputs, needs) if need]
    grads = iter(torch.autograd.grad(outs, wrt, grad_outs, create_graph=True, allow_unused=True))
    return tuple(next(grads) if need else None for need in needs)


def _or_zeros(grad, like: Tensor) -> Tensor:
    # outputs whose gradient autograd did not materialise (set_materialize_grads(False))
    return torch.zeros_like(like) if grad is None else grad


def _softargmax_setup(ctx, inputs, output):
    logits, beta = inputs
    ctx.save_for_backward(logits, beta, output)


def _softargmax_backward(ctx, grad):
    logits, beta, h = ctx.saved_tensors
    if torch.is_grad_enabled():
        return _grads_through_reference(ctx, (logits, beta), ref.heatmap_softargmax(logits, beta), grad)
    gl, gb = torch.ops.ldeq.heatmap_softargmax_backward(grad.contiguous(), logits, beta, h)
    return gl, (_reduce_beta_grad(gb, beta) if ctx.needs_input_grad[1] else None)


def _decode_setup(ctx, inputs, output):
    heatmaps, official_std = inputs
    coords, std = output
    ctx.official_std = official_std
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(heatmaps, coords, std)


def _decode_backward(ctx, grad_coords, grad_std):
    heatmaps, coords, std = ctx.saved_tensors
    grad_coords, grad_std = _or_zeros(grad_coords, coords), _or_zeros(grad_std, std)
    if torch.is_grad_enabled():
        outs = ref.heatmap_decode(heatmaps, ctx.official_std)
        return _grads_through_reference(ctx, (heatmaps,), outs, (grad_coords, grad_std)) + (None,)
    return torch.ops.ldeq.heatmap_decode_backward(grad_coords.contiguous(), grad_std.contiguous(), heatmaps, coords,
                                                  std, ctx.official_std), None


def _fused_setup(ctx, inputs, output):
    logits, beta, official_std = inputs
    ctx.official_std = official_std
    ctx.set_materialize_grads(False)  # an unused heatmaps output must not cost a zero-filled tensor
    ctx.save_for_backward(logits, beta, *output)


def _fused_backward(ctx, grad_h, grad_coords, grad_std):
    logits, beta, h, coords, std = ctx.saved_tensors
    grad_coords, grad_std = _or_zeros(grad_coords, coords), _or_zeros(grad_std, std)
    if torch.is_grad_enabled():
        outs = ref.heatmap_softargmax_decode(logits, beta, ctx.official_std)
        grad_outs = (_or_zeros(grad_h, h), grad_coords, grad_std)
        return _grads_through_reference(ctx, (logits, beta), outs, grad_outs) + (None,)
    gl, gb = torch.ops.ldeq.heatmap_softargmax_decode_backward(
        None if grad_h is None else grad_h.contiguous(), grad_coords.contiguous(), grad_std.contiguous(), logits, beta,
        h, coords, std, ctx.official_std)
    return gl, (_reduce_beta_grad(gb, beta) if ctx.needs_input_grad[1] else None), None


def _coords_setup(ctx, inputs, output):
    logits, beta, official_std = inputs
    ctx.official_std = official_std
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(logits, beta, *output)


def _coords_backward(ctx, grad_coords, grad_std):
    logits, beta, coords, std = ctx.saved_tensors
    grad_coords, grad_std = _or_zeros(grad_coords, coords), _or_zeros(grad_std, std)
    if torch.is_grad_enabled():
        outs = ref.heatmap_softargmax_decode(logits, beta, ctx.official_std)[1:]
        return _grads_through_reference(ctx, (logits, beta), outs, (grad_coords, grad_std)) + (None,)
    gl, gb = torch.ops.ldeq.heatmap_softargmax_coords_backward(grad_coords.contiguous(), grad_std.contiguous(), logits,
                                                               beta, coords, std, ctx.official_std)
    return gl, (_reduce_beta_grad(gb, beta) if ctx.needs_input_grad[1] else None), None


def _register() -> None:
    lib = "ldeq::"

    @torch.library.register_fake(lib + "heatmap_softargmax")
    def _(logits, beta):
        return torch.empty_like(logits, memory_format=torch.contiguous_format)

    @torch.library.register_fake(lib + "heatmap_softargmax_backward")
    def _(grad, logits, beta, heatmaps):
        return (torch.empty_like(logits, memory_format=torch.contiguous_format),
                logits.new_empty(logits.shape[:2]))

    @torch.library.register_fake(lib + "heatmap_decode")
    def _(heatmaps, official_std=False):
        B, K = heatmaps.shape[:2]
        return heatmaps.new_empty((B, K, 2)), heatmaps.new_empty((B, K))

    @torch.library.register_fake(lib + "heatmap_decode_backward")
    def _(grad_coords, grad_std, heatmaps, coords, std, official_std=False):
        return torch.empty_like(heatmaps, memory_format=torch.contiguous_format)

    @torch.library.register_fake(lib + "heatmap_softargmax_decode")
    def _(logits, beta, official_std=False):
        B, K = logits.shape[:2]
        return (torch.empty_like(logits, memory_format=torch.contiguous_format), logits.new_empty((B, K, 2)),
                logits.new_empty((B, K)))

    @torch.library.register_fake(lib + "heatmap_softargmax_decode_backward")
    def _(grad_heatmaps, grad_coords, grad_std, logits, beta, heatmaps, coords, std, official_std=False):
        return (torch.empty_like(logits, memory_format=torch.contiguous_format),
                logits.new_empty(logits.shape[:2]))

    @torch.library.register_fake(lib + "heatmap_softargmax_coords")
    def _(logits, beta, official_std=False):
        B, K = logits.shape[:2]
        return logits.new_empty((B, K, 2)), logits.new_empty((B, K))

    @torch.library.register_fake(lib + "heatmap_softargmax_coords_backward")
    def _(grad_coords, grad_std, logits, beta, coords, std, official_std=False):
        return (torch.empty_like(logits, memory_format=torch.contiguous_format),
                logits.new_empty(logits.shape[:2]))

    torch.library.register_autograd(lib + "heatmap_softargmax_coords", _coords_backward, setup_context=_coords_setup)
    torch.library.register_autograd(lib + "heatmap_softargmax_decode", _fused_backward, setup_context=_fused_setup)
    torch.library.register_autograd(lib + "heatmap_softargmax", _softargmax_backward, setup_context=_softargmax_setup)
    torch.library.register_autograd(lib + "heatmap_decode", _decode_backward, setup_context=_decode_setup)


if _ext.extension_loaded():
    _register()
