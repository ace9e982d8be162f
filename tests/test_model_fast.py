"""The LDEQ's fast paths (ldeq/model/fast.py): the packed channels-last inference cell, its cache and
fallbacks, the injection constant computed once per solve, float32 state and beta under bf16
autocast, and the sync-free RwR step / fixed-budget solve (torch.compile fullgraph)."""
import copy
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from ldeq.model import LDEQ, LDEQConfig, fast
from ldeq.ops import heatmap_softargmax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from _plain_ldeq import PlainLDEQ  # noqa: E402

SMALL = dict(injection_width=16, cell_base_width=16, cell_width_increment=8, heatmap_size=16, image_size=64,
             n_keypoints=6, cell_extra_latent_width=2)


def _model(**over):
    torch.manual_seed(0)
    m = LDEQ(LDEQConfig(**{**SMALL, **over})).eval()
    with torch.no_grad():  # non-trivial GroupNorm affine, so the packed norm's affine is exercised
        for mod in m.modules():
            if isinstance(mod, torch.nn.GroupNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    return m


def _inputs(m, B=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    cfg = m.cfg
    S = cfg.heatmap_size
    return (torch.randn(B, 3, cfg.image_size, cfg.image_size, generator=g),
            torch.rand(B, cfg.z_width, S, S, generator=g))


def _official_cell(cell, z, x):
    """The official cell's op order: cat[z, x] -> modules, in float64."""
    h = cell.head(cell.hourglass(cell.tail(torch.cat([z, x], 1))))
    return heatmap_softargmax(h, cell.features_to_heatmaps.effective_beta())


def _f64_reference(m, z, x):
    m64 = copy.deepcopy(m).double()
    with torch.no_grad():
        return _official_cell(m64.deq_layer.cell, z.double(), x.double())


def test_packed_cell_matches_the_official_cell_to_float32_rounding():
    assert fast.packed_available()  # this torch build has oneDNN: the packed path must be exercised
    m = _model()
    images, z = _inputs(m)
    cell = m.deq_layer.cell
    with torch.no_grad():
        x = m.injection(images)
        assert fast.use_packed(z)
        packed = m.cell_step(z, m.cell_inject(x))
        assert cell in fast._CACHE
        prev = fast.set_packed_enabled(False)
        try:
            unpacked = m.cell_step(z, m.cell_inject(x))
            official32 = _official_cell(cell, z, x)
        finally:
            fast.set_packed_enabled(prev)
    ref = _f64_reference(m, z, x)
    e_off = float((official32.double() - ref).abs().max())
    # Every float32 path reorders sums differently; each must stay within a small multiple of the
    # official order's own float32 error (measured here: a few 1e-7 on values in (0, 1]).
    for got in (packed, unpacked):
        assert got.dtype == torch.float32 and got.shape == z.shape
        assert float((got.double() - ref).abs().max()) <= 8 * e_off + 1e-6


def test_packed_path_has_no_slow_conv_fallback():
    m = _model()
    images, z = _inputs(m, B=1)
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # F.conv2d sends 1x1 kernels at batch 1 on one thread to the slow path
    try:
        with torch.no_grad():
            x = m.injection(images)
            m.cell_step(z, m.cell_inject(x))
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                m.cell_step(z, m.cell_inject(x))
    finally:
        torch.set_num_threads(prev)
    names = {e.key for e in prof.key_averages()}
    assert not any("slow_conv" in n for n in names), sorted(n for n in names if "conv" in n)
    assert any("_convolution_pointwise" in n for n in names)
    assert "aten::cat" not in names  # no [z, x] concat, no decoder concat (merges split their 1x1 conv)


def test_packed_weights_follow_weight_changes_and_stay_out_of_the_state_dict():
    m = _model()
    keys = list(m.state_dict())
    images, z = _inputs(m)
    with torch.no_grad():
        c = m.cell_inject(m.injection(images))
        before = m.cell_step(z, c)
        m.deq_layer.cell.hourglass.same8.conv.weight.mul_(1.5)  # in place: bumps the version counter
        after = m.cell_step(z, c)
        prev = fast.set_packed_enabled(False)
        try:
            want = m.cell_step(z, c)
        finally:
            fast.set_packed_enabled(prev)
    assert float((after - before).abs().max()) > 1e-3
    torch.testing.assert_close(after, want, atol=1e-5, rtol=1e-4)
    assert list(m.state_dict()) == keys
    m2 = copy.deepcopy(m)  # the cache lives outside the module: deepcopy / pickle are unaffected
    assert list(m2.state_dict()) == keys


def test_fallbacks_grad_autocast_and_switch_use_the_plain_modules():
    m = _model()
    _, z = _inputs(m)
    assert fast.use_packed(z) is False  # autograd on (no no_grad here)
    with torch.no_grad():
        assert fast.use_packed(z)
        assert not fast.use_packed(z.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not fast.use_packed(z)
        prev = fast.set_packed_enabled(False)
        try:
            assert not fast.use_packed(z)
        finally:
            fast.set_packed_enabled(prev)


def test_injection_constant_once_per_solve_and_gradients_reach_both_halves():
    m = _model()
    images, _ = _inputs(m)
    calls = []
    h = m.deq_layer.cell.register_forward_pre_hook(lambda *a: calls.append(1))
    w = m.deq_layer.cell.tail.conv.weight
    inject = m.deq_layer.cell.inject
    n = []
    m.deq_layer.cell.inject = lambda x: (n.append(1), inject(x))[1]
    try:
        out = m(images, solver="fixed_point_last", max_iter=4, tol=0.0, grad="jfb")
    finally:
        h.remove()
        del m.deq_layer.cell.inject
    assert len(n) == 1 and not calls  # one injection constant; the solve calls step, not forward
    out.keypoints.sum().backward()
    Z = m.cfg.z_width
    assert float(w.grad[:, :Z].abs().sum()) > 0 and float(w.grad[:, Z:].abs().sum()) > 0
    assert m.deq_layer.cell.tail.conv.bias.grad is not None


def test_ldeq_matches_the_official_style_plain_model():
    """The benchmark's baseline is the same model: strict state-dict load, same keypoints."""
    m = _model()
    p = PlainLDEQ(m.cfg).eval()
    p.load_state_dict(m.state_dict(), strict=True)
    images, _ = _inputs(m)
    with torch.no_grad():
        a = m(images, solver="fixed_point_last", max_iter=3, tol=0.0).keypoints
        b = p(images, max_iter=3)[0]
    # 3 iterations + final step of a random (non-contractive) small cell amplify float32 reordering;
    # keypoints are soft-argmax averages in [0, 1).
    torch.testing.assert_close(a, b, atol=1e-3, rtol=0)


# --- point 4: bf16 autocast keeps the state and beta in float32 ------------------------------------
def test_autocast_state_and_learned_beta_stay_float32():
    m = _model(cell_learn_softargmax_beta=True, cell_softargmax_beta=1.3)
    images, z = _inputs(m)
    cell = m.deq_layer.cell
    with torch.no_grad():
        cell.features_to_heatmaps.raw_beta.add_(torch.linspace(0, 0.3, m.cfg.z_width))
        x = m.injection(images)
        seen = []
        hook = cell.head.register_forward_hook(lambda mod, i, o: seen.append(o))
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                beta = cell.features_to_heatmaps.effective_beta()
                out = m.cell(z, x)
        finally:
            hook.remove()
        logits = seen[0]
        assert logits.dtype == torch.bfloat16  # the convolutions did run in bf16
        assert beta.dtype == torch.float32
        torch.testing.assert_close(beta, F.softplus(cell.features_to_heatmaps.raw_beta))
        assert out.dtype == torch.float32
        # the normalisation ran in float32 on the bf16 logits with the float32 beta: no bf16 rounding
        want = heatmap_softargmax(logits.float(), beta)
        torch.testing.assert_close(out, want, atol=1e-6, rtol=1e-6)
        assert bool((out.bfloat16().float() != out).any())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            full = m(images, solver="fixed_point_last", max_iter=2, tol=0.0)
        assert full.z_star.dtype == torch.float32 and full.keypoints.dtype == torch.float32
        assert bool((full.z_star.bfloat16().float() != full.z_star).any())
    m.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(images, solver="fixed_point_last", max_iter=2, tol=0.0, grad="jfb")
    out.keypoints.float().sum().backward()
    g = cell.features_to_heatmaps.raw_beta.grad
    assert g is not None and g.dtype == torch.float32 and bool(torch.isfinite(g).all())


# --- point 5: sync-free RwR step and fixed-budget solve ----------------------------------------------
def test_warm_step_and_fixed_budget_solve_match_the_model():
    m = _model()
    images, _ = _inputs(m)
    with torch.no_grad():
        x = (images - images.mean()) / images.std()
        ref = m(x, solver="fixed_point_last", max_iter=3, tol=0.0)
        kp, z = fast.fixed_budget_solve(m, x, 3)
        torch.testing.assert_close(kp, ref.keypoints, atol=1e-6, rtol=0)
        torch.testing.assert_close(z, ref.z_star, atol=1e-6, rtol=0)
        kp1, z1 = fast.warm_step(m, x, z, 1)
        c = m.cell_inject(m.injection(x))
        zz = m.cell_step(m.cell_step(z, c), c)
        torch.testing.assert_close(z1, zz, atol=1e-6, rtol=0)


def test_warm_step_compiles_with_fullgraph_and_matches_eager():
    """fullgraph=True fails on any graph break, and a host synchronisation (.item(), bool() of a
    tensor, a data-dependent branch) is a graph break: the step is capturable as a CUDA graph."""
    torch._dynamo.reset()
    m = _model()
    images, _ = _inputs(m)
    with torch.no_grad():
        x = (images - images.mean()) / images.std()
        _, z0 = fast.fixed_budget_solve(m, x, 2)
        step = torch.compile(lambda a, b: fast.warm_step(m, a, b, 1), fullgraph=True, backend="aot_eager")
        solve = torch.compile(lambda a: fast.fixed_budget_solve(m, a, 2), fullgraph=True, backend="aot_eager")
        for compiled, eager, args in ((step, lambda a, b: fast.warm_step(m, a, b, 1), (x, z0)),
                                      (solve, lambda a: fast.fixed_budget_solve(m, a, 2), (x,))):
            got = compiled(*args)
            prev = fast.set_packed_enabled(False)  # traced code takes the plain modules: compare like with like
            try:
                want = eager(*args)
            finally:
                fast.set_packed_enabled(prev)
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)


@pytest.mark.cuda
def test_warm_step_cuda_graph_replays_the_eager_step():
    m = _model().cuda()
    images, _ = _inputs(m)
    x = ((images - images.mean()) / images.std()).cuda()
    with torch.no_grad():
        _, z0 = fast.fixed_budget_solve(m, x, 2)
        want = fast.warm_step(m, x, z0, 1)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fast.warm_step(m, x, z0, 1)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fast.warm_step(m, x, z0, 1)
        graph.replay()
        torch.cuda.synchronize()
    torch.testing.assert_close(out[0], want[0], atol=1e-5, rtol=1e-4)
