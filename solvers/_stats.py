"""The uniform result record every ldeq solver returns next to ``z_star``."""
from dataclasses import dataclass, field
from typing import Dict

import torch


@dataclass
class SolverStats:
    """Per-sample diagnostics of one fixed-point solve (B = batch size, T = iterations run).

    nstep:      (B,) int64, iterations each sample used (a converged sample stops counting).
    abs_lowest: (B,) lowest absolute residual ||f(z) - z|| seen, per sample.
    rel_lowest: (B,) lowest relative residual ||f(z) - z|| / (||f(z)|| + eps), per sample.
    abs_trace:  (B, T) absolute residual at every iteration (the last value repeats once converged).
    rel_trace:  (B, T) relative residual at every iteration.
    converged:  (B,) bool, lowest residual (in the stop mode) <= tol.
    safeguard:  (B,) bool, a safeguard fired (regularised/least-squares fallback, NaN restart, ...).
    trajectory: {iteration: (B, ...) tensor} iterates saved at the iterations the caller asked for.
    """
    nstep: torch.Tensor
    abs_lowest: torch.Tensor
    rel_lowest: torch.Tensor
    abs_trace: torch.Tensor
    rel_trace: torch.Tensor
    converged: torch.Tensor
    safeguard: torch.Tensor
    trajectory: Dict[int, torch.Tensor] = field(default_factory=dict)
    solver: str = ""
    stop_mode: str = "rel"

    @property
    def lowest(self) -> torch.Tensor:
        """(B,) lowest residual in the stop mode."""
        return self.rel_lowest if self.stop_mode == "rel" else self.abs_lowest

    def summary(self) -> str:
        return (f"{self.solver}: steps mean {self.nstep.float().mean():.1f} max {int(self.nstep.max())}, "
                f"{self.stop_mode} residual max {float(self.lowest.max()):.3e}, "
                f"converged {int(self.converged.sum())}/{self.converged.numel()}"
                + (f", safeguard fired on {int(self.safeguard.sum())}" if bool(self.safeguard.any()) else ""))
