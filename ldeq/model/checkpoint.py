"""Safe checkpoint files for the LDEQ: the official format and our own, both loaded weights-only.

Official release: ``torch.save({'args': argparse.Namespace, 'state_dict': ...})``.
Ours: the same two keys (so the official code can read our files too) plus ``'ldeq_config'``
(a plain dict of :class:`LDEQConfig` fields), ``'format'`` and an optional ``'extra'`` dict.

Loading uses ``torch.load(weights_only=True)`` with only ``argparse.Namespace`` allowed beyond the
default tensors/containers/primitives, so no code in a checkpoint is ever executed. When ``args``
are missing the widths are inferred from tensor shapes. Saving is atomic (temp file + os.replace).
"""
import argparse
import os
from typing import Any, Dict, Optional

import torch

from .._io import atomic_save
from .config import LDEQConfig
from .ldeq import LDEQ

FORMAT = "ldeq-checkpoint-1"
_BETA_KEY = "deq_layer.cell.features_to_heatmaps.raw_beta"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or that does not hold a matching LDEQ."""


def read_checkpoint(path, map_location="cpu") -> Dict[str, Any]:
    """Load a checkpoint file safely: returns a dict with 'state_dict', 'args' (dict or None),
    'ldeq_config' (dict or None) and 'extra' (dict). A bare state_dict file is accepted too."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint: no such file {path!r}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 -- a file that is not a torch checkpoint raises anything
        # (KeyError / IndexError for a text file, UnpicklingError, RuntimeError for a bad zip ...)
        raise CheckpointError(f"checkpoint {path!r}: cannot be loaded safely: not a PyTorch checkpoint, or "
                              f"one holding code (torch.load weights_only=True, only argparse.Namespace allowed): "
                              f"{type(e).__name__}: {str(e)[:500]}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path!r}: expected a dict with a 'state_dict', got {type(obj).__name__}")
    if "state_dict" in obj:
        sd = obj["state_dict"]
    elif obj and all(torch.is_tensor(v) for v in obj.values()):
        sd = obj  # a bare state_dict
    else:
        raise CheckpointError(f"checkpoint {path!r}: no 'state_dict' key (keys: {sorted(map(str, obj))[:10]})")
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise CheckpointError(f"checkpoint {path!r}: 'state_dict' must map names to tensors")
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}  # DataParallel
    args = obj.get("args") if sd is not obj else None
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    if args is not None and not isinstance(args, dict):
        raise CheckpointError(f"checkpoint {path!r}: 'args' must be an argparse.Namespace or dict, "
                              f"got {type(args).__name__}")
    cfg = obj.get("ldeq_config") if sd is not obj else None
    return {"state_dict": sd, "args": args, "ldeq_config": cfg,
            "extra": (obj.get("extra") or {}) if sd is not obj else {}, "path": path}


def _norm_kind(sd, prefix):
    if prefix + ".norm.running_mean" in sd:
        return "bn"
    return "gn" if prefix + ".norm.weight" in sd else "none"


def infer_config_fields(sd: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    """Widths and norm kinds readable from tensor shapes (GroupNorm groups, beta and heatmap size
    are not: they keep their defaults unless given)."""
    need = ["tail.3.conv.weight", "deq_layer.cell.tail.conv.weight",
            "deq_layer.cell.hourglass.upchan1.conv.weight", "deq_layer.cell.head.conv.weight"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise CheckpointError(f"not an LDEQ (Cell0) state_dict: missing {missing}")
    W = int(sd["tail.3.conv.weight"].shape[0])
    base = int(sd["deq_layer.cell.tail.conv.weight"].shape[0])
    z = int(sd["deq_layer.cell.head.conv.weight"].shape[0])
    k = min(98, z)  # WFLW's 98 points; any further channels are latent
    return dict(injection_width=W, cell_base_width=base,
                cell_width_increment=int(sd["deq_layer.cell.hourglass.upchan1.conv.weight"].shape[0]) - base,
                n_keypoints=k, cell_extra_latent_width=z - k,
                cell_norm_layer=_norm_kind(sd, "deq_layer.cell.hourglass.same1"),
                backbone_norm_layer=_norm_kind(sd, "tail.0"),
                cell_learn_softargmax_beta=_BETA_KEY in sd)


def config_from_checkpoint(ckpt: Dict[str, Any], **overrides) -> LDEQConfig:
    """LDEQConfig for a :func:`read_checkpoint` result: our own config, else the official args,
    else shapes; fields the args lack are taken from the shapes; ``overrides`` win."""
    try:
        if ckpt.get("ldeq_config"):
            return LDEQConfig.from_dict({**ckpt["ldeq_config"], **overrides})
        shapes = infer_config_fields(ckpt["state_dict"])
        args = ckpt.get("args") or {}
        if args:
            fill = {k: v for k, v in shapes.items() if k not in args
                    and not (k == "cell_extra_latent_width" and "z_width" in args)
                    and not (k == "cell_norm_layer" and "model_mode" in args)
                    and not (k == "cell_learn_softargmax_beta")}
            return LDEQConfig.from_namespace(args, **{**fill, **overrides})
        return LDEQConfig(**{**shapes, **overrides})
    except (TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"checkpoint {ckpt.get('path', '?')!r}: invalid model settings: {e}") from e


def load_state_dict_checked(model: torch.nn.Module, sd: Dict[str, torch.Tensor], source: str = "state_dict"):
    """Strict load that lists missing keys, unexpected keys and shape mismatches in one error."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def show(xs):
            return f"{xs[:8]}{f' (+{len(xs) - 8} more)' if len(xs) > 8 else ''}"
        raise CheckpointError(
            f"{source} does not match this LDEQ (is it a checkpoint of another model?): "
            f"missing keys ({len(missing)}): {show(missing)}; unexpected keys ({len(unexpected)}): "
            f"{show(unexpected)}; shape mismatches ({len(shapes)}): {show(shapes)}")
    model.load_state_dict(sd, strict=True)
    return model


def load_checkpoint(path, map_location="cpu", **overrides) -> LDEQ:
    """Build the LDEQ a checkpoint describes, load its weights strictly, return it in eval mode.

    ``overrides`` set config fields the file cannot tell (e.g. ``cell_gn_groups``) or change
    inference settings (``solver``, ``max_iter``, ``tol``, ``official_std``...).
    """
    ckpt = read_checkpoint(path, map_location)
    cfg = config_from_checkpoint(ckpt, **overrides)
    model = LDEQ(cfg)
    load_state_dict_checked(model, ckpt["state_dict"], source=f"checkpoint {ckpt['path']!r}")
    return model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu").eval()


def save_checkpoint(model: LDEQ, path, extra: Optional[Dict[str, Any]] = None) -> str:
    """Write ``{'args', 'state_dict', 'ldeq_config', 'format', 'extra'}`` atomically; returns the path.

    ``extra`` (optimizer state, epoch, metrics, ...) must hold only tensors, containers and
    primitives so that it loads back with ``weights_only=True``.
    """
    if not isinstance(model, LDEQ):
        raise TypeError(f"model: expected an ldeq.model.LDEQ, got {type(model).__name__}")
    path = os.fspath(path)
    payload = {"format": FORMAT, "args": model.cfg.to_namespace(), "ldeq_config": model.cfg.to_dict(),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "extra": dict(extra or {})}
    atomic_torch_save(payload, path)
    return path


def atomic_torch_save(obj, path) -> None:
    """torch.save to a temp file in the same folder, fsync, then os.replace (never a half file)."""
    def _write(tmp):
        with open(tmp, "wb") as f:
            torch.save(obj, f)
    atomic_save(path, _write, suffix=".pt", fsync=True)
