"""LDEQ training: ``ldeq train`` / ``python -m ldeq.train`` (single process or ``torchrun``).

Modules: config (presets, files, overrides, validation), trainer (the loop), task (model family,
DEQ training forward), data (seeded, resumable batch stream), losses, schedule, ema, checkpoint
(atomic, exact resume), distributed (torchrun, gloo/NCCL, BatchNorm sync), logs (JSONL/CSV,
TensorBoard, curves PNG).
"""
from .cli import main
from .config import Config, ConfigError, PRESETS, build_config

__all__ = ["main", "Config", "ConfigError", "PRESETS", "build_config", "train"]


def train(*args, **kwargs):
    """See :func:`ldeq.train.trainer.train` (imported lazily: torch.distributed etc.)."""
    from .trainer import train as _train
    return _train(*args, **kwargs)
