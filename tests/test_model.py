"""LDEQ model: official conformance, architecture layout, configuration and input errors.

Oracles: the official small fixture (outputs of the authors' code), the official state-dict key
list, and independent float64 re-computations written out here with torch.nn.functional.
"""
import os

import pytest
import torch
import torch.nn.functional as F

from ldeq.model import LDEQ, LDEQConfig
from ldeq.model.layers import Conv, SoftArgmaxNorm

from _paths import FIXTURES

FIX = str(FIXTURES)
FIXTURE = os.path.join(FIX, "official_ldeq_small_fixture.pt")
KEYS = os.path.join(FIX, "official_ldeq_state_dict_keys.txt")

# Tiny widths keep each test well under a second on 2 CPU cores.
TINY = dict(injection_width=8, cell_base_width=4, cell_width_increment=2, heatmap_size=16, image_size=64,
            n_keypoints=5, solver="fixed_point_last", max_iter=3)


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=True)  # tests/fixtures/: a missing file fails


def fixture_model(fix, **over):
    cfg = LDEQConfig.from_namespace(fix["config"], tol=1e-30, **over)  # fixture: no early stop
    m = LDEQ(cfg)
    m.load_state_dict(fix["state_dict"], strict=True)
    return m.eval()


# --- official layout ---------------------------------------------------------------------------
def test_state_dict_keys_order_and_shapes_match_official_list():
    rows = [l.split(None, 1) for l in open(KEYS) if l.strip() and not l.startswith("#")]
    official = [(k, tuple(int(s) for s in shp.strip("()\n ").split(",") if s.strip())) for k, shp in rows]
    ours = [(k, tuple(v.shape)) for k, v in LDEQ(LDEQConfig()).state_dict().items()]  # widths 224/224/24
    assert ours == official


def test_default_parameter_count_is_the_debug_configs():
    n = sum(p.numel() for p in LDEQ(LDEQConfig()).parameters())
    assert abs(n - 16.5e6) < 0.05e6  # reference: "about 16.5 M parameters"


# --- conformance with the official release -----------------------------------------------------
def test_official_fixture_injection_cell_zstar_keypoints(fixture):
    m = fixture_model(fixture)
    x = fixture["image_uint8"].float() / 127.5 - 1.0
    with torch.no_grad():
        inj = m.injection(x)
        c0 = m.cell(torch.zeros(2, 98, 64, 64), inj)
        out = m(x)
    torch.testing.assert_close(inj[:, :4], fixture["injection_ch0_3"], atol=1e-5, rtol=1e-5)
    # First cell output: the official op order lands 4.9e-6 from a float64 evaluation, and a 1-ulp
    # relative perturbation of the injection alone moves it by 6.6e-6 (measured). ldeq's inference
    # cell runs channels-last with prepacked oneDNN weights and the injection's half of the first
    # conv computed apart (other accumulation orders): 9.4e-6 from the fixture, 8.5e-6 from float64.
    torch.testing.assert_close(c0[:, :4], fixture["cell_of_z0_ch0_3"], atol=2e-5, rtol=1e-5)
    # z* is 4 applications of a non-contractive random cell: a 1-ulp perturbation of the injection
    # moves z* by up to 3.4e-3 and the keypoints by up to 1.1e-4 (measured), so "float32 rounding"
    # here means these tolerances. Measured for four random 1-ulp perturbations of the injection
    # alone, through the official op order: max 1.2e-3..2.0e-3, mean 3.1e-5..5.9e-5; the bounds are
    # about twice that (the packed inference cell's reordered sums land at max 2.5e-3, mean 5.7e-5).
    dz = (out.z_star[:, :4] - fixture["z_star_ch0_3"]).abs()
    assert float(dz.max()) < 4e-3 and float(dz.mean()) < 1.2e-4
    torch.testing.assert_close(out.keypoints, fixture["keypoints"], atol=1e-4, rtol=0)
    assert out.keypoints.shape == (2, 98, 2) and out.uncertainty.shape == (2, 98)
    assert out.stats.nstep.tolist() == [3, 3]  # 3 solver iterations, then the extra final step


def test_official_uncertainty_only_behind_the_compat_option(fixture):
    m = fixture_model(fixture)
    x = fixture["image_uint8"].float() / 127.5 - 1.0
    with torch.no_grad():
        default = m(x)
        compat = m.decode(default.z_star, official_std=True)[2]
    torch.testing.assert_close(compat, fixture["uncertainty"], atol=1e-4, rtol=0)
    # the default is the true spread of p = h / (sum h + 1e-4) in [0, 1] units, recomputed here in float64
    h = default.heatmaps.double()
    p = h / (h.sum((-2, -1), keepdim=True) + 1e-4)
    g = torch.arange(64, dtype=torch.float64) / 64
    mx, my = (p.sum(-2) * g).sum(-1), (p.sum(-1) * g).sum(-1)
    vx = (p * (g[None, None, None, :] - mx[..., None, None]) ** 2).sum((-2, -1))
    vy = (p * (g[None, None, :, None] - my[..., None, None]) ** 2).sum((-2, -1))
    torch.testing.assert_close(default.uncertainty.double(), torch.sqrt(0.5 * vx + 0.5 * vy), atol=1e-5, rtol=1e-4)
    assert float((default.uncertainty - fixture["uncertainty"]).abs().max()) > 0.1


# --- building blocks against functional re-computations -----------------------------------------
def test_conv_block_is_conv_then_leaky_relu_then_norm():
    torch.manual_seed(0)
    blk = Conv(3, 4, 3, stride=2, norm="bn").double().eval()
    with torch.no_grad():
        blk.norm.running_mean.uniform_(-1, 1)
        blk.norm.running_var.uniform_(0.5, 2)
        blk.norm.weight.uniform_(0.5, 2)
        blk.norm.bias.uniform_(-1, 1)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    y = F.conv2d(x, blk.conv.weight, blk.conv.bias, stride=2, padding=1)
    y = torch.where(y > 0, y, 0.01 * y)
    n = blk.norm
    y = (y - n.running_mean[:, None, None]) / torch.sqrt(n.running_var[:, None, None] + n.eps)
    y = y * n.weight[:, None, None] + n.bias[:, None, None]
    torch.testing.assert_close(blk(x), y)
    head = Conv(3, 4, 1, norm="none", act=False).double()
    torch.testing.assert_close(head(x), F.conv2d(x, head.conv.weight, head.conv.bias))
    assert not any("norm" in k for k in head.state_dict())


@pytest.mark.parametrize("learn", [False, True])
def test_softargmax_norm_formula_and_learned_beta(learn):
    torch.manual_seed(0)
    norm = SoftArgmaxNorm(3, beta=2.5, learn=learn).double()
    h = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    want = torch.exp(2.5 * (h - h.flatten(2).max(-1).values[..., None, None]))
    torch.testing.assert_close(norm(h), want)
    if learn:
        assert [k for k, _ in norm.named_parameters()] == ["raw_beta"] and norm.raw_beta.shape == (3,)
        raw = norm.raw_beta.detach().clone().requires_grad_()
        torch.autograd.gradcheck(lambda r: torch.func.functional_call(norm, {"raw_beta": r}, (h,)), (raw,))
    else:
        assert list(norm.state_dict()) == []  # fixed beta: no state, as in the official files


# --- forward semantics -------------------------------------------------------------------------
def tiny(**over):
    torch.manual_seed(0)
    return LDEQ(LDEQConfig(**{**TINY, **over})).double().eval()


def images(B=2, n=64):
    torch.manual_seed(1)
    return torch.randn(B, 3, n, n, dtype=torch.float64)


def test_given_z0_is_used_and_extra_step_is_one_more_cell_application():
    m = tiny(max_iter=1)
    x = images()
    z0 = torch.rand(2, 5, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        inj = m.injection(x)
        one = m(x, z0=z0, extra_step=False)
        two = m(x, z0=z0)
        torch.testing.assert_close(one.z_star, m.cell(z0, inj))
        torch.testing.assert_close(two.z_star, m.cell(m.cell(z0, inj), inj))
        zeros = m(x, extra_step=False)
        torch.testing.assert_close(zeros.z_star, m.cell(torch.zeros_like(z0), inj))


def test_explicit_mode_unrolls_weight_tied_cells_with_full_autograd():
    m = tiny(model_mode="explicit", explicit_depth=3)
    x = images()
    out = m(x)
    inj = m.injection(x)
    z = torch.zeros(2, 5, 16, 16, dtype=torch.float64)
    for _ in range(3):
        z = m.cell(z, inj)
    torch.testing.assert_close(out.z_star, z)
    assert out.stats.nstep.tolist() == [3, 3] and out.stats.abs_trace.shape == (2, 3)
    out.keypoints.sum().backward()
    # the first cell application sees z0 = 0 only; its tail weights on the z channels get a
    # gradient only through applications 2 and 3, i.e. only when the unroll is tracked
    assert m.deq_layer.cell.tail.conv.weight.grad[:, :5].abs().sum() > 0


def test_decode_uses_only_the_keypoint_channels_and_latent_channels_are_carried():
    m = tiny(cell_extra_latent_width=3, cell_learn_softargmax_beta=True)
    assert m.deq_layer.cell.features_to_heatmaps.raw_beta.shape == (8,)
    with torch.no_grad():
        out = m(images())
    assert out.z_star.shape == (2, 8, 16, 16) and out.heatmaps.shape == (2, 5, 16, 16)
    assert out.keypoints.shape == (2, 5, 2)
    h = out.z_star[:, :5]
    p = h / (h.sum((-2, -1), keepdim=True) + 1e-4)
    g = torch.arange(16, dtype=torch.float64) / 16
    torch.testing.assert_close(out.keypoints[..., 0], (p.sum(-2) * g).sum(-1))
    torch.testing.assert_close(out.keypoints[..., 1], (p.sum(-1) * g).sum(-1))


def test_cell_norm_none_normalises_after_the_solve():
    m = tiny(cell_norm="none", cell_softargmax_beta=2.0)
    with torch.no_grad():
        out = m(images())
        z = out.z_star[:, :5]
        torch.testing.assert_close(out.heatmaps, torch.exp(2.0 * (z - z.amax((-2, -1), keepdim=True))))


def test_training_gradient_modes():
    m = tiny(max_iter=4)
    m.train()
    x = images()
    grads = {}
    for mode in ("jfb", "ift", "phantom"):
        m.zero_grad()
        out = m(x, grad=mode)
        out.keypoints.square().sum().backward()
        grads[mode] = m.deq_layer.cell.head.conv.weight.grad.clone()
        assert torch.isfinite(grads[mode]).all() and grads[mode].abs().sum() > 0
        assert out.stats.grad == mode and out.stats.backward.calls == (1 if mode == "ift" else 0)
    # JFB = gradient of one tracked step from the (same, deterministic) solver result
    m.zero_grad()
    with torch.no_grad():
        inj0 = m.injection(x)
        zs, _ = _solve_like_model(m, inj0, 4)
    inj = m.injection(x)
    z = m.cell(zs, inj)
    m.decode(z)[1].square().sum().backward()
    torch.testing.assert_close(grads["jfb"], m.deq_layer.cell.head.conv.weight.grad)
    assert not torch.allclose(grads["ift"], grads["jfb"])  # the implicit backward solve ran


@pytest.mark.slow  # ~15 s on an idle 2-core machine; the wiring is also checked in test_training_gradient_modes
def test_ift_gradient_matches_dense_implicit_function_theorem():
    # A contractive tiny cell (small beta), solved to machine precision in float64; the oracle is
    # dL/dtheta = g^T df/dtheta with (I - J^T) g = dL/dz*, J the dense Jacobian df/dz at z*.
    torch.manual_seed(2)  # this init converges in ~40 iterations (contraction ~0.5)
    m = LDEQ(LDEQConfig(**{**TINY, "n_keypoints": 1, "cell_softargmax_beta": 0.1, "max_iter": 200,
                           "tol": 1e-12, "extra_step": True})).double().train()
    for mod in m.modules():  # BatchNorm in eval so the backbone is a fixed function of x
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.eval()
    x = images(B=1)
    out = m(x, grad="ift", deq_kwargs=dict(b_tol=1e-12, b_max_iter=200))
    out.keypoints.square().sum().backward()
    got = m.deq_layer.cell.head.conv.weight.grad.clone()

    with torch.no_grad():
        inj = m.injection(x)
    zs = out.z_star.detach()
    with torch.no_grad():
        assert float((m.cell(zs, inj) - zs).abs().max()) < 1e-10  # converged
    f = lambda z: m.cell(z, inj)  # noqa: E731
    J = torch.autograd.functional.jacobian(f, zs, vectorize=True).reshape(zs.numel(), zs.numel())
    assert torch.linalg.eigvals(J).abs().max() < 0.9  # contractive: IFT applies
    zr = zs.clone().requires_grad_()
    dLdz, = torch.autograd.grad(m.decode(zr)[1].square().sum(), zr)
    g = torch.linalg.solve((torch.eye(zs.numel(), dtype=torch.float64) - J).T, dLdz.reshape(-1))
    bias = m.deq_layer.cell.head.conv.weight  # (the head bias is invisible: softargmax is shift-invariant)
    want, = torch.autograd.grad(f(zs), bias, g.reshape(zs.shape))
    torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-7)
    jfb, = torch.autograd.grad(f(zs), bias, dLdz)
    assert (jfb - want).abs().max() > 1e-6  # the check can tell IFT from one-step JFB


@pytest.mark.parametrize("solver", ["anderson", "broyden", "fixed_point", "fixed_point_last"])
def test_every_solver_reaches_the_fixed_point_of_a_contractive_cell(solver):
    torch.manual_seed(0)
    m = LDEQ(LDEQConfig(**{**TINY, "n_keypoints": 1, "cell_softargmax_beta": 0.02, "max_iter": 60,
                           "tol": 1e-7, "solver": solver})).double().eval()
    x = images(B=2)
    with torch.no_grad():
        inj = m.injection(x)
        out = m(x, extra_step=False)
        fz = m.cell(out.z_star, inj)
        res = (fz - out.z_star).flatten(1).norm(dim=1) / fz.flatten(1).norm(dim=1)
    assert float(res.max()) < 1e-6
    if solver == "fixed_point_last":  # the official iteration stops on the batch-mean residual
        assert float(out.stats.rel_trace[:, -1].mean()) < 1e-7
    else:  # ldeq.solvers stop each sample on its own residual
        assert bool(out.stats.converged.all())
    assert out.stats.nstep.shape == (2,) and int(out.stats.nstep.max()) <= 60


def _solve_like_model(m, inj, n):
    z = torch.zeros(inj.shape[0], m.cfg.z_width, 16, 16, dtype=inj.dtype)
    for _ in range(n):
        z = m.cell(z, inj)
    return z, None


# --- configuration and input errors ------------------------------------------------------------
@pytest.mark.parametrize("bad, field", [
    (dict(heatmap_size=40, image_size=160), "heatmap_size"),
    (dict(image_size=128), "image_size"),
    (dict(injection_width=30), "injection_width"),
    (dict(cell_gn_groups=3), "cell_gn_groups"),
    (dict(cell_norm_layer="ln"), "cell_norm_layer"),
    (dict(solver="newton"), "solver"),
    (dict(tol=-1e-3), "tol"),
    (dict(tol=float("nan")), "tol"),
    (dict(broyden_memory=-1), "broyden_memory"),
    (dict(cell_softargmax_beta=-1.0), "cell_softargmax_beta"),
])
def test_bad_config_names_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        LDEQConfig(**{**TINY, **bad})


def test_tol_zero_is_a_fixed_budget():
    """tol = 0 (the official WFLW-V test setting rel_diff_target = 0.0) runs exactly max_iter steps."""
    for solver in ("fixed_point_last", "anderson"):
        m = tiny(solver=solver, max_iter=3, tol=0.0)
        with torch.no_grad():
            out = m(images())
        assert int(out.stats.nstep.max()) == 3, solver


def test_bad_inputs_raise_clear_errors():
    m = tiny()
    with pytest.raises(ValueError, match=r"images: expected shape \(B, 3, 64, 64\)"):
        m(images(n=32))
    with pytest.raises(TypeError, match="images: expected dtype torch.float64"):
        m(images().float())
    bad = images()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="images: contains NaN"):
        m(bad)
    with pytest.raises(ValueError, match=r"z0: expected shape \(2, 5, 16, 16\)"):
        m(images(), z0=torch.zeros(2, 98, 16, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="grad"):
        m(images(), grad="backprop")
    with pytest.raises(ValueError, match="mode='unrolled'"):
        m(images(), mode="unrolled")


@pytest.mark.parametrize("solver", ["fixed_point_last", "fixed_point"])
def test_save_trajectory_returns_one_iterate_per_iteration(solver):
    m = tiny(solver=solver, max_iter=3, tol=1e-30)
    with torch.no_grad():
        out = m(images(), save_trajectory=True, extra_step=False)
        inj = m.injection(images())
    assert len(out.trajectory) == 3 and all(t.shape == (2, 5, 16, 16) for t in out.trajectory)
    if solver == "fixed_point_last":  # the official iteration keeps f^k(z0)
        torch.testing.assert_close(out.trajectory[0], m.cell(torch.zeros(2, 5, 16, 16, dtype=torch.float64), inj))
        torch.testing.assert_close(out.trajectory[-1], out.z_star)


@pytest.mark.parametrize("solver", ["fixed_point_last", "anderson"])
def test_forward_on_each_device_matches_cpu(device, solver):
    m = tiny(solver=solver)
    x = images()
    with torch.no_grad():
        ref = m(x)
        out = m.to(device)(x.to(device))
    assert out.keypoints.device.type == device.type and out.stats.nstep.device.type == device.type
    torch.testing.assert_close(out.keypoints.cpu(), ref.keypoints, atol=1e-6, rtol=0)


def test_stochastic_max_iters_only_in_training():
    m = tiny(max_iter=5, tol=1e-30, stochastic_max_iter=True)
    x = images()
    torch.manual_seed(0)
    m.train()
    budgets = {int(m(x, grad="jfb").stats.max_iter) for _ in range(6)}
    assert budgets <= set(range(1, 6)) and len(budgets) > 1
    m.eval()
    with torch.no_grad():
        assert m(x).stats.nstep.tolist() == [5, 5]
