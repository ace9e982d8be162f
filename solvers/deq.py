"""The DEQ layer: solve z* = f(z*) without autograd, then attach a gradient.

Functional form ``z, stats = deq(f, z0, ...)`` and module form ``DEQ(f)(z0, *inputs)``. f maps a
(B, ...) state to the same shape; it may be an nn.Module (its parameters get gradients) and may
take injected inputs ``f(z, *args)`` (they get gradients too). Samples in the batch must not
interact inside f (GroupNorm is fine, BatchNorm is not): solvers stop per sample.

Training memory does not depend on max_iter: the solve runs under no_grad and only the final
tracked application(s) of f are kept for backward.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Union

import torch
from torch import nn

from ._stats import SolverStats
from .implicit import (BackwardConfig, BackwardRecord, ON_FAIL_MODES, _tracked_step, ift_grad,
                       jfb_grad, phantom_grad)
from .regularization import jacobian_frobenius, spectral_radius

__all__ = ["deq", "DEQ", "DEQStats", "GRAD_MODES"]

GRAD_MODES = ("ift", "jfb", "phantom")


@dataclass
class DEQStats(SolverStats):
    """The forward solve's SolverStats plus what the DEQ layer added.

    max_iter:  the iteration budget this call used (sampled when stochastic_max_iter).
    grad:      gradient mode ('ift', 'jfb', 'phantom'), or '' when no gradient was attached.
    backward:  BackwardRecord, filled in when backward runs through an 'ift' output.
    states:    tracked intermediate states (B, ...) at ``state_iters`` followed by the output,
               for fixed-point-correction losses (empty unless state_iters was given).
    jac_loss:  (B,) Hutchinson estimate of ||J_f(z*)||_F^2 (with graph), when requested.
    sradius:   (B,) power-iteration estimate of rho(J_f(z*)), when requested.
    """
    max_iter: int = 0
    grad: str = ""
    backward: BackwardRecord = field(default_factory=BackwardRecord)
    states: List[torch.Tensor] = field(default_factory=list)
    jac_loss: Optional[torch.Tensor] = None
    sradius: Optional[torch.Tensor] = None


def _resolve_solver(solver: Union[str, Callable], what: str) -> Callable:
    if callable(solver):
        return solver
    if not isinstance(solver, str):
        raise TypeError(f"{what} must be a solver name or a callable, got {type(solver).__name__}")
    from . import get_solver  # late: solvers/__init__ imports this module
    return get_solver(solver)


def _autocast_wrap(f: Callable, device_type: str):
    """Return (f_solve, context): the solver runs with autocast off (fp32 bookkeeping) while f
    itself still runs under the caller's autocast and is cast back to the state dtype."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # older torch: no device argument
        enabled = torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()
    if not enabled:
        return f, None
    dtype = torch.get_autocast_dtype(device_type)

    def f_amp(z):
        with torch.autocast(device_type, dtype=dtype, enabled=True):
            out = f(z)
        return out.to(z.dtype)
    return f_amp, device_type


def _check_inputs(f, z0, max_iter, grad, tol):
    if not callable(f):
        raise TypeError(f"f must be callable (f(z, *args) -> tensor like z), got {type(f).__name__}")
    if not isinstance(z0, torch.Tensor):
        raise TypeError(f"z0 must be a torch.Tensor of shape (B, ...), got {type(z0).__name__}")
    if z0.dim() < 1 or z0.shape[0] == 0:
        raise ValueError(f"z0 must have shape (B, ...) with B >= 1, got {tuple(z0.shape)}")
    if not z0.is_floating_point():
        raise TypeError(f"z0 must be a floating-point tensor (float32/float64), got {z0.dtype}")
    if z0.dtype in (torch.float16, torch.bfloat16):
        raise TypeError(f"z0 must be float32 or float64 (the solver state stays full precision; use "
                        f"torch.autocast for a low-precision f), got {z0.dtype}")
    if not bool(torch.isfinite(z0).all()):
        raise ValueError("z0 contains NaN or Inf")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    if grad not in GRAD_MODES:
        raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
    if not float(tol) >= 0:
        raise ValueError(f"tol must be >= 0 (0: always run max_iter iterations), got {tol}")


def _solver_accepts(solver: Callable, name: str) -> bool:
    """True when ``name`` is an explicit parameter of the solver (``**kw`` does not count)."""
    try:
        return name in inspect.signature(solver).parameters
    except (TypeError, ValueError):
        return False


def deq(f: Callable, z0: torch.Tensor, *, args: Sequence = (),
        solver: Union[str, Callable] = "anderson", max_iter: int = 30, tol: float = 1e-3,
        stop_mode: str = "rel", solver_kwargs: Optional[dict] = None,
        grad: str = "ift", b_solver: Union[str, Callable, None] = None, b_max_iter: Optional[int] = None,
        b_tol: float = 1e-4, b_stop_mode: str = "rel", b_solver_kwargs: Optional[dict] = None,
        on_backward_fail: str = "warn", phantom_steps: int = 5, phantom_tau: float = 0.5,
        stochastic_max_iter: bool = False, generator: Optional[torch.Generator] = None,
        extra_step: bool = True, state_iters: Sequence[int] = (), jac_reg_samples: int = 0,
        sradius_iters: int = 0, subset_args: bool = False):
    """Find z* = f(z*, *args) from z0 and return it with a gradient attached.

    f:          callable f(z, *args) -> tensor shaped like z; parameters it closes over (or an
                nn.Module's) and tensors in ``args`` receive gradients.
    z0:         (B, ...) float32/float64 initial state (no gradient flows into z0).
    solver, max_iter, tol, stop_mode, solver_kwargs: forward solve (a name for get_solver or a
                callable with the ldeq.solvers contract).
    grad:       'ift' (implicit), 'jfb' (one tracked step) or 'phantom' (phantom_steps damped
                steps with phantom_tau). Gradients are attached only when autograd is enabled.
    b_solver, b_max_iter, b_tol, b_stop_mode, b_solver_kwargs: the 'ift' backward solve
                g = J^T g + grad (defaults: the forward solver and max_iter; a relative
                tolerance, because the gradient's scale is arbitrary, e.g. under a GradScaler).
    on_backward_fail: 'raise' | 'warn' | 'zero' (see implicit.ON_FAIL_MODES); failures are
                always recorded in ``stats.backward``.
    stochastic_max_iter: when attaching a gradient, use max_iter ~ uniform{1..max_iter}
                (drawn from ``generator``), the LDEQ training recipe.
    extra_step: inference only: return f(z*) rather than z* (in training the tracked step
                is the extra step).
    state_iters: iterations whose solver iterates are returned, with a one-step gradient
                (phantom steps in 'phantom' mode), in ``stats.states`` before the output.
    jac_reg_samples: >0 puts a Hutchinson estimate of ||J_f(z*)||_F^2 (B,) in stats.jac_loss.
    sradius_iters: >0 puts a power-iteration estimate of rho(J_f(z*)) (B,) in stats.sradius.
    subset_args: promise that f depends on the batch only through z and ``args`` (every arg a
                (B, ...) tensor): the solver may then evaluate f on its unconverged samples only,
                as f(z[idx], *(a[idx] for a in args)). Leave False when f closes over batch data.

    Returns (z, stats): z (B, ...) like z0; stats a DEQStats.
    """
    _check_inputs(f, z0, max_iter, grad, tol)
    if on_backward_fail not in ON_FAIL_MODES:
        raise ValueError(f"on_backward_fail must be one of {ON_FAIL_MODES}, got {on_backward_fail!r}")
    fwd_solver = _resolve_solver(solver, "solver")
    args = tuple(args)
    f_call = (lambda z: f(z, *args)) if args else f

    def f_user(z):
        # Checked on every call (cheap): a wrong shape would otherwise surface as a broadcast
        # error deep inside a solver.
        out = f_call(z)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"f(z) must return a tensor, got {type(out).__name__}")
        if out.shape != z.shape:
            raise ValueError(f"f(z) must return the shape of z {tuple(z.shape)}, got {tuple(out.shape)}")
        return out
    f_run, amp = _autocast_wrap(f_user, z0.device.type)
    track = torch.is_grad_enabled()

    used_iter = max_iter
    if stochastic_max_iter and track:
        used_iter = int(torch.randint(1, max_iter + 1, (), generator=generator))

    skw = dict(solver_kwargs or {})
    state_iters = sorted({int(i) for i in state_iters})
    if any(i < 1 for i in state_iters):
        raise ValueError(f"state_iters must be >= 1, got {state_iters}")
    want = [i for i in state_iters if i <= used_iter]
    recorded = {}
    if want:
        if _solver_accepts(fwd_solver, "trajectory"):  # ldeq.solvers: lowest-residual iterate after k its
            skw["trajectory"] = want
        else:  # solver-agnostic fallback: the input of f's k-th call is the iterate of iteration k
            calls = [0]
            inner = f_run

            def f_run(z, _inner=inner):  # noqa: F811
                calls[0] += 1
                if calls[0] in want:
                    recorded[calls[0]] = z.detach().clone()
                return _inner(z)

    if subset_args and _solver_accepts(fwd_solver, "f_subset"):
        if not args or not all(isinstance(a, torch.Tensor) and a.dim() >= 1 and a.shape[0] == z0.shape[0]
                                for a in args):
            raise ValueError("subset_args=True needs every arg to be a (B, ...) tensor with B = z0.shape[0]")
        amp_dtype = torch.get_autocast_dtype(amp) if amp else None

        def f_subset(zs, idx):
            with (torch.autocast(amp, dtype=amp_dtype) if amp else contextlib.nullcontext()):
                out = f(zs, *(a.index_select(0, idx) for a in args))
            return out.to(zs.dtype)
        skw["f_subset"] = f_subset

    cfg = None
    if grad == "ift" and track:  # validated before the (expensive) forward solve
        cfg = BackwardConfig(solver=_resolve_solver(b_solver if b_solver is not None else solver, "b_solver"),
                             max_iter=b_max_iter if b_max_iter is not None else max_iter, tol=b_tol,
                             stop_mode=b_stop_mode, solver_kwargs=dict(b_solver_kwargs or {}),
                             on_fail=on_backward_fail)

    with torch.no_grad(), (torch.autocast(amp, enabled=False) if amp else contextlib.nullcontext()):
        z_star, fstats = fwd_solver(f_run, z0.detach(), max_iter=used_iter, tol=tol, stop_mode=stop_mode, **skw)
    f_track = _autocast_wrap(f_user, z0.device.type)[0]  # without the recorder
    stats = DEQStats(**{fl.name: getattr(fstats, fl.name) for fl in dataclasses.fields(SolverStats)},
                     max_iter=used_iter)
    traj = dict(getattr(fstats, "trajectory", {}) or {})
    traj.update(recorded)

    if not track:
        with torch.no_grad():
            out = f_track(z_star).to(z0.dtype) if extra_step else z_star
        if sradius_iters > 0:  # monitoring works at inference too
            stats.sradius = spectral_radius(*_tracked_step(f_track, z_star, True)[::-1], sradius_iters,
                                            generator=generator)
        return out, stats

    stats.grad = grad
    for i in want:
        if i in traj:
            zi = traj[i]
            stats.states.append(phantom_grad(f_track, zi, phantom_steps, phantom_tau) if grad == "phantom"
                                else jfb_grad(f_track, zi))

    z_req = fz = None
    if grad == "ift":
        with (torch.autocast(amp, enabled=False) if amp else contextlib.nullcontext()):
            out, z_req, fz = ift_grad(f_track, z_star, cfg, stats.backward)
    elif grad == "jfb":
        out = jfb_grad(f_track, z_star)
    else:
        out = phantom_grad(f_track, z_star, phantom_steps, phantom_tau)
    if want:
        stats.states.append(out)

    if jac_reg_samples > 0 or sradius_iters > 0:
        if z_req is None or not z_req.requires_grad:
            z_req, fz = _tracked_step(f_track, z_star, True)
        if jac_reg_samples > 0:
            stats.jac_loss = jacobian_frobenius(fz, z_req, jac_reg_samples, generator=generator)
        if sradius_iters > 0:
            stats.sradius = spectral_radius(fz, z_req, sradius_iters, generator=generator)
    return out, stats


class DEQ(nn.Module):
    """Deep equilibrium layer around a cell ``f(z, *inputs)``.

    ``DEQ(f, max_iter=30, eval_max_iter=None, stochastic_max_iter=False, **deq_kwargs)``; an
    nn.Module ``f`` is registered as the submodule ``f`` (no copies: DDP/optimisers see its
    parameters). In training mode the budget is ``max_iter`` (sampled uniformly in
    1..max_iter when stochastic_max_iter); in eval mode it is ``eval_max_iter`` (default
    max_iter). ``deq_kwargs`` are any keyword arguments of :func:`deq`.

    forward(z0 (B, ...), *inputs, f=None) -> (z (B, ...), DEQStats). ``f`` overrides the cell for
    this call (e.g. a bound method of the parent module).
    """

    def __init__(self, f: Optional[Callable] = None, *, max_iter: int = 30,
                 eval_max_iter: Optional[int] = None, stochastic_max_iter: bool = False, **deq_kwargs):
        super().__init__()
        bad = set(deq_kwargs) & {"args", "max_iter", "stochastic_max_iter"}
        if bad:
            raise TypeError(f"DEQ: pass {sorted(bad)} per call / as named constructor arguments")
        valid = set(inspect.signature(deq).parameters) - {"f", "z0"}
        unknown = set(deq_kwargs) - valid
        if unknown:
            raise TypeError(f"DEQ: unknown option(s) {sorted(unknown)}; valid: {sorted(valid)}")
        self.f = f
        self.max_iter = max_iter
        self.eval_max_iter = eval_max_iter if eval_max_iter is not None else max_iter
        self.stochastic_max_iter = stochastic_max_iter
        self.deq_kwargs = deq_kwargs

    def forward(self, z0: torch.Tensor, *inputs, f: Optional[Callable] = None):
        cell = f if f is not None else self.f
        if cell is None:
            raise ValueError("DEQ has no cell: pass f to the constructor or to forward")
        return deq(cell, z0, args=inputs,
                   max_iter=self.max_iter if self.training else self.eval_max_iter,
                   stochastic_max_iter=self.stochastic_max_iter and self.training, **self.deq_kwargs)

    def extra_repr(self) -> str:
        return (f"max_iter={self.max_iter}, eval_max_iter={self.eval_max_iter}, "
                f"stochastic_max_iter={self.stochastic_max_iter}")
