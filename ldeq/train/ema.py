"""Exponential moving average of a model's weights, used for evaluation and the exported model."""
import contextlib
from typing import Dict

import torch
from torch import nn


class EMA:
    """shadow <- d * shadow + (1 - d) * param after every optimiser step, with the warm-up
    d = min(decay, (1 + n) / (10 + n)) (n = updates so far) so early averages are not dominated by
    the random initialisation. Floating-point buffers (BatchNorm running stats) are averaged too;
    integer buffers (num_batches_tracked) are copied.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0
        self.shadow: Dict[str, torch.Tensor] = {k: v.detach().clone() for k, v in _state(model).items()}

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        for k, v in _state(model).items():
            s = self.shadow[k]
            if s.is_floating_point():
                s.mul_(d).add_(v.detach().to(s.dtype), alpha=1.0 - d)
            else:
                s.copy_(v)
        self.num_updates += 1

    @contextlib.contextmanager
    def applied(self, model: nn.Module):
        """Temporarily loads the averaged weights into ``model`` (restored on exit)."""
        backup = {k: v.detach().clone() for k, v in _state(model).items()}
        _load(model, self.shadow)
        try:
            yield model
        finally:
            _load(model, backup)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates,
                "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state does not match the model; differing keys: {sorted(missing)[:5]}")
        self.decay = state["decay"]
        self.num_updates = state["num_updates"]
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _state(model: nn.Module) -> Dict[str, torch.Tensor]:
    return _unwrap(model).state_dict(keep_vars=False)


@torch.no_grad()
def _load(model: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    own = _state(model)
    for k, v in state.items():
        own[k].copy_(v)
