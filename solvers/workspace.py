"""Reuse of the solvers' history buffers across calls on CPU (Anderson's X, F, G; Broyden's U, V).

A DEQ solves with the same shapes at every training step. On CPU every fresh history is far above
glibc's mmap threshold, so each call page-faults it in again, and first touch is slow: about
0.65 ms per MB on the dev machine (0.10 s for the 154 MB of X and G at B = 8, d = 98x64x64, m = 6),
20x slower than streaming the same bytes; for Anderson's three rings at B = 8 that is ~0.15 s per
call against ~0.2 s of actual solver work. (CUDA needs none of this: PyTorch's caching allocator
already reuses device memory.)

The workspace keeps the CPU buffers it handed out. A buffer is handed out again only when nothing
else references its storage any more (its storage use count is back to the cache's own), so a
buffer still viewed by anyone (say an ``f`` that kept its input) is never reused under them. The
cache holds at most :func:`workspace_limit` bytes (default 4096 MB, ``LDEQ_SOLVER_WORKSPACE_MB``;
0 turns reuse off); the oldest free buffers go first. :func:`empty_workspace` frees it all.
Under ``torch.compile`` and off CPU, buffers are plain ``torch.empty``.
"""
import os
import threading
from typing import List, Tuple

import torch

__all__ = ["workspace_limit", "set_workspace_limit", "empty_workspace", "workspace_bytes"]

_MB = 1 << 20


def _limit_from_env() -> int:
    raw = os.environ.get("LDEQ_SOLVER_WORKSPACE_MB", "4096")
    try:
        mb = float(raw)
    except ValueError:
        raise ValueError(f"LDEQ_SOLVER_WORKSPACE_MB must be a number of megabytes >= 0 (0: no reuse), "
                         f"got {raw!r}") from None
    if not mb >= 0:
        raise ValueError(f"LDEQ_SOLVER_WORKSPACE_MB must be >= 0 (0: no reuse), got {raw!r}")
    return int(mb * _MB)


class _Entry:
    __slots__ = ("buf", "weak", "own_uses")

    def __init__(self, buf: torch.Tensor):
        self.buf = buf
        self.weak = buf.untyped_storage()._weak_ref()
        self.own_uses = torch._C._storage_Use_Count(self.weak)  # the cache's own references

    def free(self) -> bool:
        return torch._C._storage_Use_Count(self.weak) == self.own_uses

    def nbytes(self) -> int:
        return self.buf.numel() * self.buf.element_size()

    def __del__(self):
        try:
            torch.UntypedStorage._free_weak_ref(self.weak)
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


class _Workspace:
    def __init__(self):
        self.lock = threading.RLock()  # fresh() may ask workspace_limit() while take() holds it
        self.entries: List[_Entry] = []  # oldest first
        self.limit = None  # bytes, read from the environment on first use
        self.enabled = hasattr(torch._C, "_storage_Use_Count") and hasattr(torch.UntypedStorage, "_free_weak_ref")

    def take(self, shape: Tuple[int, ...], dtype: torch.dtype, fresh) -> torch.Tensor:
        """A (shape) view of a free cached buffer of that size and dtype, else fresh() (cached if it fits)."""
        numel = 1
        for s in shape:
            numel *= s
        with self.lock:
            limit = self.get_limit()
            for i, e in enumerate(self.entries):
                if e.buf.numel() == numel and e.buf.dtype == dtype and e.free():
                    self.entries.append(self.entries.pop(i))  # most recently used last
                    return e.buf.view(shape)
            buf = fresh()
            need = buf.numel() * buf.element_size()
            if limit == 0 or need > limit:
                return buf
            total = sum(e.nbytes() for e in self.entries)
            for e in [e for e in self.entries if e.free()]:  # oldest free ones make room
                if total + need <= limit:
                    break
                self.entries.remove(e)
                total -= e.nbytes()
            if total + need > limit:
                return buf
            entry = _Entry(buf.reshape(-1))
            self.entries.append(entry)
            return entry.buf.view(shape)

    def get_limit(self) -> int:
        with self.lock:
            if self.limit is None:  # read from the environment on first use
                self.limit = _limit_from_env()
            return self.limit

    def clear(self) -> None:
        with self.lock:
            self.entries = [e for e in self.entries if not e.free()]  # buffers in use stay theirs

    def nbytes(self) -> int:
        with self.lock:
            return sum(e.nbytes() for e in self.entries)


_WS = _Workspace()


def cached_empty(shape: Tuple[int, ...], like: torch.Tensor, fresh) -> torch.Tensor:
    """A history buffer of ``shape`` with ``like``'s dtype: from the workspace on CPU (outside
    torch.compile), else ``fresh()``. Its contents are unspecified, as with torch.empty."""
    if like.device.type != "cpu" or not _WS.enabled or torch.compiler.is_compiling():
        return fresh()
    return _WS.take(tuple(shape), like.dtype, fresh)


def workspace_limit() -> int:
    """Bytes the workspace may keep (LDEQ_SOLVER_WORKSPACE_MB, default 4096 MB; 0: no reuse)."""
    return _WS.get_limit()


def set_workspace_limit(megabytes: float) -> None:
    """Cap the CPU workspace at ``megabytes`` (0 turns buffer reuse off and frees the free buffers)."""
    if isinstance(megabytes, bool) or not isinstance(megabytes, (int, float)) or not megabytes >= 0:
        raise ValueError(f"megabytes must be a number >= 0 (0: no reuse), got {megabytes!r}")
    with _WS.lock:
        _WS.limit = int(megabytes * _MB)
    if megabytes == 0:
        _WS.clear()


def empty_workspace() -> None:
    """Free every cached buffer that no solve is using."""
    _WS.clear()


def workspace_bytes() -> int:
    """Bytes the workspace holds now (free and in use)."""
    return _WS.nbytes()
