"""Shared solver plumbing: option validation, checked calls of ``f``, per-sample stop logic.

Every solver works on a flattened view ``(B, d)`` of the state (batch first, any trailing shape)
and reports through :class:`_Tracker`, which owns the per-sample bookkeeping: residual traces,
the lowest residual and *where* the lowest-residual iterate lives (a solver buffer slot, copied
out lazily only when that slot is about to be overwritten), the active mask and the safeguard
flags.

Host synchronisation: with ``tol > 0`` the tracker reads back one small tensor per iteration
(the active mask and which buffers hold a lowest-residual iterate); with ``tol == 0`` (a fixed
budget) it reads nothing back, so the loop can be compiled with ``torch.compile(fullgraph=True)``
or captured in a CUDA graph.

Multi-tensor states (:class:`StatePack`, :func:`accepts_state_lists`): a list or tuple of
batch-first tensors of different shapes is packed once into one (B, d) buffer; f sees views of
the solver's own buffers (no copy in), and only f's output is written into one (B, d) tensor.
"""
import functools
import inspect
import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ._stats import SolverStats
from .workspace import cached_empty, workspace_limit

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Evaluate f on the compacted active subset (when the caller gives ``f_subset``) once at most
# this fraction of the batch is still iterating; above it the gather/scatter is not worth it.
SUBSET_FRACTION = 0.5


def reject_unknown(fn: Callable, unknown: dict) -> None:
    """Raise a TypeError naming each unknown option and listing the valid ones.

    TorchDEQ silently swallows misspelled options (``**kwargs``); we refuse them.
    """
    if not unknown:
        return
    params = inspect.signature(fn).parameters
    valid = [p for p, v in params.items() if v.kind == v.KEYWORD_ONLY]
    bad = ", ".join(repr(k) for k in sorted(unknown))
    raise TypeError(f"{fn.__name__}() got unknown option(s) {bad}; valid options are: "
                    + ", ".join(valid))


def check_common(z0, max_iter, tol, stop_mode, eps) -> None:
    """Validate the options every solver shares; messages name the argument and what is expected.

    The finiteness check of z0 reads a value back to the host, so it runs only with ``tol > 0``;
    a fixed-budget solve (tol = 0) stays sync-free and reports a non-finite z0 through its
    residuals (``stats.safeguard``) instead.
    """
    if not torch.is_tensor(z0):
        raise TypeError(f"z0 must be a torch.Tensor or a list/tuple of them, got {type(z0).__name__}")
    if z0.dtype not in FLOAT_DTYPES:
        raise TypeError(f"z0 must have a floating dtype (float16/bfloat16/float32/float64), got {z0.dtype}")
    if z0.dim() < 1 or z0.shape[0] == 0 or z0.numel() == 0:
        raise ValueError(f"z0 must be batch-first with at least one sample and one element, got shape "
                         f"{tuple(z0.shape)}")
    tol_ok = not isinstance(tol, bool) and isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0
    # One cheap reduction first: NaN/Inf always reach the sum (an overflow only costs the exact check).
    if (not tol_ok or tol > 0) and not bool(torch.isfinite(z0.sum())) and not bool(torch.isfinite(z0).all()):
        bad = (~torch.isfinite(z0.reshape(z0.shape[0], -1))).any(1).nonzero().flatten().tolist()
        raise ValueError(f"z0 contains NaN or Inf (samples {bad[:10]}); the initial state must be finite")
    check_int("max_iter", max_iter, 1)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0 (0 = never stop early, run max_iter "
                         f"iterations), got {tol!r}")
    if stop_mode not in ("abs", "rel"):
        raise ValueError(f"stop_mode must be 'abs' or 'rel', got {stop_mode!r}")
    if not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a number > 0, got {eps!r}")


def check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_float(name: str, value, lo: float, hi: float = math.inf, lo_open=False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        rng = f"{'(' if lo_open else '['}{lo}, {hi}]"
        raise ValueError(f"{name} must be a finite number in {rng}, got {value!r}")
    return float(value)


def resolve_damping(name: str, beta, tau):
    """``tau`` is TorchDEQ's name for the damping ``beta``; accept either, not both."""
    if tau is not None:
        if beta is not None:
            raise TypeError(f"{name}(): give the damping as beta or tau (TorchDEQ's name), not both")
        beta = tau
    return check_float("beta", 1.0 if beta is None else beta, 0.0, 1.0, lo_open=True)


def check_trajectory(trajectory, max_iter) -> tuple:
    if trajectory is None:
        return ()
    its = tuple(trajectory)
    for it in its:
        if isinstance(it, bool) or not isinstance(it, int) or not 1 <= it <= max_iter:
            raise ValueError(f"trajectory entries must be iteration numbers in [1, max_iter={max_iter}], "
                             f"got {it!r}")
    return its


StateLike = Union[torch.Tensor, List[torch.Tensor], Tuple[torch.Tensor, ...]]

_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14
_libc = None


def _madvise_huge(t: torch.Tensor) -> None:
    """Ask Linux for transparent huge pages behind a fresh, untouched CPU buffer (THP 'madvise' mode).

    First touch of 154 MB (B = 8, d = 98x64x64, m = 6) took 0.10 s with 4 KiB pages and 0.027 s
    with 2 MiB pages, after a first 0.36 s spent compacting memory; and the passes stream faster
    with fewer TLB misses (own time per solve, bench_solvers.py: Anderson 0.167 -> 0.145 s at B = 8,
    0.78 -> 0.70 s at B = 32). The compaction stall is paid once per buffer when the workspace keeps
    it (solvers/workspace.py), so huge pages are on by default exactly then; LDEQ_SOLVER_HUGEPAGES=1
    turns them on always, =0 off. A no-op off Linux or when madvise is unavailable.
    """
    global _libc
    if _libc is False:
        return
    if _libc is None:
        try:
            import ctypes
            import ctypes.util
            import sys
            if not sys.platform.startswith("linux"):
                raise OSError("not Linux")
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            lib.madvise.restype = ctypes.c_int
            _libc = lib
        except (OSError, AttributeError):
            _libc = False
            return
    p = t.data_ptr()
    start = (p + _HUGE_PAGE - 1) // _HUGE_PAGE * _HUGE_PAGE
    end = (p + t.numel() * t.element_size()) // _HUGE_PAGE * _HUGE_PAGE
    if end > start:
        _libc.madvise(start, end - start, _MADV_HUGEPAGE)  # advisory: a failure changes nothing


def _want_huge_pages() -> bool:
    """LDEQ_SOLVER_HUGEPAGES: '1' always, '0' never, unset: when the workspace keeps buffers."""
    mode = os.environ.get("LDEQ_SOLVER_HUGEPAGES", "")
    if mode not in ("", "0", "1"):
        raise ValueError(f"LDEQ_SOLVER_HUGEPAGES must be 1 (always), 0 (never) or unset (when the solver "
                         f"workspace reuses buffers), got {mode!r}")
    return mode == "1" or (mode == "" and workspace_limit() > 0)


def history_empty(shape: Tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """torch.empty for a solver history buffer: on CPU reused across calls (solvers/workspace.py)
    and huge-page backed when large and fresh (see _madvise_huge)."""
    def fresh():
        t = torch.empty(shape, dtype=like.dtype, device=like.device)
        if (like.device.type == "cpu" and t.numel() * t.element_size() >= 4 * _HUGE_PAGE
                and not torch.compiler.is_compiling() and _want_huge_pages()):
            _madvise_huge(t)
        return t
    return cached_empty(shape, like, fresh)


class StatePack:
    """A list/tuple of batch-first tensors (B, *shape_i) seen as one (B, d) state, d = sum_i prod(shape_i).

    ``pack`` concatenates into a (B, d) tensor (optionally into ``out``); ``unpack`` returns views
    ``flat[:, o_i:o_i + d_i].view(B, *shape_i)`` in the caller's container type (no copy; autograd
    flows through both).
    """

    def __init__(self, zs: Sequence[torch.Tensor], name: str = "z0"):
        if not isinstance(zs, (list, tuple)) or len(zs) == 0:
            raise TypeError(f"{name} must be a tensor or a non-empty list/tuple of tensors, got {zs!r}")
        for i, z in enumerate(zs):
            if not torch.is_tensor(z):
                raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(z).__name__}")
            if z.dim() < 1 or z.shape[0] == 0 or z.numel() == 0:
                raise ValueError(f"{name}[{i}] must be batch-first with at least one sample and one element, "
                                 f"got shape {tuple(z.shape)}")
        z_ref = zs[0]
        for i, z in enumerate(zs):
            if z.shape[0] != z_ref.shape[0]:
                raise ValueError(f"{name}[{i}] has batch size {z.shape[0]}, {name}[0] has {z_ref.shape[0]}: "
                                 f"every tensor of a list state must have the same batch size")
            if z.dtype != z_ref.dtype or z.device != z_ref.device:
                raise TypeError(f"{name}[{i}] is {z.dtype} on {z.device}, {name}[0] is {z_ref.dtype} on "
                                f"{z_ref.device}: a list state must have one dtype and one device")
        self.kind = type(zs)
        self.B = int(z_ref.shape[0])
        self.shapes = [tuple(z.shape[1:]) for z in zs]
        self.sizes = [int(z[0].numel()) for z in zs]
        self.d = sum(self.sizes)
        self.dtype, self.device = z_ref.dtype, z_ref.device

    def check(self, zs, name: str) -> None:
        """Raise unless ``zs`` has this pack's structure (what f must return)."""
        if not isinstance(zs, (list, tuple)) or len(zs) != len(self.shapes):
            raise TypeError(f"{name} must return a list/tuple of {len(self.shapes)} tensors like z0, got "
                            f"{type(zs).__name__}" + (f" of length {len(zs)}" if isinstance(zs, (list, tuple)) else ""))
        for i, (z, shp) in enumerate(zip(zs, self.shapes)):
            if not torch.is_tensor(z):
                raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(z).__name__}")
            if tuple(z.shape[1:]) != shp or z.shape[0] != zs[0].shape[0]:
                raise ValueError(f"{name}[{i}] must have shape (B,) + {shp}, got {tuple(z.shape)}")

    def pack(self, zs: Sequence[torch.Tensor], out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, d) concatenation of the pieces (one copy)."""
        B = zs[0].shape[0]
        return torch.cat([z.reshape(B, -1) for z in zs], 1, out=out) if out is not None else \
            torch.cat([z.reshape(B, -1) for z in zs], 1)

    def unpack(self, flat: torch.Tensor):
        """Views of the pieces of a (B', d) tensor, in the container type of z0."""
        B = flat.shape[0]
        out, o = [], 0
        for shp, n in zip(self.shapes, self.sizes):
            out.append(flat[:, o:o + n].view((B,) + shp))
            o += n
        return self.kind(out)


def accepts_state_lists(solver: Callable) -> Callable:
    """Let ``solver(f, z0, **kw)`` take a list/tuple state: packs z0 once into (B, d), runs the
    single-tensor solver on a wrapper of f that sees views of the solver's buffers, and unpacks
    the result and the trajectory into z0's container type."""

    @functools.wraps(solver)
    def wrapper(f, z0, *args, **kw):
        if torch.is_tensor(z0) or not isinstance(z0, (list, tuple)):
            return solver(f, z0, *args, **kw)
        pack = StatePack(z0)
        if not callable(f):
            raise TypeError(f"f must be callable, got {type(f).__name__}")

        def f_flat(zf):
            out = f(pack.unpack(zf))
            pack.check(out, "f")
            return pack.pack(out)
        f_subset = kw.get("f_subset")
        if f_subset is not None:
            if not callable(f_subset):
                raise TypeError(f"f_subset must be callable (z_subset, index) -> f(z)[index], got "
                                f"{type(f_subset).__name__}")

            def fs_flat(zf, idx):
                out = f_subset(pack.unpack(zf), idx)
                pack.check(out, "f_subset")
                return pack.pack(out)
            kw["f_subset"] = fs_flat
        z, stats = solver(f_flat, pack.pack(z0), *args, **kw)
        stats.trajectory = {k: pack.unpack(v) for k, v in stats.trajectory.items()}
        return pack.unpack(z), stats
    return wrapper


class FEval:
    """Calls ``f`` on a ``(B, d)`` state and checks what comes back.

    ``f`` sees the caller's shape. ``f_subset(z_sub, index)`` (optional) is ``f`` restricted to the
    samples ``index``; it lets the solver stop paying for converged samples once few are active.
    """

    def __init__(self, f, f_subset, z0: torch.Tensor):
        if not callable(f):
            raise TypeError(f"f must be callable, got {type(f).__name__}")
        if f_subset is not None and not callable(f_subset):
            raise TypeError(f"f_subset must be callable (z_subset, index) -> f(z)[index], got "
                            f"{type(f_subset).__name__}")
        self.f, self.f_subset = f, f_subset
        self.shape, self.dtype, self.device = z0.shape, z0.dtype, z0.device
        self.B = z0.shape[0]
        self.d = z0.numel() // self.B
        self.calls = 0

    def _check(self, out, name, shape):
        if not torch.is_tensor(out):
            raise TypeError(f"{name} must return a torch.Tensor, got {type(out).__name__}")
        if out.shape != shape:
            raise ValueError(f"{name} must return the shape of its input {tuple(shape)}, got "
                             f"{tuple(out.shape)}")
        if out.dtype != self.dtype:
            raise TypeError(f"{name} must return the dtype of z0 ({self.dtype}), got {out.dtype}")
        if out.device != self.device:
            raise ValueError(f"{name} must return a tensor on {self.device}, got {out.device}")

    def __call__(self, z: torch.Tensor, active: torch.Tensor, n_active: int,
                 active_host: Optional[List[bool]] = None) -> torch.Tensor:
        """f(z) as (B, d). Rows of inactive samples are unspecified (the solver ignores them).

        ``active_host``: the active mask already read back by the tracker (then the subset index is
        uploaded, not read back); None in a sync-free solve, which never takes the subset path.
        """
        self.calls += 1
        if self.f_subset is not None and active_host is not None and n_active <= SUBSET_FRACTION * self.B:
            idx = torch.tensor([i for i, a in enumerate(active_host) if a], dtype=torch.long, device=self.device)
            sub_shape = (idx.numel(),) + tuple(self.shape[1:])
            out = self.f_subset(z.index_select(0, idx).view(sub_shape), idx)
            self._check(out, "f_subset", torch.Size(sub_shape))
            # A fresh buffer: fixed_point keeps the result as its next iterate. Rows of inactive
            # samples are zeros, which the solvers never read.
            full = torch.zeros(self.B, self.d, dtype=self.dtype, device=self.device)
            full.index_copy_(0, idx, out.reshape(idx.numel(), self.d))
            return full
        out = self.f(z.view(self.shape))
        self._check(out, "f", self.shape)
        return out.reshape(self.B, self.d).contiguous()


class _Tracker:
    """Per-sample residual bookkeeping shared by all solvers.

    Iteration ``k`` (0-based) is the k-th evaluation of f; its residual belongs to the iterate
    ``z_k`` that f was evaluated at. A sample stops (``active`` False) once its residual in the
    stop mode is < tol, or when f gave it a NaN/Inf (then ``safeguard`` is set and the lowest
    finite iterate is kept). ``best_key`` (B,) says in which solver buffer a sample's
    lowest-residual iterate still lives (-1: already copied to ``z_best``); keys are 0..n_keys-1.

    Host reads: with ``tol > 0`` :meth:`record` reads back one small tensor per iteration (the
    active mask and, per buffer key, whether it holds a lowest iterate), which is all the loop
    needs to decide to stop, to take the ``f_subset`` path and to skip needless copies. With
    ``tol == 0`` (``sync_free``) nothing is read back: the solve runs exactly max_iter
    iterations, ``n_active`` stays B, and the lowest-iterate copies are unconditional selects.
    """

    def __init__(self, z0_flat: torch.Tensor, max_iter: int, tol: float, stop_mode: str, eps: float,
                 trajectory: Sequence[int], solver: str, n_keys: int = 2):
        B, dev = z0_flat.shape[0], z0_flat.device
        self.B, self.tol, self.stop_mode, self.eps, self.solver = B, tol, stop_mode, eps, solver
        self.sync_free = tol == 0
        self.n_keys = n_keys
        self.z_best = z0_flat  # the caller's tensor until the first eviction copies it (z_best_owned)
        self.z_best_owned = False
        self.best_key = torch.full((B,), -1, dtype=torch.long, device=dev)
        self.bufs: Dict[int, torch.Tensor] = {}
        # Host copy of "buffer key holds some sample's lowest iterate" (valid after each record()).
        self.key_used: Dict[int, bool] = {}
        f64 = dict(dtype=torch.float64, device=dev)
        self.abs_trace = torch.zeros(B, max_iter, **f64)
        self.rel_trace = torch.zeros(B, max_iter, **f64)
        self.abs_lowest = torch.full((B,), math.inf, **f64)
        self.rel_lowest = torch.full((B,), math.inf, **f64)
        self.nstep = torch.zeros(B, dtype=torch.long, device=dev)
        self.active = torch.ones(B, dtype=torch.bool, device=dev)
        self.converged = torch.zeros(B, dtype=torch.bool, device=dev)
        self.safeguard = torch.zeros(B, dtype=torch.bool, device=dev)
        self.n_active = B
        self.active_host: Optional[List[bool]] = None
        self.iters = 0
        self.traj_at = set(trajectory)
        self.trajectory: Dict[int, torch.Tensor] = {}
        # A ring of buffers (n_keys, B, d) and its views ring_views[key] (see use_ring), or None.
        self.ring: Optional[torch.Tensor] = None
        self.ring_views: Sequence[torch.Tensor] = ()

    def use_ring(self, ring: torch.Tensor) -> List[torch.Tensor]:
        """The solver keeps its iterates in ``ring`` (n_keys, B, d) and passes ``ring_views[key]`` (the
        returned views, the same objects every time) to :meth:`record`: then best() gathers each
        sample's row in one pass instead of one select over the batch per key."""
        self.ring, self.ring_views = ring, [ring[i] for i in range(ring.shape[0])]
        return self.ring_views

    def record(self, k: int, abs_res: torch.Tensor, fz_norm: torch.Tensor, key: int, buf: torch.Tensor):
        """Record iteration k: residual ||f(z)-z|| and ||f(z)|| (B,) of the iterate held in buf (B, d)."""
        act = self.active
        abs_res = abs_res.to(torch.float64)
        rel_res = abs_res / (fz_norm.to(torch.float64) + self.eps)
        finite = torch.isfinite(abs_res) & torch.isfinite(rel_res)
        res = rel_res if self.stop_mode == "rel" else abs_res
        if k > 0:  # a stopped sample's trace repeats its last value (its iterate no longer changes)
            self.abs_trace[:, k] = torch.where(act, abs_res, self.abs_trace[:, k - 1])
            self.rel_trace[:, k] = torch.where(act, rel_res, self.rel_trace[:, k - 1])
        else:
            self.abs_trace[:, 0] = abs_res
            self.rel_trace[:, 0] = rel_res
        best = self.rel_lowest if self.stop_mode == "rel" else self.abs_lowest
        improved = act & finite & (res < best)
        self.abs_lowest = torch.where(improved, abs_res, self.abs_lowest)
        self.rel_lowest = torch.where(improved, rel_res, self.rel_lowest)
        if key in self.bufs and self.bufs[key] is not buf:
            self.evict(key)  # buf replaces an older tensor under the same key (fixed_point)
        self.best_key = torch.where(improved, torch.full_like(self.best_key, key), self.best_key)
        self.bufs[key] = buf
        self.nstep += act.long()
        bad = act & ~finite
        self.safeguard |= bad
        done = act & finite & (res < self.tol)  # strict, as TorchDEQ: tol=0 runs every iteration
        self.converged |= done
        self.active = act & ~done & ~bad
        self.iters = k + 1
        if not self.sync_free:
            # The one host read per iteration: the active mask and which buffers hold lowest iterates.
            used = torch.bincount(self.best_key + 1, minlength=self.n_keys + 1)[1:] > 0
            host = torch.cat([self.active, used]).tolist()
            self.active_host = host[:self.B]
            self.n_active = sum(self.active_host)
            self.key_used = {i: u for i, u in enumerate(host[self.B:])}
        if (k + 1) in self.traj_at:
            self.trajectory[k + 1] = self.best().view_as(self.z_best)

    def flag(self, mask: torch.Tensor) -> None:
        """A safeguard (regularised solve, dropped update, ...) fired for these (active) samples."""
        self.safeguard |= mask & self.active

    def _holds(self, key: int) -> bool:
        return self.sync_free or self.key_used.get(key, True)

    def evict(self, key: int) -> None:
        """Buffer ``key`` is about to be overwritten: copy out the lowest iterates that live there."""
        if key not in self.bufs:
            return
        if self._holds(key):
            here = self.best_key == key
            self._own_z_best()
            # In place (out aliases an input elementwise): no fresh (B, d) allocation per iteration.
            torch.where(here[:, None], self.bufs[key], self.z_best, out=self.z_best)
            self.best_key = torch.where(here, torch.full_like(self.best_key, -1), self.best_key)
            self.key_used[key] = False
        del self.bufs[key]

    def _own_z_best(self) -> None:
        """z_best starts as the caller's z0: copy it once (into a workspace buffer), then update in place."""
        if not self.z_best_owned:
            own = history_empty(tuple(self.z_best.shape), self.z_best)
            own.copy_(self.z_best)
            self.z_best, self.z_best_owned = own, True

    def evict_target(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(z_best, best_key) for a fused kernel that saves the lowest iterates living in a buffer
        before overwriting it (Anderson's mix); z_best becomes the tracker's own tensor. Follow the
        kernel with :meth:`evicted`."""
        self._own_z_best()
        return self.z_best, self.best_key

    def evicted(self, key: int, active: torch.Tensor) -> None:
        """A kernel copied buffer ``key``'s lowest iterates of the ``active`` samples to z_best and
        overwrote them; inactive samples were not touched, so theirs still live in the buffer."""
        gone = (self.best_key == key) & active
        self.best_key = torch.where(gone, torch.full_like(self.best_key, -1), self.best_key)

    def best(self) -> torch.Tensor:
        """(B, d) lowest-residual iterate of each sample (a new tensor)."""
        # One fresh (B, d) result, filled in place: a second temporary of that size would cost its
        # page faults again (half the time of this gather at B = 32, d = 401408).
        if self.ring is not None and all(buf is self.ring_views[k] for k, buf in self.bufs.items()):
            B, d = self.z_best.shape
            rows = torch.arange(B, device=self.best_key.device)
            out = torch.empty_like(self.z_best, memory_format=torch.contiguous_format)
            # index_select on the (m B, d) rows is a row copy; advanced indexing ring[key, rows] took 2x as long.
            torch.index_select(self.ring.reshape(-1, d), 0, self.best_key.clamp_min(0) * B + rows, out=out)
            return torch.where((self.best_key >= 0)[:, None], out, self.z_best, out=out)
        out = self.z_best.clone(memory_format=torch.contiguous_format)
        for key, buf in self.bufs.items():
            if self._holds(key):
                torch.where((self.best_key == key)[:, None], buf, out, out=out)
        return out

    def finish(self, shape) -> tuple:
        z = self.best().view(shape)
        T = max(self.iters, 1)
        best = self.rel_lowest if self.stop_mode == "rel" else self.abs_lowest
        stats = SolverStats(
            nstep=self.nstep, abs_lowest=self.abs_lowest, rel_lowest=self.rel_lowest,
            abs_trace=self.abs_trace[:, :T].clone(), rel_trace=self.rel_trace[:, :T].clone(),
            converged=self.converged | (best <= self.tol), safeguard=self.safeguard,
            trajectory={k: v.view(shape) for k, v in self.trajectory.items()},
            solver=self.solver, stop_mode=self.stop_mode)
        return z, stats
