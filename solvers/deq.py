"""The DEQ layer: solve z* = f(z*) without autograd, then attach a gradient.

Functional form ``z, stats = deq(f, z0, ...)`` and module form ``DEQ(f)(z0, *inputs)``. f maps a
(B, ...) state to the same shape; it may be an nn.Module (its parameters get gradients) and may
take injected inputs ``f(z, *args)`` (they get gradients too). Samples in the batch must not
interact inside f (GroupNorm is fine, BatchNorm is not): solvers stop per sample.

Training memory does not depend on max_iter: the solve runs under no_grad and only the final
tracked application(s) of f are kept for backward.

The state may be one (B, ...) tensor or a list/tuple of batch-first tensors of different shapes
(multi-scale DEQs): f then takes and returns such a list. It is packed once into a (B, d)
buffer; the solvers, the IFT backward, JFB and phantom all work on that buffer, and f sees views.

Options come in four small groups (:class:`SolveOptions`, :class:`BackwardOptions`,
:class:`GradOptions`, :class:`RegOptions`); ``deq(f, z0, **kwargs)`` also takes every field of
them as a flat keyword argument, which is how most callers write it.

With ``tol=0`` (a fixed budget) and no ``stochastic_max_iter``, the forward solve reads nothing
back to the host, so ``torch.compile(fullgraph=True)`` of a DEQ forward works with every solver.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ._common import StateLike, StatePack
from ._stats import SolverStats
from .implicit import (BackwardConfig, BackwardRecord, ON_FAIL_MODES, _tracked_step, ift_grad,
                       jfb_grad, phantom_grad)
from .regularization import jacobian_frobenius, spectral_radius

__all__ = ["deq", "DEQ", "DEQStats", "GRAD_MODES", "SolveOptions", "BackwardOptions", "GradOptions",
           "RegOptions"]

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


@dataclass(frozen=True)
class SolveOptions:
    """The forward solve.

    solver:        a registered name (``get_solver``) or a callable with the :class:`~ldeq.solvers.Solver`
                   contract.
    max_iter:      evaluations of f (>= 1).
    tol:           per-sample stop threshold in ``stop_mode``; 0 = fixed budget (exactly max_iter
                   evaluations, no host synchronisation).
    stop_mode:     'rel' or 'abs'.
    solver_kwargs: solver options (Anderson m / lam / beta, Broyden memory, ...).
    stochastic_max_iter: when attaching a gradient, use max_iter ~ uniform{1..max_iter} (drawn from
                   the ``generator`` given to :func:`deq`), the LDEQ training recipe.
    extra_step:    inference only: return f(z*) rather than z* (in training the tracked step is
                   the extra step).
    subset_args:   promise that f depends on the batch only through z and ``args`` (every arg a
                   (B, ...) tensor): the solver may then evaluate f on its unconverged samples
                   only. Leave False when f closes over batch data.
    """
    solver: Union[str, Callable] = "anderson"
    max_iter: int = 30
    tol: float = 1e-3
    stop_mode: str = "rel"
    solver_kwargs: Optional[Dict[str, Any]] = None
    stochastic_max_iter: bool = False
    extra_step: bool = True
    subset_args: bool = False

    def __post_init__(self):
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"max_iter must be an int >= 1, got {self.max_iter!r}")
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float)) or not self.tol >= 0 \
                or not math.isfinite(self.tol):
            raise ValueError(f"tol must be >= 0 and finite (0: always run max_iter iterations), got {self.tol!r}")
        if self.stop_mode not in ("rel", "abs"):
            raise ValueError(f"stop_mode must be 'rel' or 'abs', got {self.stop_mode!r}")
        if not (callable(self.solver) or isinstance(self.solver, str)):
            raise TypeError(f"solver must be a solver name or a callable, got {type(self.solver).__name__}")


@dataclass(frozen=True)
class BackwardOptions:
    """The implicit ('ift') backward solve g = J^T g + dL/dout (TorchDEQ's ``b_*`` names).

    b_solver / b_max_iter: default to the forward solver and max_iter. b_tol / b_stop_mode: a
    relative tolerance by default, because the gradient's scale is arbitrary (e.g. under a
    GradScaler). on_backward_fail: 'raise' | 'warn' | 'zero' (see implicit.ON_FAIL_MODES); failures
    are always recorded in ``stats.backward``.
    """
    b_solver: Union[str, Callable, None] = None
    b_max_iter: Optional[int] = None
    b_tol: float = 1e-4
    b_stop_mode: str = "rel"
    b_solver_kwargs: Optional[Dict[str, Any]] = None
    on_backward_fail: str = "warn"

    def __post_init__(self):
        if self.on_backward_fail not in ON_FAIL_MODES:
            raise ValueError(f"on_backward_fail must be one of {ON_FAIL_MODES}, got {self.on_backward_fail!r}")


@dataclass(frozen=True)
class GradOptions:
    """How the gradient is attached: 'ift' (implicit), 'jfb' (one tracked step) or 'phantom'
    (``phantom_steps`` damped steps z <- tau f(z) + (1 - tau) z with tau = ``phantom_tau``).
    state_iters: iterations whose solver iterates are returned, with a one-step gradient (phantom
    steps in 'phantom' mode), in ``stats.states`` before the output."""
    grad: str = "ift"
    phantom_steps: int = 5
    phantom_tau: float = 0.5
    state_iters: Sequence[int] = ()

    def __post_init__(self):
        if self.grad not in GRAD_MODES:
            raise ValueError(f"grad must be one of {GRAD_MODES}, got {self.grad!r}")
        if isinstance(self.phantom_steps, bool) or not isinstance(self.phantom_steps, int) or self.phantom_steps < 1:
            raise ValueError(f"phantom_steps must be an int >= 1, got {self.phantom_steps!r}")
        if not 0.0 < float(self.phantom_tau) <= 1.0:
            raise ValueError(f"phantom_tau must be in (0, 1], got {self.phantom_tau!r}")
        if any(int(i) < 1 for i in self.state_iters):
            raise ValueError(f"state_iters must be >= 1, got {list(self.state_iters)}")


@dataclass(frozen=True)
class RegOptions:
    """Jacobian diagnostics at z*: jac_reg_samples > 0 puts a Hutchinson estimate of
    ||J_f(z*)||_F^2 (B,) with graph in ``stats.jac_loss``; sradius_iters > 0 puts a power-iteration
    estimate of rho(J_f(z*)) (B,) in ``stats.sradius``."""
    jac_reg_samples: int = 0
    sradius_iters: int = 0


_GROUPS = {"solve": SolveOptions, "backward": BackwardOptions, "gradient": GradOptions, "regularise": RegOptions}
_FIELD_GROUP = {fl.name: g for g, cls in _GROUPS.items() for fl in dataclasses.fields(cls)}
_STAT_FIELDS = tuple(fl.name for fl in dataclasses.fields(SolverStats))  # read at import: traceable
#: Every flat keyword argument :func:`deq` accepts (besides the four groups, ``args`` and ``generator``).
DEQ_OPTIONS = tuple(_FIELD_GROUP)


def _group_options(groups: Dict[str, Any], flat: Dict[str, Any]) -> Dict[str, Any]:
    """The four option groups from group objects and/or flat keyword arguments (not both for one group)."""
    unknown = sorted(set(flat) - set(_FIELD_GROUP))
    if unknown:
        raise TypeError(f"deq() got unknown option(s) {unknown}; valid options are: "
                        + ", ".join(list(_GROUPS) + list(_FIELD_GROUP) + ["args", "generator"]))
    out = {}
    for g, cls in _GROUPS.items():
        mine = {k: v for k, v in flat.items() if _FIELD_GROUP[k] == g}
        obj = groups.get(g)
        if obj is None:
            out[g] = cls(**mine)
        elif not isinstance(obj, cls):
            raise TypeError(f"{g} must be a {cls.__name__}, got {type(obj).__name__}")
        elif mine:
            raise TypeError(f"deq(): give {sorted(mine)} inside {g}={cls.__name__}(...) or as keyword "
                            f"arguments, not both")
        else:
            out[g] = obj
    return out


def _check_state(z0: torch.Tensor, tol: float) -> None:
    if z0.dim() < 1 or z0.shape[0] == 0:
        raise ValueError(f"z0 must have shape (B, ...) with B >= 1, got {tuple(z0.shape)}")
    if not z0.is_floating_point():
        raise TypeError(f"z0 must be a floating-point tensor (float32/float64), got {z0.dtype}")
    if z0.dtype in (torch.float16, torch.bfloat16):
        raise TypeError(f"z0 must be float32 or float64 (the solver state stays full precision; use "
                        f"torch.autocast for a low-precision f), got {z0.dtype}")
    # A host read: only when a tolerance is checked anyway (a fixed budget stays sync-free and
    # reports a non-finite z0 through stats.safeguard).
    if tol > 0 and not bool(torch.isfinite(z0).all()):
        raise ValueError("z0 contains NaN or Inf")


def _solver_accepts(solver: Callable, name: str) -> bool:
    """True when ``name`` is an explicit parameter of the solver (``**kw`` does not count)."""
    try:
        return name in inspect.signature(solver).parameters
    except (TypeError, ValueError):
        return False


def _checked(f_call: Callable) -> Callable:
    def f_user(z):
        # Checked on every call (cheap): a wrong shape would otherwise surface as a broadcast
        # error deep inside a solver.
        out = f_call(z)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"f(z) must return a tensor, got {type(out).__name__}")
        if out.shape != z.shape:
            raise ValueError(f"f(z) must return the shape of z {tuple(z.shape)}, got {tuple(out.shape)}")
        return out
    return f_user


def _solve(f_run: Callable, f: Callable, z0: torch.Tensor, args: tuple, amp: Optional[str],
           so: SolveOptions, go: GradOptions, used_iter: int):
    """The forward solve without autograd -> (z*, solver stats, {iteration: recorded iterate}, wanted iterations)."""
    fwd_solver = _resolve_solver(so.solver, "solver")
    skw = dict(so.solver_kwargs or {})
    state_iters = sorted({int(i) for i in go.state_iters})
    want = [i for i in state_iters if i <= used_iter]
    recorded: Dict[int, torch.Tensor] = {}
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

    if so.subset_args and _solver_accepts(fwd_solver, "f_subset"):
        if not args or not all(isinstance(a, torch.Tensor) and a.dim() >= 1 and a.shape[0] == z0.shape[0]
                                for a in args):
            raise ValueError("subset_args=True needs every arg to be a (B, ...) tensor with B = z0.shape[0]")
        amp_dtype = torch.get_autocast_dtype(amp) if amp else None

        def f_subset(zs, idx):
            with (torch.autocast(amp, dtype=amp_dtype) if amp else contextlib.nullcontext()):
                out = f(zs, *(a.index_select(0, idx) for a in args))
            return out.to(zs.dtype)
        skw["f_subset"] = f_subset

    with torch.no_grad(), (torch.autocast(amp, enabled=False) if amp else contextlib.nullcontext()):
        z_star, fstats = fwd_solver(f_run, z0.detach(), max_iter=used_iter, tol=so.tol,
                                    stop_mode=so.stop_mode, **skw)
    traj = dict(getattr(fstats, "trajectory", {}) or {})
    traj.update(recorded)
    return z_star, fstats, traj, want


def _attach_gradient(f_track: Callable, z_star: torch.Tensor, go: GradOptions, cfg: Optional[BackwardConfig],
                     stats: "DEQStats", traj: Dict[int, torch.Tensor], want: List[int], amp: Optional[str]):
    """Tracked step(s) from z* carrying the chosen gradient -> (out, z_req, f(z_req)) (the pair is
    None unless 'ift' made it)."""
    stats.grad = go.grad
    for i in want:
        if i in traj:
            zi = traj[i]
            stats.states.append(phantom_grad(f_track, zi, go.phantom_steps, go.phantom_tau) if go.grad == "phantom"
                                else jfb_grad(f_track, zi))
    z_req = fz = None
    if go.grad == "ift":
        with (torch.autocast(amp, enabled=False) if amp else contextlib.nullcontext()):
            out, z_req, fz = ift_grad(f_track, z_star, cfg, stats.backward)
    elif go.grad == "jfb":
        out = jfb_grad(f_track, z_star)
    else:
        out = phantom_grad(f_track, z_star, go.phantom_steps, go.phantom_tau)
    if want:
        stats.states.append(out)
    return out, z_req, fz


def _regularise(f_track: Callable, z_star: torch.Tensor, ro: RegOptions, stats: "DEQStats", z_req, fz,
                generator: Optional[torch.Generator]) -> None:
    """Fill stats.jac_loss / stats.sradius at z* (reusing the tracked pair when there is one)."""
    if ro.jac_reg_samples <= 0 and ro.sradius_iters <= 0:
        return
    if z_req is None or not z_req.requires_grad:
        z_req, fz = _tracked_step(f_track, z_star, True)
    if ro.jac_reg_samples > 0:
        stats.jac_loss = jacobian_frobenius(fz, z_req, ro.jac_reg_samples, generator=generator)
    if ro.sradius_iters > 0:
        stats.sradius = spectral_radius(fz, z_req, ro.sradius_iters, generator=generator)


def _flatten_state(f: Callable, z0) -> Tuple[Callable, torch.Tensor, Optional[StatePack]]:
    """A list/tuple state -> (f on the packed (B, d) state, packed z0, the pack); a tensor passes through."""
    if isinstance(z0, torch.Tensor):
        return f, z0, None
    if not isinstance(z0, (list, tuple)):
        raise TypeError(f"z0 must be a torch.Tensor of shape (B, ...) or a list/tuple of them, got "
                        f"{type(z0).__name__}")
    pack = StatePack(z0)

    def f_flat(zf, *args):
        out = f(pack.unpack(zf), *args)
        pack.check(out, "f")
        return pack.pack(out)
    return f_flat, pack.pack([z.detach() for z in z0]), pack


def deq(f: Callable, z0: StateLike, *, args: Sequence = (), solve: Optional[SolveOptions] = None,
        backward: Optional[BackwardOptions] = None, gradient: Optional[GradOptions] = None,
        regularise: Optional[RegOptions] = None, generator: Optional[torch.Generator] = None,
        **options) -> Tuple[StateLike, "DEQStats"]:
    """Find z* = f(z*, *args) from z0 and return it with a gradient attached.

    f:          callable f(z, *args) -> like z; parameters it closes over (or an nn.Module's) and
                tensors in ``args`` receive gradients.
    z0:         (B, ...) float32/float64 initial state, or a list/tuple of batch-first tensors of
                different shapes (then f takes and returns such a list). No gradient flows into z0.
    solve, backward, gradient, regularise: the option groups (:class:`SolveOptions`,
                :class:`BackwardOptions`, :class:`GradOptions`, :class:`RegOptions`); every field
                can also be given as a flat keyword argument (``solver='broyden', max_iter=40,
                grad='phantom', b_tol=1e-6, ...``), but not both for one group.
    generator:  random source for stochastic_max_iter and the Jacobian estimators.

    Gradients are attached only when autograd is enabled. Returns (z, stats): z like z0 (f(z*)
    carrying the gradient, or z* / f(z*) at inference per ``extra_step``); stats a DEQStats.
    """
    o = _group_options(dict(solve=solve, backward=backward, gradient=gradient, regularise=regularise), options)
    so, bo, go, ro = o["solve"], o["backward"], o["gradient"], o["regularise"]
    if not callable(f):
        raise TypeError(f"f must be callable (f(z, *args) -> tensor like z), got {type(f).__name__}")
    f, z0, pack = _flatten_state(f, z0)
    _check_state(z0, so.tol)
    _resolve_solver(so.solver, "solver")  # a bad name fails before any work
    args = tuple(args)
    f_call = (lambda z: f(z, *args)) if args else f
    f_user = _checked(f_call)
    f_run, amp = _autocast_wrap(f_user, z0.device.type)
    track = torch.is_grad_enabled()

    used_iter = so.max_iter
    if so.stochastic_max_iter and track:
        used_iter = int(torch.randint(1, so.max_iter + 1, (), generator=generator))

    cfg = None
    if go.grad == "ift" and track:  # validated before the (expensive) forward solve
        cfg = BackwardConfig(solver=_resolve_solver(bo.b_solver if bo.b_solver is not None else so.solver, "b_solver"),
                             max_iter=bo.b_max_iter if bo.b_max_iter is not None else so.max_iter, tol=bo.b_tol,
                             stop_mode=bo.b_stop_mode, solver_kwargs=dict(bo.b_solver_kwargs or {}),
                             on_fail=bo.on_backward_fail)

    z_star, fstats, traj, want = _solve(f_run, f, z0, args, amp, so, go, used_iter)
    f_track = _autocast_wrap(f_user, z0.device.type)[0]  # without the recorder
    # backward / states given explicitly: torch.compile cannot trace a dataclass default_factory call.
    stats = DEQStats(**{name: getattr(fstats, name) for name in _STAT_FIELDS},
                     max_iter=used_iter, backward=BackwardRecord(), states=[])
    unpack = (lambda t: t) if pack is None else pack.unpack

    if not track:
        with torch.no_grad():
            out = f_track(z_star).to(z0.dtype) if so.extra_step else z_star
        if ro.sradius_iters > 0:  # monitoring works at inference too
            stats.sradius = spectral_radius(*_tracked_step(f_track, z_star, True)[::-1], ro.sradius_iters,
                                            generator=generator)
        if pack is not None:
            stats.trajectory = {k: unpack(v) for k, v in stats.trajectory.items()}
        return unpack(out), stats

    out, z_req, fz = _attach_gradient(f_track, z_star, go, cfg, stats, traj, want, amp)
    _regularise(f_track, z_star, ro, stats, z_req, fz, generator)
    if pack is not None:
        stats.states = [unpack(s_) for s_ in stats.states]
        stats.trajectory = {k: unpack(v) for k, v in stats.trajectory.items()}
    return unpack(out), stats


class DEQ(nn.Module):
    """Deep equilibrium layer around a cell ``f(z, *inputs)``.

    ``DEQ(f, max_iter=30, eval_max_iter=None, stochastic_max_iter=False, **deq_kwargs)``; an
    nn.Module ``f`` is registered as the submodule ``f`` (no copies: DDP/optimisers see its
    parameters). In training mode the budget is ``max_iter`` (sampled uniformly in
    1..max_iter when stochastic_max_iter); in eval mode it is ``eval_max_iter`` (default
    max_iter). ``deq_kwargs`` are any keyword arguments of :func:`deq`.

    forward(z0 (B, ...) or a list/tuple of such, *inputs, f=None) -> (z like z0, DEQStats). ``f`` overrides the cell for
    this call (e.g. a bound method of the parent module).
    """

    def __init__(self, f: Optional[Callable] = None, *, max_iter: int = 30,
                 eval_max_iter: Optional[int] = None, stochastic_max_iter: bool = False, **deq_kwargs):
        super().__init__()
        bad = set(deq_kwargs) & {"args", "max_iter", "stochastic_max_iter", "solve"}
        if bad:
            raise TypeError(f"DEQ: pass {sorted(bad)} per call / as named constructor arguments "
                            f"(the solve options as flat keyword arguments)")
        valid = (set(inspect.signature(deq).parameters) | set(DEQ_OPTIONS)) - {"f", "z0", "options"}
        unknown = set(deq_kwargs) - valid
        if unknown:
            raise TypeError(f"DEQ: unknown option(s) {sorted(unknown)}; valid: {sorted(valid)}")
        self.f = f
        self.max_iter = max_iter
        self.eval_max_iter = eval_max_iter if eval_max_iter is not None else max_iter
        self.stochastic_max_iter = stochastic_max_iter
        self.deq_kwargs = deq_kwargs

    def forward(self, z0: StateLike, *inputs, f: Optional[Callable] = None) -> Tuple[StateLike, DEQStats]:
        cell = f if f is not None else self.f
        if cell is None:
            raise ValueError("DEQ has no cell: pass f to the constructor or to forward")
        return deq(cell, z0, args=inputs,
                   max_iter=self.max_iter if self.training else self.eval_max_iter,
                   stochastic_max_iter=self.stochastic_max_iter and self.training, **self.deq_kwargs)

    def extra_repr(self) -> str:
        return (f"max_iter={self.max_iter}, eval_max_iter={self.eval_max_iter}, "
                f"stochastic_max_iter={self.stochastic_max_iter}")
