"""Fused heatmap ops against the float64 pure-PyTorch reference, gradcheck, opcheck and bad input."""
import math

import pytest
import torch

from ldeq import _ext
from ldeq.ops import _reference as ref
from ldeq.ops import heatmap_decode, heatmap_softargmax, heatmap_softargmax_coords, heatmap_softargmax_decode

SHAPES = [(2, 5, 64, 64), (3, 4, 7, 9), (1, 2, 1, 1), (2, 3, 1, 17)]
F32 = dict(rtol=2e-5, atol=2e-6)


def _separate(logits, beta, official_std=False):
    h = heatmap_softargmax(logits, beta)
    return (h,) + heatmap_decode(h, official_std)


# Every forward/backward test runs through both public paths: the single fused op and the two ops.
def _coords_op(logits, beta, official_std=False):
    # coordinates from the no-heatmap op; heatmaps from heatmap_softargmax, so gradients of all
    # three outputs still flow (through both ops)
    return (heatmap_softargmax(logits, beta),) + heatmap_softargmax_coords(logits, beta, official_std)


PATHS = {"fused": heatmap_softargmax_decode, "separate": _separate, "coords": _coords_op}
path_param = pytest.mark.parametrize("path", sorted(PATHS))


def _ref64(logits, beta, official=False):
    b = beta.double() if torch.is_tensor(beta) else torch.tensor(float(beta), dtype=torch.float64)
    h = ref.heatmap_softargmax(logits.double().cpu(), b.cpu())
    return (h,) + ref.heatmap_decode(h, official)


def _betas(K, device):
    return [1.0, torch.tensor(0.7, device=device), torch.tensor([2.0], device=device),
            torch.rand(K, device=device) * 3 + 0.1]


@path_param
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("official", [False, True])
def test_forward_matches_float64_reference(device, shape, dtype, official, path):
    torch.manual_seed(0)
    logits = (torch.randn(shape, dtype=torch.float64) * 4).to(device, dtype)
    tol = F32 if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)
    for beta in _betas(shape[1], device):
        h, c, s = PATHS[path](logits, beta, official_std=official)
        h64, c64, s64 = _ref64(logits, beta, official)
        assert h.dtype == c.dtype == s.dtype == dtype
        torch.testing.assert_close(h.double().cpu(), h64, **tol)
        torch.testing.assert_close(c.double().cpu(), c64, **tol)
        torch.testing.assert_close(s.double().cpu(), s64, **tol)


def test_decode_independent_cases():
    # A delta at (row 10, col 40): coords (40/64, 10/64) up to the 1e-4 denominator, std 0.
    h = torch.zeros(1, 1, 64, 64, dtype=torch.float64)
    h[0, 0, 10, 40] = 1.0
    c, s = heatmap_decode(h)
    scale = 1 / (1 + 1e-4)
    torch.testing.assert_close(c[0, 0], torch.tensor([40 / 64, 10 / 64], dtype=torch.float64) * scale)
    # p sums to `scale` < 1, so the centre is pulled toward 0 and a delta keeps a tiny spread:
    # var_x = scale * (40/64 - scale * 40/64)^2
    var = [scale * (v / 64 - scale * v / 64) ** 2 for v in (40, 10)]
    assert s.item() == pytest.approx(math.sqrt(0.5 * sum(var)), rel=1e-9)
    # Two equal spikes in one row at cols 0 and 32: x = 16/64, var_x = (16/64)^2, var_y = 0.
    h = torch.zeros(1, 1, 64, 64, dtype=torch.float64)
    h[0, 0, 5, 0] = h[0, 0, 5, 32] = 1e6  # huge mass makes the 1e-4 eps negligible
    c, s = heatmap_decode(h)
    assert c[0, 0, 0].item() == pytest.approx(16 / 64, rel=1e-9)
    assert s.item() == pytest.approx(math.sqrt(0.5 * (16 / 64) ** 2), rel=1e-6)
    # Official value: a_x = sum p (col - x)^2 with col in pixels and x in [0,1]; std = sqrt(0.5 a_x + 0.5 a_y)/64
    x, y = 16 / 64, 5 / 64
    a_x = 0.5 * (0 - x) ** 2 + 0.5 * (32 - x) ** 2
    a_y = (5 - y) ** 2
    _, s_off = heatmap_decode(h, official_std=True)
    assert s_off.item() == pytest.approx(math.sqrt(0.5 * a_x + 0.5 * a_y) / 64, rel=1e-6)


@path_param
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_logits_and_ties(device, dtype, path):
    B, K, H, W = 2, 4, 16, 16
    torch.manual_seed(1)
    logits = torch.randn(B, K, H, W, dtype=torch.float64)
    logits[0, 0] += 1e4                      # large positive offset
    logits[0, 1] = logits[0, 1] * 1e3 - 1e5  # large negative and wide spread (exp underflows to 0)
    logits[1, 0] = 3.0                       # every pixel tied at the max
    logits[1, 1, 2, 3] = logits[1, 1, 9, 9] = logits[1, 1].max() + 1  # two tied maxima
    logits = logits.to(device, dtype).requires_grad_()
    beta = torch.tensor([1.0, 50.0, 0.3, 2.0], dtype=dtype, device=device, requires_grad=True)
    h, c, s = PATHS[path](logits, beta)
    assert torch.isfinite(h).all() and torch.isfinite(c).all() and torch.isfinite(s).all()
    l64 = logits.detach().double().cpu().requires_grad_()
    b64 = beta.detach().double().cpu().requires_grad_()
    h64, c64, s64 = ref.heatmap_softargmax_decode(l64, b64)
    tol = F32 if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h.double().cpu(), h64, **tol)
    torch.testing.assert_close(c.double().cpu(), c64, **tol)
    torch.testing.assert_close(s.double().cpu(), s64, **tol)
    # gradients, including the even split between tied maxima (as amax does)
    gc, gs = torch.randn_like(c64), torch.randn_like(s64)
    loss = (c * gc.to(device, dtype)).sum() + (s * gs.to(device, dtype)).sum()
    gl, gb = torch.autograd.grad(loss, (logits, beta))
    gl64, gb64 = torch.autograd.grad((c64 * gc).sum() + (s64 * gs).sum(), (l64, b64))
    gtol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(gl.double().cpu(), gl64, **gtol)
    torch.testing.assert_close(gb.double().cpu(), gb64, **gtol)


@path_param
@pytest.mark.parametrize("nan_bits", [0x7FC00000, 0xFFC00000, 0x7F800001])  # +NaN, -NaN (inf - inf), signalling
def test_nan_logits_poison_their_channel_only(device, path, nan_bits):
    # as torch.amax: a NaN of either sign anywhere in a channel makes its max, heatmap, coords and std NaN
    torch.manual_seed(4)
    logits = torch.randn(2, 3, 9, 7, device=device)
    nan = torch.tensor([nan_bits], dtype=torch.int64).to(torch.int32).view(torch.float32).to(device)
    logits[0, 1, 4, 2] = nan[0]
    assert torch.isnan(logits[0, 1, 4, 2])
    h, c, s = PATHS[path](logits, 1.5)
    h64, c64, s64 = _ref64(logits, 1.5)
    assert torch.isnan(h[0, 1]).all() and torch.isnan(c[0, 1]).all() and torch.isnan(s[0, 1])
    torch.testing.assert_close(h.double().cpu(), h64, equal_nan=True, **F32)
    torch.testing.assert_close(c.double().cpu(), c64, equal_nan=True, **F32)
    torch.testing.assert_close(s.double().cpu(), s64, equal_nan=True, **F32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decode_overflow_rule(device, dtype):
    # finite float32 heatmaps summing past FLT_MAX decode to the float64 answer (kernel and reference);
    # a channel whose float64 sum is not finite (an inf in it) gives NaN coords and std
    torch.manual_seed(7)
    h = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    h[0, 0] = 3e38
    h[0, 1] *= 3.4e38
    h[1, 2, 5, 5] = float("inf")
    h = h.to(device, dtype)
    c, s = heatmap_decode(h)
    c64, s64 = ref.heatmap_decode(h.double().cpu())
    assert torch.isfinite(c[:, :2]).all() and torch.isfinite(c[0]).all()
    assert torch.isnan(c[1, 2]).all() and torch.isnan(s[1, 2])
    tol = F32 if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(c.double().cpu(), c64, equal_nan=True, **tol)
    torch.testing.assert_close(s.double().cpu(), s64, equal_nan=True, **tol)


@pytest.mark.parametrize("beta", [float("inf"), float("nan"), -0.5, 0.0])
def test_beta_must_be_finite_and_positive(device, beta):
    logits = torch.randn(1, 2, 4, 4, device=device)
    for b in (beta, torch.tensor(beta, device=device), torch.tensor([1.0, beta], device=device)):
        for fn in (heatmap_softargmax, heatmap_softargmax_decode, heatmap_softargmax_coords):
            with pytest.raises(ValueError, match="beta must be finite and > 0"):
                fn(logits, b)


@path_param
def test_non_contiguous_inputs(device, path):
    torch.manual_seed(2)
    base = torch.randn(3, 64, 64, 6, device=device)
    logits = base.permute(0, 3, 1, 2)[:, ::2]  # (3, 3, 64, 64), strided
    assert not logits.is_contiguous()
    beta = torch.rand(6, device=device)[::2] + 0.5  # strided beta
    h, c, s = PATHS[path](logits, beta)
    h64, c64, s64 = _ref64(logits, beta)
    torch.testing.assert_close(h.double().cpu(), h64, **F32)
    torch.testing.assert_close(c.double().cpu(), c64, **F32)
    torch.testing.assert_close(s.double().cpu(), s64, **F32)


@path_param
@pytest.mark.parametrize("official", [False, True])
def test_gradcheck_and_gradgradcheck(device, official, path):
    torch.manual_seed(3)
    logits = torch.randn(2, 2, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    beta_k = (torch.rand(2, dtype=torch.float64, device=device) + 0.5).requires_grad_()
    beta_s = torch.tensor(0.8, dtype=torch.float64, device=device, requires_grad=True)
    coords_std = lambda l, b: PATHS[path](l, b, official)[1:]  # noqa: E731
    for beta in (beta_k, beta_s):
        assert torch.autograd.gradcheck(coords_std, (logits, beta))
        assert torch.autograd.gradgradcheck(coords_std, (logits, beta))
    # heatmaps used too: their gradient joins the decode gradient inside the backward
    assert torch.autograd.gradcheck(lambda l, b: PATHS[path](l, b, official), (logits, beta_k))


def test_opcheck_all_ops():
    torch.manual_seed(4)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    beta = (torch.rand(3) + 0.5).requires_grad_()
    h = heatmap_softargmax(logits.detach(), beta.detach())
    coords, std = heatmap_decode(h)
    ops = torch.ops.ldeq
    cases = [
        (ops.heatmap_softargmax.default, (logits, beta)),
        (ops.heatmap_decode.default, (h.clone().requires_grad_(), False)),
        (ops.heatmap_decode.default, (h.clone().requires_grad_(), True)),
        (ops.heatmap_softargmax_backward.default, (torch.randn_like(h), logits.detach(), beta.detach(), h)),
        (ops.heatmap_decode_backward.default,
         (torch.randn_like(coords), torch.randn_like(std), h, coords, std, False)),
        (ops.heatmap_softargmax_decode.default, (logits, beta, False)),
        (ops.heatmap_softargmax_decode.default, (logits, beta, True)),
        (ops.heatmap_softargmax_decode_backward.default,
         (torch.randn_like(h), torch.randn_like(coords), torch.randn_like(std), logits.detach(), beta.detach(), h,
          coords, std, False)),
        (ops.heatmap_softargmax_decode_backward.default,
         (None, torch.randn_like(coords), torch.randn_like(std), logits.detach(), beta.detach(), h, coords, std,
          False)),
        (ops.heatmap_softargmax_coords.default, (logits, beta, False)),
        (ops.heatmap_softargmax_coords.default, (logits, beta, True)),
        (ops.heatmap_softargmax_coords_backward.default,
         (torch.randn_like(coords), torch.randn_like(std), logits.detach(), beta.detach(), coords, std, False)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)  # raises on any failure


@path_param
def test_torch_compile_fullgraph(path):
    fn = torch.compile(PATHS[path], fullgraph=True, backend="eager")
    logits = torch.randn(2, 3, 16, 16)
    beta = torch.rand(3) + 0.5
    for got, want in zip(fn(logits, beta), _ref64(logits, beta)):
        torch.testing.assert_close(got.double(), want, **F32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(dtype):
    logits = torch.randn(2, 3, 16, 16).to(dtype)
    h, c, s = heatmap_softargmax_decode(logits, 1.0)
    assert h.dtype == c.dtype == s.dtype == dtype
    h32, c32, s32 = heatmap_softargmax_decode(logits.float(), 1.0)
    torch.testing.assert_close(c.float(), c32, rtol=1e-2, atol=1e-2)


def test_reference_fallback_matches_kernel(monkeypatch):
    torch.manual_seed(5)
    logits = torch.randn(2, 3, 9, 11, dtype=torch.float64, requires_grad=True)
    kernels = [fn(logits, 1.3) for fn in PATHS.values()]
    monkeypatch.setattr(_ext, "KERNELS", frozenset())
    _ext.warn_fallback.cache_clear()
    with pytest.warns(RuntimeWarning, match="pure-PyTorch reference"):
        fallbacks = [fn(logits, 1.3) for fn in PATHS.values()]
    for outs, fb in zip(kernels, fallbacks):
        for a, b in zip(outs, fb):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad, match, exc", [
    (torch.randn(3, 64, 64), r"logits must have shape \(B, K, H, W\).*3 dims", ValueError),
    (torch.randn(2, 3, 0, 64), "non-empty spatial dims", ValueError),
    (torch.randint(0, 5, (2, 3, 8, 8)), "floating-point.*int64", TypeError),
    ([[1.0]], "must be a torch.Tensor", TypeError),
])
def test_bad_logits(bad, match, exc):
    with pytest.raises(exc, match=match):
        heatmap_softargmax(bad, 1.0)


def test_bad_beta_and_devices():
    logits = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"beta must be a scalar or have shape \(K,\) = \(3,\), got shape \(4,\)"):
        heatmap_softargmax(logits, torch.ones(4))
    with pytest.raises(ValueError, match=r"got shape \(3, 1\)"):
        heatmap_softargmax(logits, torch.ones(3, 1))
    with pytest.raises(TypeError, match="beta must be a floating-point tensor"):
        heatmap_softargmax(logits, torch.ones(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="beta must be on logits' device cpu, got meta"):
        heatmap_softargmax(logits, torch.ones(3, device="meta"))
    with pytest.raises(TypeError, match="beta must be a float or a tensor"):
        heatmap_softargmax(logits, "1.0")
    with pytest.raises(ValueError, match="heatmaps must have shape"):
        heatmap_decode(torch.rand(64, 64))


def test_raw_op_checks_name_the_argument():
    # the C++ kernels check too, for callers of torch.ops.ldeq.* directly
    with pytest.raises(RuntimeError, match=r"beta must be a scalar or have shape \(K,\)"):
        torch.ops.ldeq.heatmap_softargmax(torch.randn(2, 3, 4, 4), torch.ones(5))
    with pytest.raises(RuntimeError, match="beta must have logits's dtype|beta must have logits' dtype"):
        torch.ops.ldeq.heatmap_softargmax(torch.randn(2, 3, 4, 4), torch.ones(3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="must be float32 or float64"):
        torch.ops.ldeq.heatmap_decode(torch.ones(2, 3, 4, 4, dtype=torch.int32), False)
    with pytest.raises(RuntimeError, match="grad_heatmaps must have logits' shape"):
        l, b = torch.randn(2, 3, 4, 4), torch.ones(3)
        h, c, s = torch.ops.ldeq.heatmap_softargmax_decode(l, b, False)
        torch.ops.ldeq.heatmap_softargmax_decode_backward(torch.ones(2, 3, 4, 5), c, s, l, b, h, c, s, False)
    with pytest.raises(RuntimeError, match=r"grad_coords must have shape \(2, 3, 2\)"):
        h = torch.rand(2, 3, 4, 4)
        torch.ops.ldeq.heatmap_decode_backward(torch.ones(2, 3), torch.ones(2, 3), h, torch.ones(2, 3),
                                               torch.ones(2, 3), False)


# Outputs of 8 MB and more can get a transparent-huge-page hint (opt-in, csrc/common/cpu_alloc.h):
# check such sizes against the reference too, forward and backward, and that the hint takes effect.
BIG = (8, 64, 64, 64)  # 8.4 MB in float32


@path_param
@pytest.mark.parametrize("hint", [False, True])
def test_large_outputs_match_reference(path, hint):
    previous = _ext.set_huge_pages(hint)
    try:
        _large_outputs_match_reference(path)
    finally:
        _ext.set_huge_pages(previous)


def _large_outputs_match_reference(path):
    torch.manual_seed(5)
    logits = (torch.randn(BIG) * 3).requires_grad_()
    beta = (torch.rand(BIG[1]) + 0.5).requires_grad_()
    l64, b64 = logits.detach().double().requires_grad_(), beta.detach().double().requires_grad_()
    out = PATHS[path](logits, beta)
    out64 = ref.heatmap_softargmax(l64, b64)
    out64 = (out64,) + ref.heatmap_decode(out64)
    for o, o64 in zip(out, out64):
        torch.testing.assert_close(o.double(), o64, **F32)
    gc, gs = torch.randn(BIG[0], BIG[1], 2), torch.randn(BIG[0], BIG[1])
    ((out[1] * gc).sum() + (out[2] * gs).sum()).backward()
    ((out64[1] * gc.double()).sum() + (out64[2] * gs.double()).sum()).backward()
    torch.testing.assert_close(logits.grad.double(), l64.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(beta.grad.double(), b64.grad, rtol=1e-4, atol=1e-5)


def _anon_huge_kb(t):
    """AnonHugePages (kB) over the mappings of this process that overlap t's storage.

    The hint splits the allocation's mapping at the 2 MiB boundaries, so several mappings are summed.
    """
    lo_t, hi_t = t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo < hi_t and lo_t < hi
            elif inside and head == "AnonHugePages:":
                total += int(line.split()[1])
    return total


def _thp_mode():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return "never"


_HUGE_PAGE_PROBE = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from ldeq.ops import heatmap_softargmax
from test_heatmap_ops import _anon_huge_kb
h = heatmap_softargmax(torch.randn(8, 98, 64, 64), 1.0)  # 12.8 MB output, hinted from 8 MiB up
print(_anon_huge_kb(h))
"""


def test_huge_page_hint_is_opt_in():
    # Off by default (on a loaded host its compaction stalls gave the worst tails, docs/benchmarks.md);
    # LDEQ_HUGE_PAGES=1 turns it on. A fresh process each: in this one glibc may already serve 12.8 MB
    # from its heap (its mmap threshold rises after large frees), where the hint has nothing to do.
    # Where transparent huge pages are off the hint must be harmless: no huge page, same results.
    import os
    import subprocess
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    base = {k: v for k, v in os.environ.items() if k not in ("LDEQ_NO_HUGE_PAGES", "LDEQ_HUGE_PAGES")}
    kb = {}
    for name, extra in (("default", {}), ("opt-in", {"LDEQ_HUGE_PAGES": "1"})):
        out = subprocess.run([sys.executable, "-c", _HUGE_PAGE_PROBE, here], capture_output=True, text=True,
                             check=True, env=dict(base, **extra))
        kb[name] = int(out.stdout.strip().splitlines()[-1])
    if _thp_mode() in ("never", "madvise"):
        assert kb["default"] == 0, f"the hint is opt-in, yet the default output got {kb['default']} kB of huge pages"
    if _thp_mode() == "never":
        assert kb["opt-in"] == 0, f"transparent huge pages are off, yet the output got {kb['opt-in']} kB of them"
    else:
        assert kb["opt-in"] >= 2048, (f"with LDEQ_HUGE_PAGES=1 the 12.8 MB heatmap output got {kb['opt-in']} kB of "
                                      "huge pages; expected at least one 2 MiB page")
