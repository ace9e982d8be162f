"""Learning-rate schedule: linear warm-up to the peak, then cosine decay to ``min_ratio`` x peak."""
import math

import torch


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate used for optimiser step ``step`` (0-based).

    Warm-up: (step + 1) / warmup_steps for step < warmup_steps (never 0, so step 0 learns).
    Then cosine from 1 at step = warmup_steps to min_ratio at step = total_steps - 1.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - 1 - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                   min_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR stepping once per optimiser step; its state_dict holds the step for --resume."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup_steps, min_ratio))
