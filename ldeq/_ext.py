"""Loads the compiled extension ``ldeq._C`` (which registers ``torch.ops.ldeq.*``) if it was built.

Every op wrapper asks :func:`has_kernel` before dispatching to the compiled kernel and falls back
to the pure-PyTorch reference otherwise, so ldeq works (slowly) from a source tree with no build.

CPU capability: every CPU kernel is compiled for ``default`` (any x86-64 or other CPU), ``avx2`` and
``avx512`` and one of them is picked at run time (csrc/common/cpu_dispatch.h): the best this CPU
supports, lowered by ``LDEQ_CPU_CAPABILITY=default|avx2|avx512`` (read once, like PyTorch's
``ATEN_CPU_CAPABILITY``) or by :func:`set_cpu_capability`; :func:`cpu_capability` reports it.
"""
import contextlib
import functools
import os
import warnings
from typing import Iterator, List

import torch

try:
    from ldeq import _C  # noqa: F401  (import registers the operators)
    _IMPORT_ERROR = None
except ImportError as e:  # not built, or built against another torch
    _C = None
    _IMPORT_ERROR = e


def extension_loaded() -> bool:
    """True when ``ldeq._C`` imported."""
    return _C is not None


def cuda_built() -> bool:
    """True when ``ldeq._C`` contains CUDA kernels."""
    return _C is not None and _C.cuda_built()


CPU_CAPABILITIES = ("default", "avx2", "avx512")  # in increasing order


def _check_capability_env() -> None:
    v = os.environ.get("LDEQ_CPU_CAPABILITY", "")
    if v and v not in CPU_CAPABILITIES:
        warnings.warn(f"ldeq: ignoring LDEQ_CPU_CAPABILITY={v!r}: expected one of {', '.join(CPU_CAPABILITIES)}",
                      RuntimeWarning, stacklevel=2)


_check_capability_env()


def cpu_capability() -> str:
    """The capability the CPU kernels use now: 'default', 'avx2' or 'avx512' ('default' without ldeq._C)."""
    return _C.cpu_capability() if _C is not None else "default"


def max_cpu_capability() -> str:
    """The highest capability this CPU supports and this build compiled a path for."""
    return _C.max_cpu_capability() if _C is not None else "default"


def available_cpu_capabilities() -> List[str]:
    """Every capability this CPU can execute in this build, lowest first (the tests run each)."""
    return list(CPU_CAPABILITIES[:CPU_CAPABILITIES.index(max_cpu_capability()) + 1])


def set_cpu_capability(name: str) -> str:
    """Force the CPU kernels onto ``name`` ('default' | 'avx2' | 'avx512'), capped at
    :func:`max_cpu_capability`; returns the capability now in effect. Process-wide."""
    if name not in CPU_CAPABILITIES:
        raise ValueError(f"capability must be one of {', '.join(map(repr, CPU_CAPABILITIES))}, got {name!r}")
    if _C is None:
        return "default"
    return _C.set_cpu_capability(name)


@contextlib.contextmanager
def forced_cpu_capability(name: str) -> Iterator[str]:
    """Context manager: :func:`set_cpu_capability` inside, the previous capability restored after."""
    previous = cpu_capability()
    try:
        yield set_cpu_capability(name)
    finally:
        set_cpu_capability(previous)


def huge_pages() -> bool:
    """Whether the CPU kernels' large outputs get the transparent-huge-page hint (csrc/common/cpu_alloc.h)."""
    return _C is not None and _C.huge_pages()


def set_huge_pages(on: bool) -> bool:
    """Turn the huge-page hint on or off for this process (``LDEQ_HUGE_PAGES`` sets it at load);
    returns the previous setting."""
    return _C.set_huge_pages(bool(on)) if _C is not None else False


def _kernels_by_device() -> frozenset:
    # Read once at import: plain data that torch.compile can trace through (dispatcher queries it cannot).
    if _C is None:
        return frozenset()
    found = set()
    for device_type, key in (("cpu", "CPU"), ("cuda", "CUDA")):
        for name in torch._C._dispatch_get_registrations_for_dispatch_key(key):
            if name.startswith("ldeq::"):
                found.add((name[len("ldeq::"):], device_type))
    return frozenset(found)


KERNELS = _kernels_by_device()


def has_kernel(op_name: str, device_type: str) -> bool:
    """Whether ``torch.ops.ldeq.<op_name>`` has a compiled kernel for ``device_type`` ('cpu'/'cuda')."""
    return (op_name, device_type) in KERNELS


def use_kernel(op_name: str, device_type: str) -> bool:
    """``has_kernel``, warning once (outside torch.compile tracing) when the reference must run instead."""
    if has_kernel(op_name, device_type):
        return True
    if not torch.compiler.is_compiling():
        warn_fallback(op_name, device_type)
    return False


@functools.lru_cache(maxsize=None)
def warn_fallback(op_name: str, device_type: str) -> None:
    reason = f"ldeq._C failed to import ({_IMPORT_ERROR})" if _C is None else "no kernel was compiled"
    warnings.warn(f"ldeq: {op_name} on {device_type}: {reason}; using the pure-PyTorch reference "
                  "(slower). Rebuild with `pip install --no-build-isolation -e .`.", RuntimeWarning,
                  stacklevel=3)
