"""Every CPU kernel (heatmap ops and solver kernels) under every CPU capability this CPU can execute
(default / avx2 / avx512, forced through ldeq._ext.set_cpu_capability) and under 1 and 2 threads,
each against the float64 pure-PyTorch reference; the NaN / overflow / beta rule on every capability;
LDEQ_CPU_CAPABILITY in a fresh process.

Tolerances: float32 kernels against the float64 reference differ by float32 rounding: the exp is
a Cephes polynomial (~2 ulp, eps32 = 1.2e-7) and each channel sum of n <= 4096 terms is
accumulated in float then double, so relative errors stay below ~n_rows * eps32 ~ 1e-5 (rtol 2e-5;
atol 2e-6 for values near 0). float64 kernels: ~n * eps64 ~ 1e-12. Gradients go through one more
division by the channel sum: rtol 1e-4 (float32), 1e-9 (float64). Solver reductions accumulate in
float64 over d ~ 3e4 terms of O(1): |error| <= d * eps64 * sum|terms| ~ 1e-9 relative.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ldeq import _ext
from ldeq.ops import _reference as ref
from ldeq.ops import heatmap_decode, heatmap_softargmax, heatmap_softargmax_coords, heatmap_softargmax_decode
from ldeq.solvers import _kernels as K
from test_heatmap_ops import PATHS  # the three public paths: fused, separate, coords

F64 = torch.float64
CAPS = _ext.available_cpu_capabilities() if _ext.extension_loaded() else []
F32 = dict(rtol=2e-5, atol=2e-6)
F64_TOL = dict(rtol=1e-11, atol=1e-13)


def test_extension_and_capabilities_present():
    # A build without ldeq._C (or without the CPU kernels) must fail here, not skip the module.
    assert _ext.extension_loaded(), "ldeq._C is not built"
    assert _ext.has_kernel("heatmap_softargmax", "cpu")
    assert CAPS[0] == "default" and _ext.max_cpu_capability() == CAPS[-1]
    assert _ext.cpu_capability() in CAPS


@pytest.fixture(params=[(cap, threads) for cap in CAPS or ["default"] for threads in (1, 2)],
                ids=lambda p: f"{p[0]}-{p[1]}thr")
def cap(request):
    """Runs the test under one forced capability and thread count, restoring both afterwards."""
    name, threads = request.param
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # the kernels' at::parallel_for really uses that many threads (an OpenMP team of that size)
        assert _ext._C.parallel_threads_used(64) == min(threads, os.cpu_count())
        with _ext.forced_cpu_capability(name) as got:
            assert got == name and _ext.cpu_capability() == name
            yield name
    finally:
        torch.set_num_threads(before)


def _ref64(logits, beta, official=False):
    h = ref.heatmap_softargmax(logits, beta)
    return (h,) + ref.heatmap_decode(h, official)


# ---------------------------------------------------------------------------------- heatmap kernels
@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 5, 64, 64), (3, 4, 7, 9)])  # 7*9: AVX-512 tails of 15 lanes
def test_heatmap_ops_forward_and_backward_match_float64_reference(cap, path, dtype, shape):
    torch.manual_seed(0)
    l64 = (torch.randn(shape, dtype=F64) * 4).requires_grad_()
    b64 = (torch.rand(shape[1], dtype=F64) * 2 + 0.2).requires_grad_()
    logits = l64.detach().to(dtype).requires_grad_()
    beta = b64.detach().to(dtype).requires_grad_()
    official = shape[2] != shape[3]
    outs = PATHS[path](logits, beta, official)
    outs64 = _ref64(logits.detach().double().requires_grad_(), beta.detach().double().requires_grad_(), official)
    tol = F32 if dtype == torch.float32 else F64_TOL
    for o, o64 in zip(outs, outs64):
        assert o.dtype == dtype
        torch.testing.assert_close(o.double(), o64, **tol)
    gh, gc, gs = torch.randn_like(outs64[0]), torch.randn_like(outs64[1]), torch.randn_like(outs64[2])
    loss = sum((o * g.to(dtype)).sum() for o, g in zip(outs, (gh, gc, gs)))
    gl, gb = torch.autograd.grad(loss, (logits, beta))
    l_ref, b_ref = logits.detach().double().requires_grad_(), beta.detach().double().requires_grad_()
    outs64 = _ref64(l_ref, b_ref, official)
    gl64, gb64 = torch.autograd.grad(sum((o * g).sum() for o, g in zip(outs64, (gh, gc, gs))), (l_ref, b_ref))
    gtol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(gl.double(), gl64, **gtol)
    torch.testing.assert_close(gb.double(), gb64, **gtol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decode_backward_matches_reference(cap, dtype):
    torch.manual_seed(1)
    h = torch.rand(2, 3, 16, 12, dtype=F64).to(dtype).requires_grad_()
    c, s = heatmap_decode(h)
    gc, gs = torch.randn(2, 3, 2, dtype=F64), torch.randn(2, 3, dtype=F64)
    (g,) = torch.autograd.grad((c * gc.to(dtype)).sum() + (s * gs.to(dtype)).sum(), (h,))
    h64 = h.detach().double().requires_grad_()
    c64, s64 = ref.heatmap_decode(h64)
    (g64,) = torch.autograd.grad((c64 * gc).sum() + (s64 * gs).sum(), (h64,))
    gtol = dict(rtol=1e-4, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g.double(), g64, **gtol)


def _nan_with_bits(bits: int, dtype) -> float:
    if dtype == torch.float32:
        return torch.from_numpy(np.array([bits], dtype=np.uint32).view(np.float32))[0].item()
    return torch.from_numpy(np.array([bits], dtype=np.uint64).view(np.float64))[0].item()


NAN_BITS = {
    torch.float32: [0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF],  # quiet +/-, signalling, all ones
    torch.float64: [0x7FF8000000000000, 0xFFF8000000000000, 0x7FF0000000000001, 0xFFFFFFFFFFFFFFFF],
}


def test_inf_minus_inf_is_the_sign_bit_nan():
    inf = torch.tensor(float("inf"))
    assert (inf - inf).view(torch.int32).item() & 0xFFFFFFFF == 0xFFC00000


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bit_index", range(4))
@pytest.mark.parametrize("where", [0, 37, 62])  # first element, a vector body, the last element
def test_any_nan_payload_poisons_its_channel_only(cap, path, dtype, bit_index, where):
    # as torch.amax: any NaN (either sign, any payload) in a channel makes its max, heatmap, coords
    # and std NaN; every other channel is untouched.
    torch.manual_seed(4)
    logits = torch.randn(2, 3, 9, 7, dtype=dtype)
    logits.view(2, 3, 63)[0, 1, where] = _nan_with_bits(NAN_BITS[dtype][bit_index], dtype)
    h, c, s = PATHS[path](logits, 1.5)
    assert torch.isnan(h[0, 1]).all() and torch.isnan(c[0, 1]).all() and torch.isnan(s[0, 1])
    h64, c64, s64 = _ref64(logits.double(), torch.tensor(1.5, dtype=F64))
    assert torch.isnan(h64[0, 1]).all() and torch.isnan(c64[0, 1]).all()  # the reference agrees
    tol = F32 if dtype == torch.float32 else F64_TOL
    for a, b in ((h, h64), (c, c64), (s, s64)):
        torch.testing.assert_close(a.double(), b, equal_nan=True, **tol)
    mask = torch.ones(2, 3, dtype=torch.bool)
    mask[0, 1] = False
    assert torch.isfinite(h[mask]).all() and torch.isfinite(c[mask]).all() and torch.isfinite(s[mask]).all()


@pytest.mark.parametrize("official", [False, True])
def test_decode_near_float32_overflow_gives_the_reference_answer(cap, official):
    # Finite float32 heatmaps whose channel sums pass FLT_MAX: the decode sums in float64 (kernel and
    # reference), so the answer is the true centre and spread, not NaN (kernel before) or 0
    # (float32 reference before).
    torch.manual_seed(6)
    h = torch.empty(2, 3, 64, 64)
    h[0, 0] = 3e38
    h[0, 1] = torch.rand(64, 64) * 3.4e38
    h[0, 2] = torch.rand(64, 64) * 1e36  # sum ~2e39 > FLT_MAX, every row sum < FLT_MAX
    h[1] = torch.rand(3, 64, 64)  # ordinary channels
    c, s = heatmap_decode(h, official)
    assert torch.isfinite(c).all() and torch.isfinite(s).all()
    c64, s64 = ref.heatmap_decode(h.double(), official)
    torch.testing.assert_close(c.double(), c64, **F32)
    torch.testing.assert_close(s.double(), s64, **F32)
    cr, sr = ref.heatmap_decode(h, official)  # the reference on float32 input: same answer
    torch.testing.assert_close(cr, c, **F32)
    torch.testing.assert_close(sr, s, **F32)
    # uniform mass: x = y = mean(col) / W = (W - 1) / (2 W)
    torch.testing.assert_close(c[0, 0].double(), torch.full((2,), 63 / 128, dtype=F64), rtol=1e-6, atol=0)
    # the backward there matches the reference too. The gradient is ~ 1 / sum h ~ 1e-42: a float32
    # denormal, whose resolution is 2**-149 = 1.4e-45, so the bound is a few denormal steps (each
    # element is a[col] + rv[row], two rounded denormals) on top of the float32 relative error.
    hr = h.clone().requires_grad_()
    gc, gs = torch.randn(2, 3, 2), torch.randn(2, 3)
    c, s = heatmap_decode(hr, official)
    (g,) = torch.autograd.grad((c * gc).sum() + (s * gs).sum(), (hr,))
    h64 = h.double().requires_grad_()
    c64, s64 = ref.heatmap_decode(h64, official)
    (g64,) = torch.autograd.grad((c64 * gc.double()).sum() + (s64 * gs.double()).sum(), (h64,))
    assert torch.isfinite(g).all()
    torch.testing.assert_close(g[0].double(), g64[0], rtol=1e-4, atol=4 * 2.0 ** -149)
    torch.testing.assert_close(g[1].double(), g64[1], rtol=1e-4, atol=1e-6)  # ordinary channels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decode_of_a_non_finite_sum_is_nan_like_the_reference(cap, dtype):
    h = torch.rand(1, 3, 8, 8, dtype=dtype)
    h[0, 0, 2, 3] = float("inf")
    if dtype == torch.float64:
        h[0, 1] = 1e307  # 64 * 1e307 > DBL_MAX: the float64 sum itself overflows
    c, s = heatmap_decode(h)
    c64, s64 = ref.heatmap_decode(h.double())
    assert torch.isnan(c[0, 0]).all() and torch.isnan(s[0, 0])
    assert torch.isfinite(c[0, 2]).all()
    torch.testing.assert_close(c.double(), c64, equal_nan=True, **F32)
    torch.testing.assert_close(s.double(), s64, equal_nan=True, **F32)


@pytest.mark.parametrize("beta", [float("inf"), float("nan"), -1.0, 0.0, -float("inf")])
@pytest.mark.parametrize("as_tensor", ["float", "scalar", "per_k"])
@pytest.mark.parametrize("op", ["softargmax", "fused", "coords"])
def test_beta_must_be_finite_and_positive(cap, beta, as_tensor, op):
    logits = torch.randn(2, 3, 8, 8)
    if as_tensor == "scalar":
        beta = torch.tensor(beta)
    elif as_tensor == "per_k":
        beta = torch.tensor([1.0, beta, 2.0])
    fn = {"softargmax": heatmap_softargmax, "fused": heatmap_softargmax_decode,
          "coords": heatmap_softargmax_coords}[op]
    with pytest.raises(ValueError, match="beta must be finite and > 0"):
        fn(logits, beta)


# ----------------------------------------------------------------------------------- solver kernels
def _hist(m, B, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, B, d, generator=g, dtype=F64).to(dtype)


SOLVER_DTYPES = [F64, torch.float32, torch.bfloat16]


def _stol(dtype):
    return {F64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]


@pytest.mark.parametrize("dtype", SOLVER_DTYPES)
def test_anderson_kernels_match_reference(cap, dtype):
    m, B, d, slot, n = 4, 3, 33001, 1, 3  # d > one task chunk (32768), not a multiple of any vector width
    X, G, fz = _hist(m, B, d, dtype, 1), _hist(m, B, d, dtype, 2), _hist(1, B, d, dtype, 3)[0]
    H = torch.randn(B, m, m, dtype=F64)
    active = torch.tensor([True, False, True])
    outs = []
    for use_ref in (False, True):
        Gc, Fc, Hc, Cc = G.clone(), X.clone(), H.clone(), H.clone()
        r = K.anderson_update(X, Gc, Fc, fz, Hc, slot, n, active, C=Cc, use_reference=use_ref)  # type I: C too
        outs.append((Gc, Fc, Hc, Cc) + tuple(r))
    (Gk, Fk, Hk, Ck, rk, fk), (Gr, Fr, Hr, Cr, rr, fr) = outs
    torch.testing.assert_close(Gk, Gr, rtol=0, atol=0)  # g = fz - x: one rounding, the same everywhere
    assert torch.equal(Fk, Fr)
    torch.testing.assert_close(Ck, Cr, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(Hk, Hr, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(rk, rr, rtol=1e-10, atol=0)
    torch.testing.assert_close(fk, fr, rtol=1e-10, atol=0)
    alpha = torch.randn(B, n, dtype=F64)
    best_key = torch.tensor([slot, slot, 0])
    for beta in (0.7, 1.0):  # damped (reads F and G) and undamped (reads F only)
        Xk, Xr, zk, zr = X.clone(), X.clone(), torch.zeros_like(fz), torch.zeros_like(fz)
        K.anderson_mix(Xk, Fk, Gk, alpha, beta, slot, n, active, zk, best_key)
        K.anderson_mix(Xr, Fk, Gk, alpha, beta, slot, n, active, zr, best_key, use_reference=True)
        torch.testing.assert_close(Xk.double(), Xr.double(), rtol=_stol(dtype), atol=_stol(dtype))
        assert torch.equal(zk, zr) and torch.equal(zk[0], X[slot, 0]) and not zk[1:].any()
    ak, fbk = K.anderson_solve(Hk + 10 * torch.eye(m, dtype=F64), n, 1e-4, n - 1)
    ar, fbr = K.anderson_solve(Hk + 10 * torch.eye(m, dtype=F64), n, 1e-4, n - 1, use_reference=True)
    torch.testing.assert_close(ak, ar, rtol=1e-9, atol=1e-9)
    assert torch.equal(fbk, fbr)


@pytest.mark.parametrize("dtype", SOLVER_DTYPES)
def test_broyden_kernels_match_reference(cap, dtype):
    L, B, d, n, slot = 4, 3, 33001, 3, 1
    U, V = _hist(L, B, d, dtype, 6), _hist(L, B, d, dtype, 7)
    dx, fz, z, go = [t.contiguous() for t in _hist(4, B, d, dtype, 8).unbind(0)]
    active = torch.tensor([True, False, True])
    gk, gr = torch.zeros_like(z), torch.zeros_like(z)
    dk = K.broyden_pass1(V, dx, fz, z, gk, n, active)
    dr = K.broyden_pass1(V, dx, fz, z, gr, n, active, use_reference=True)
    torch.testing.assert_close(gk, gr, rtol=0, atol=0)
    torch.testing.assert_close(dk, dr, rtol=1e-9, atol=1e-8)
    coef = torch.randn(B, 3 * n + 1, dtype=F64)
    best_key = torch.tensor([0, 0, 1])  # sample 0 evicts its lowest iterate from z_next (key 0)
    for with_v in (True, False):  # stored V, and the implicit-v pass (U only)
        outs = []
        for use_ref in (False, True):
            Uc, Vc, dxc, zn, zb = U.clone(), V.clone(), torch.zeros_like(dx), go.clone(), torch.zeros_like(z)
            udx = K.broyden_pass2(Uc, Vc if with_v else None, dx, dxc, z, zn, gk, go, coef, slot, n, active, zb,
                                  best_key, 0, use_reference=use_ref)
            outs.append((Uc, Vc, dxc, zn, zb, udx))
        for a, b in zip(*outs):
            torch.testing.assert_close(a.double(), b.double(), rtol=_stol(dtype), atol=_stol(dtype) * 10)
        assert torch.equal(outs[0][4][0], go[0]) and not outs[0][4][1:].any()


# ------------------------------------------------------------------------------------ configuration
def test_set_cpu_capability_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"capability must be one of 'default', 'avx2', 'avx512', got 'sse'"):
        _ext.set_cpu_capability("sse")
    with pytest.raises(ValueError, match="capability must be one of"):  # the raw binding checks too
        _ext._C.set_cpu_capability("AVX2")


def test_set_cpu_capability_caps_at_the_cpu():
    with _ext.forced_cpu_capability("avx512") as got:
        assert got == _ext.max_cpu_capability()
    with _ext.forced_cpu_capability("default") as got:
        assert got == "default"


_PROBE = "import ldeq._ext as e; print(e.cpu_capability())"


@pytest.mark.parametrize("value", ["default", "avx2", "avx512", "", "bogus"])
def test_environment_variable_forces_the_capability(value):
    env = dict(os.environ, LDEQ_CPU_CAPABILITY=value)
    out = subprocess.run([sys.executable, "-W", "always", "-c", _PROBE], capture_output=True, text=True, env=env,
                         check=True)
    got = out.stdout.strip().splitlines()[-1]
    caps = _ext.available_cpu_capabilities()
    if value in ("", "bogus"):
        assert got == caps[-1]
        assert ("ignoring LDEQ_CPU_CAPABILITY='bogus'" in out.stderr) == (value == "bogus")
    else:
        # capped at what the CPU supports
        want = value if value in caps else caps[-1]
        assert got == want
