"""Loads the compiled extension ``ldeq._C`` (which registers ``torch.ops.ldeq.*``) if it was built.

Every op wrapper asks :func:`has_kernel` before dispatching to the compiled kernel and falls back
to the pure-PyTorch reference otherwise, so ldeq works (slowly) from a source tree with no build.
"""
import functools
import warnings

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
