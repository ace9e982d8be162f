"""The fused solver kernels against their pure-PyTorch references (solvers/_reference.py), and the
references themselves against hand-derived quantities (Gram rows, bordered-system optimality,
Broyden's secant condition)."""
import pytest
import torch

from ldeq.solvers import _kernels as K
from ldeq.solvers import _reference as ref

F64 = torch.float64


def _tol(dtype):
    return {F64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]


def _hist(m, B, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, B, d, generator=g, dtype=F64).to(dtype).to(device)


@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("slot,n", [(0, 1), (2, 3), (1, 4)])
def test_anderson_update_matches_reference(device, dtype, slot, n):
    m, B, d = 4, 3, 33001  # d > one CPU chunk (32768), not a multiple of the block size
    X, G = _hist(m, B, d, dtype, device, 1), _hist(m, B, d, dtype, device, 2)
    fz = _hist(1, B, d, dtype, device, 3)[0]
    H = torch.randn(B, m, m, dtype=F64, device=device)
    active = torch.tensor([True, False, True], device=device)
    F = _hist(m, B, d, dtype, device, 4)
    outs = []
    for use_ref in (False, True):
        Gc, Fc, Hc = G.clone(), F.clone(), H.clone()
        r = K.anderson_update(X, Gc, Fc, fz, Hc, slot, n, active, use_reference=use_ref)
        outs.append((Gc, Fc, Hc) + tuple(r))
    (Gk, Fk, Hk, rk, fk), (Gr, Fr, Hr, rr, fr) = outs
    torch.testing.assert_close(Gk, Gr, rtol=0, atol=0)  # g = fz - x, rounded the same way
    assert torch.equal(Fk, Fr) and torch.equal(Fk[slot, 0], fz[0]) and torch.equal(Fk[:, 1], F[:, 1])
    assert torch.equal(Fk[[s for s in range(m) if s != slot]], F[[s for s in range(m) if s != slot]])
    torch.testing.assert_close(Hk, Hr, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(rk, rr, rtol=1e-10, atol=0)
    torch.testing.assert_close(fk, fr, rtol=1e-10, atol=0)
    # inactive sample untouched; the Gram row is the hand-computed dot product
    assert torch.equal(Gk[:, 1], G[:, 1]) and torch.equal(Hk[1], H[1])
    g = (fz[0].double() - X[slot, 0].double()).to(dtype).double()
    for i in range(n):
        gi = g if i == slot else G[i, 0].double()
        assert abs(float(Hk[0, slot, i]) - float(g @ gi)) <= 1e-9 * (1 + abs(float(g @ gi)))
        assert float(Hk[0, i, slot]) == float(Hk[0, slot, i])


@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("slot,n", [(0, 1), (2, 3), (1, 4)])
def test_anderson_update_cross_gram_matches_reference(device, dtype, slot, n):
    """Type-I Anderson's cross Gram row and column C[slot, i] = <x, G_i>, C[i, slot] = <X_i, g>,
    computed in the same pass as the Gram row, against the reference and a float64 hand formula."""
    m, B, d = 4, 3, 33001
    X, G, F = _hist(m, B, d, dtype, device, 1), _hist(m, B, d, dtype, device, 2), _hist(m, B, d, dtype, device, 4)
    fz = _hist(1, B, d, dtype, device, 3)[0]
    H = torch.randn(B, m, m, dtype=F64, device=device)
    C = torch.randn(B, m, m, dtype=F64, device=device)
    active = torch.tensor([True, False, True], device=device)
    outs = []
    for use_ref in (False, True):
        Gc, Fc, Hc, Cc, Hp = G.clone(), F.clone(), H.clone(), C.clone(), H.clone()
        r = K.anderson_update(X, Gc, Fc, fz, Hc, slot, n, active, C=Cc, use_reference=use_ref)
        K.anderson_update(X, G.clone(), F.clone(), fz, Hp, slot, n, active, use_reference=use_ref)
        assert torch.equal(Hc, Hp)  # the Gram row does not depend on computing C too
        outs.append((Gc, Fc, Hc, Cc) + tuple(r))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-9)
    Ck, Gk = outs[0][3], outs[0][0]
    assert torch.equal(Ck[1], C[1])  # inactive sample untouched
    others = [i for i in range(m) if i >= n]
    assert torch.equal(Ck[:, others][:, :, others], C[:, others][:, :, others])
    x, g = X[slot, 0].double(), Gk[slot, 0].double()
    for i in range(n):
        want_row, want_col = float(x @ Gk[i, 0].double()), float(X[i, 0].double() @ g)
        assert abs(float(Ck[0, slot, i]) - want_row) <= 1e-9 * (1 + abs(want_row))
        assert abs(float(Ck[0, i, slot]) - want_col) <= 1e-9 * (1 + abs(want_col))


@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("slot,n,beta", [(1, 1, 1.0), (3, 3, 0.7), (0, 4, 0.3)])
def test_anderson_mix_matches_reference_in_place(device, dtype, slot, n, beta):
    m, B, d = 4, 3, 33001
    X, G, F = _hist(m, B, d, dtype, device, 4), _hist(m, B, d, dtype, device, 5), _hist(m, B, d, dtype, device, 6)
    alpha = torch.randn(B, n, dtype=F64, device=device)
    active = torch.tensor([True, True, False], device=device)
    # sample 0's lowest iterate lives in the slot being overwritten, sample 1's elsewhere; sample 2's
    # lives there too but it is inactive: its slot is not overwritten, so it must stay in place
    best_key = torch.tensor([slot, (slot + 1) % m, slot], device=device)
    zb0 = _hist(1, B, d, dtype, device, 7)[0]
    Xk, Xr, zk, zr = X.clone(), X.clone(), zb0.clone(), zb0.clone()
    K.anderson_mix(Xk, F, G, alpha, beta, slot, n, active, zk, best_key)
    K.anderson_mix(Xr, F, G, alpha, beta, slot, n, active, zr, best_key, use_reference=True)
    torch.testing.assert_close(Xk.double(), Xr.double(), rtol=_tol(dtype), atol=_tol(dtype))
    # hand formula in float64 from the original history (slot may be one of the mixed slots)
    want = sum(alpha[0, i] * (F[i, 0].double() - (1 - beta) * G[i, 0].double()) for i in range(n))
    torch.testing.assert_close(Xk[slot, 0].double(), want, rtol=4 * _tol(dtype), atol=4 * _tol(dtype))
    assert torch.equal(Xk[:, 2], X[:, 2])  # inactive sample untouched
    others = [s for s in range(m) if s != slot]
    assert torch.equal(Xk[others], X[others])
    # the evicted lowest iterate is the old X[slot] of sample 0, bit for bit; nothing else moved
    for z in (zk, zr):
        assert torch.equal(z[0], X[slot, 0]) and torch.equal(z[1:], zb0[1:])


def _random_gram(B, n, rank=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    R = torch.randn(B, rank or n, 50, generator=g, dtype=F64)
    if rank is not None and rank < n:
        R = torch.cat([R, R[:, :1].expand(B, n - rank, 50)], 1)
    H = torch.zeros(B, 6, 6, dtype=F64)
    H[:, :n, :n] = R @ R.transpose(1, 2)
    return H, R


@pytest.mark.parametrize("lam", [1e-4, 0.0])
def test_bordered_solve_is_the_constrained_least_squares_optimum(lam):
    """alpha minimises ||R^T alpha||^2 + lam ||alpha||^2 subject to sum(alpha) = 1: closed form
    alpha = M^-1 1 / (1^T M^-1 1) with M = H + lam I."""
    n = 5
    H, R = _random_gram(4, n)
    alpha, fb = ref.bordered_solve(H, n, lam, newest=n - 1)
    M = H[:, :n, :n] + lam * torch.eye(n, dtype=F64)
    w = torch.linalg.solve(M, torch.ones(4, n, 1, dtype=F64))[..., 0]
    torch.testing.assert_close(alpha, w / w.sum(1, keepdim=True), rtol=1e-9, atol=1e-12)
    assert not fb.any()


@pytest.mark.parametrize("case", ["regular", "singular", "zero", "nan", "tiny_scale", "n1"])
def test_anderson_solve_kernel_matches_reference_and_never_nans(device, case):
    n, lam = 4, 1e-4
    if case == "regular":
        H, _ = _random_gram(5, n)
    elif case == "singular":  # duplicate residuals with lam = 0: the original DEQ crash
        H, _ = _random_gram(5, n, rank=2)
        lam = 0.0
    elif case == "zero":
        H, lam = torch.zeros(5, 6, 6, dtype=F64), 0.0
    elif case == "nan":
        H, _ = _random_gram(5, n)
        H[1, 0, 2] = float("nan")
        H[3, 1, 1] = float("inf")
    elif case == "tiny_scale":  # residuals ~1e-9: scaling must not trigger a fallback
        H, _ = _random_gram(5, n)
        H, lam = H * 1e-18, 0.0
    else:
        H, _ = _random_gram(5, 1)
        n = 1
    H = H.to(device)
    ak, fk = K.anderson_solve(H, n, lam, n - 1)
    ar, fr = K.anderson_solve(H, n, lam, n - 1, use_reference=True)
    assert bool(torch.isfinite(ak).all())
    torch.testing.assert_close(ak, ar, rtol=1e-9, atol=1e-9)
    assert torch.equal(fk, fr)
    torch.testing.assert_close(ak.sum(1), torch.ones(5, dtype=F64, device=device), rtol=0, atol=1e-9)
    if case in ("regular", "tiny_scale", "n1"):
        assert not fk.any()
    if case == "n1":
        assert torch.equal(ak, torch.ones_like(ak))
    if case in ("singular", "zero"):
        assert fk.all()
    if case == "nan":
        assert fk[[1, 3]].all() and not fk[[0, 2, 4]].any()
        e = torch.zeros(n, dtype=F64, device=device)
        e[n - 1] = 1
        assert torch.equal(ak[1], e) and torch.equal(ak[3], e)  # plain step from the newest iterate
    if case == "singular":
        # still (near) optimal: the rows are [r0, r1, r0, r0], so the best reachable residual is
        # the constrained optimum over the two distinct rows, min_t ||t r0 + (1 - t) r1||.
        _, R = _random_gram(5, n, rank=2)
        r0, r1 = R[:, 0], R[:, 1]
        diff = r0 - r1
        t = -((r1 * diff).sum(1) / (diff * diff).sum(1))
        best = torch.linalg.vector_norm(t[:, None] * r0 + (1 - t[:, None]) * r1, dim=1)
        ours = torch.linalg.vector_norm((ak.cpu()[:, :, None] * R).sum(1), dim=1)
        assert bool((ours <= best * (1 + 1e-3) + 1e-9).all()), (ours, best)


@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [0, 1, 3])
def test_broyden_pass1_matches_reference(device, dtype, n):
    L, B, d = 3, 3, 33001
    U, V = _hist(L, B, d, dtype, device, 6), _hist(L, B, d, dtype, device, 7)
    dx, fz, z, go = _hist(4, B, d, dtype, device, 8).unbind(0)
    dx, fz, z, go = dx.contiguous(), fz.contiguous(), z.contiguous(), go.contiguous()
    active = torch.tensor([True, False, True], device=device)
    gk, gr = torch.zeros_like(z), torch.zeros_like(z)
    dk = K.broyden_pass1(V, dx, fz, z, gk, n, active)
    dr = K.broyden_pass1(V, dx, fz, z, gr, n, active, use_reference=True)
    assert dk.shape == (B, n + 3)
    torch.testing.assert_close(gk, gr, rtol=0, atol=0)
    torch.testing.assert_close(dk, dr, rtol=1e-9, atol=1e-8)
    assert not dk[1].any() and not gk[1].any()  # inactive sample untouched
    # float64 oracle for sample 0: [<v_i, g> | <dx, g>, ||g||^2, ||fz||^2], g = fz - z as stored
    g, f0 = gk[0].double().cpu(), fz[0].double().cpu()
    want = [V[i, 0].double().cpu() @ g for i in range(n)] + [dx[0].double().cpu() @ g, g @ g, f0 @ f0]
    for got, w in zip(dk[0].cpu().tolist(), want):
        assert abs(got - float(w)) <= 1e-12 * max(1.0, abs(float(w))) + 1e-9, (got, float(w))


@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("slot,n", [(0, 0), (1, 1), (3, 3), (1, 4)])
@pytest.mark.parametrize("with_v", [True, False])
def test_broyden_pass2_matches_reference_in_place(device, dtype, slot, n, with_v):
    L, B, d = 4, 3, 33001
    U, V = _hist(L, B, d, dtype, device, 9), _hist(L, B, d, dtype, device, 10)
    dx, z, gn, go = [t.contiguous() for t in _hist(4, B, d, dtype, device, 11).unbind(0)]
    dxn0 = _hist(1, B, d, dtype, device, 13)[0]
    coef = torch.randn(B, 3 * n + 1, dtype=F64, device=device)
    active = torch.tensor([True, True, False], device=device)
    # sample 0's lowest iterate lives in z_next (key 1), sample 1's elsewhere, inactive sample 2's in z_next
    best_key = torch.tensor([1, 0, 1], device=device)
    zn0 = _hist(1, B, d, dtype, device, 12)[0]
    outs = []
    for use_ref in (False, True):
        Uc, Vc, dxc, zn, zb = U.clone(), V.clone(), dxn0.clone(), zn0.clone(), torch.zeros_like(z)
        udx = K.broyden_pass2(Uc, Vc if with_v else None, dx, dxc, z, zn, gn, go, coef, slot, n, active, zb,
                              best_key, 1, use_reference=use_ref)
        outs.append((Uc, Vc, dxc, zn, zb, udx))
    for a, b in zip(outs[0][:4], outs[1][:4]):
        torch.testing.assert_close(a.double(), b.double(), rtol=_tol(dtype), atol=_tol(dtype) * 10)
    Uk, Vk, dxk, znk, zbk, udxk = outs[0]
    assert torch.equal(Uk[:, 2], U[:, 2]) and torch.equal(dxk[2], dxn0[2]) and torch.equal(znk[2], zn0[2])
    if not with_v:  # V is neither read nor written, and its dot is 0
        assert torch.equal(Vk, V) and torch.equal(outs[1][1], V)
        assert not udxk[:, min(n + 1, L)].any()
    # the lowest iterate leaves z_next bit for bit, only for the active sample that kept it there
    for zb in (zbk, outs[1][4]):
        assert torch.equal(zb[0], zn0[0]) and not zb[1:].any()
    # [<u_i, dx> over the columns in use afterwards | <V[slot], g_new> | <dx, g_new>], from the
    # written U, V and dx (float64 oracle)
    n_next = min(n + 1, L)
    assert udxk.shape == (B, n_next + 2) and not udxk[2].any()
    for Uo, Vo, dxo, udx in ((Uk, Vk, dxk, udxk), (outs[1][0], outs[1][1], outs[1][2], outs[1][5])):
        vrow = Vo[slot:slot + 1, :2] if with_v else torch.zeros_like(Vo[slot:slot + 1, :2])
        rows = torch.cat([Uo[:n_next, :2], vrow, dxo[None, :2]]).double()
        wts = torch.stack([dxo[:2]] * n_next + [gn[:2], gn[:2]]).double()
        prods = rows * wts
        # f64 sums of the same products in another order: |error| <= d eps64 sum |terms|
        bound = d * 2.3e-16 * prods.abs().sum(-1).t()
        assert bool(((udx[:2] - prods.sum(-1).t()).abs() <= bound).all())
    # hand formulas for sample 0 in float64
    c = coef[0].cpu()
    a_, sb, sc, kn = c[:n], c[n:2 * n], c[2 * n:3 * n], float(c[3 * n])
    U0, V0 = U[:n, 0].double().cpu(), V[:n, 0].double().cpu()
    x0, g0, o0 = dx[0].double().cpu(), gn[0].double().cpu(), go[0].double().cpu()
    v = -x0 + (a_[:, None] * V0).sum(0)
    u = x0 + g0 - o0 - (sb[:, None] * U0).sum(0)
    upd = g0 - (sc[:, None] * U0).sum(0) - kn * u
    t = 50 * _tol(dtype) * (1 + n)
    if with_v:
        torch.testing.assert_close(Vk[slot, 0].double().cpu(), v, rtol=t, atol=t)
    torch.testing.assert_close(Uk[slot, 0].double().cpu(), u, rtol=t, atol=t)
    torch.testing.assert_close(dxk[0].double().cpu(), upd, rtol=t, atol=t * 10)


def test_broyden_update_satisfies_the_secant_condition():
    """After the update, the inverse-Jacobian model maps dg to dz exactly: J_new^-1 dg = dz
    (the defining property of Broyden's 'good' update), for the first two updates."""
    g = torch.Generator().manual_seed(5)
    d = 8
    A = 0.5 * torch.randn(d, d, generator=g, dtype=F64) / d ** 0.5
    b = torch.randn(1, d, generator=g, dtype=F64)
    f = lambda z: torch.tanh(z @ A.T + b)
    # Re-run the algorithm by hand with the reference kernels, checking J^-1 after each update.
    L = 4
    U, V = torch.zeros(L, 1, d, dtype=F64), torch.zeros(L, 1, d, dtype=F64)
    S = torch.zeros(L, 1, dtype=F64)
    act = torch.ones(1, dtype=torch.bool)
    z = torch.zeros(1, d, dtype=F64)
    g_old = f(z) - z
    dx = g_old.clone()
    z = z + dx
    n = 0
    udx = torch.zeros(1, 0, dtype=F64)
    zb, key = torch.zeros_like(z), torch.full((1,), -1)
    vg_old, dxg_old = torch.zeros(1, L, dtype=F64), (dx * g_old).sum(1)
    for k in range(2):
        fz = f(z)
        g_new = torch.empty_like(z)
        dots = ref.broyden_pass1(V, dx, fz, z, g_new, n, act)
        s_old = S[:n].t()
        c = dots[:, :n]
        a, bb = s_old * udx, c - vg_old[:, :n]
        vdg = -(dots[:, n] - dxg_old) + (a * bb).sum(1)
        vg = -dots[:, n] + (a * c).sum(1)
        s_new = 1 / vdg
        coef = torch.cat([a, s_old * bb, s_old * c, (s_new * vg)[:, None]], 1)
        dz, dg = dx.clone(), g_new - g_old
        z_next, dx_next = torch.empty_like(z), torch.empty_like(z)
        out = ref.broyden_pass2(U, V, dx, dx_next, z, z_next, g_new, g_old, coef, n, n, act, zb, key, 0)
        dx = dx_next
        udx = out[:, :n + 1]
        vg_old[:, :n] = c
        vg_old[:, n], dxg_old = out[:, n + 1], out[:, n + 2]
        S[n] = s_new
        n += 1
        Jinv = -torch.eye(d, dtype=F64) + sum(S[i, 0] * torch.outer(U[i, 0], V[i, 0]) for i in range(n))
        torch.testing.assert_close(Jinv @ dg[0], dz[0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(dx[0], -(Jinv @ g_new[0]), rtol=1e-10, atol=1e-12)  # next step
        g_old, z = g_new, z_next


def test_broyden_pass2_rejects_bad_buffers():
    """dx_next must not be dx itself (the pass reads dx while it writes dx_next), and V, when
    given, must have U's shape: errors name the argument."""
    L, B, d = 3, 2, 50
    U, V = _hist(L, B, d, torch.float32, "cpu", 1), _hist(L, B, d, torch.float32, "cpu", 2)
    dx, z, gn, go = [t.contiguous() for t in _hist(4, B, d, torch.float32, "cpu", 3).unbind(0)]
    coef = torch.zeros(B, 4, dtype=F64)
    act = torch.ones(B, dtype=torch.bool)
    args = lambda Vx, dxn: (U, Vx, dx, dxn, z, torch.empty_like(z), gn, go, coef, 1, 1, act,  # noqa: E731
                            torch.empty_like(z), torch.full((B,), -1), 0)
    with pytest.raises(RuntimeError, match="dx_next must be a different buffer from dx"):
        torch.ops.ldeq.broyden_pass2(*args(V, dx))
    with pytest.raises(RuntimeError, match="U and V must have the same shape"):
        torch.ops.ldeq.broyden_pass2(*args(V[:2].contiguous(), torch.empty_like(dx)))


def test_op_schemas_and_fake_kernels_pass_opcheck():
    """Schema mutation annotations, fake (meta) kernels and dispatch, checked by torch's opcheck."""
    B, d, m = 2, 300, 3
    X, G = _hist(m, B, d, torch.float32, "cpu", 1), _hist(m, B, d, torch.float32, "cpu", 2)
    fz = _hist(1, B, d, torch.float32, "cpu", 3)[0]
    H = torch.zeros(B, m, m, dtype=F64)
    act = torch.tensor([True, False])
    tests = ("test_schema", "test_faketensor")
    for C in (None, torch.zeros(B, m, m, dtype=F64)):
        torch.library.opcheck(torch.ops.ldeq.anderson_update.default, (X, G.clone(), G.clone(), fz, H, C, 1, 2, act),
                              test_utils=tests)
    torch.library.opcheck(torch.ops.ldeq.anderson_solve.default, (H + torch.eye(m, dtype=F64), 2, 1e-4, 1),
                          test_utils=tests)
    alpha = torch.full((B, 2), 0.5, dtype=F64)
    torch.library.opcheck(torch.ops.ldeq.anderson_mix.default,
                          (X, G.clone(), G, alpha, 1.0, 2, 2, act, fz.clone(), torch.tensor([2, 0])),
                          test_utils=tests)
    U, V = _hist(m, B, d, torch.float32, "cpu", 4), _hist(m, B, d, torch.float32, "cpu", 5)
    dx, z, go, gn = [t.contiguous() for t in _hist(4, B, d, torch.float32, "cpu", 6).unbind(0)]
    torch.library.opcheck(torch.ops.ldeq.broyden_pass1.default, (V, dx, fz, z, gn, 2, act),
                          test_utils=tests)
    coef = torch.randn(B, 7, dtype=F64)
    for Vopt in (V, None):
        torch.library.opcheck(torch.ops.ldeq.broyden_pass2.default,
                              (U, Vopt, dx, torch.zeros_like(dx), z, torch.zeros_like(z), gn, go, coef, 2, 2, act,
                               torch.zeros_like(z), torch.tensor([1, 0]), 1), test_utils=tests)


def test_reductions_are_run_to_run_deterministic(device):
    """Fixed-order reductions (per-block partials added in block order on CUDA, chunk-ordered partials
    on CPU): the same inputs give the same bits, also under torch.use_deterministic_algorithms."""
    m, B, d, n = 4, 3, 200003, 3  # many blocks / chunks per sample
    X, G, fz = _hist(m, B, d, F64, device, 1), _hist(m, B, d, F64, device, 2), _hist(1, B, d, F64, device, 3)[0]
    U, V = _hist(m, B, d, torch.float32, device, 4), _hist(m, B, d, torch.float32, device, 5)
    dx, fz32, z, go = [t.contiguous() for t in _hist(4, B, d, torch.float32, device, 6).unbind(0)]
    active = torch.ones(B, dtype=torch.bool, device=device)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(3):
            Gc, H = G.clone(), torch.zeros(B, m, m, dtype=F64, device=device)
            C = torch.zeros(B, m, m, dtype=F64, device=device)
            r = K.anderson_update(X, Gc, X.clone(), fz, H, 2, n, active, C=C)
            dots = K.broyden_pass1(V, dx, fz32, z, torch.empty_like(z), n, active)
            udx = K.broyden_pass2(U.clone(), V.clone(), dx, torch.empty_like(dx), z, torch.empty_like(z), go, z,
                                  torch.ones(B, 3 * n + 1, dtype=F64, device=device), 1, n, active,
                                  torch.empty_like(z), torch.full((B,), -1, device=device), 0)
            runs.append((H, C, *r, dots, udx))
    finally:
        torch.use_deterministic_algorithms(prev)
    for later in runs[1:]:
        for a, b in zip(runs[0], later):
            assert torch.equal(a, b)


def test_batch_beyond_the_grid_y_limit(device):
    """B > 65535 (the old gridDim.y bound of the CUDA kernels) against the reference."""
    m, B, d, n, slot = 2, 70001, 5, 2, 1
    X, G, fz = _hist(m, B, d, F64, device, 1), _hist(m, B, d, F64, device, 2), _hist(1, B, d, F64, device, 3)[0]
    active = torch.ones(B, dtype=torch.bool, device=device)
    active[B // 2] = False
    outs = []
    for use_ref in (False, True):
        Gc, Fc, H = G.clone(), X.clone(), torch.zeros(B, m, m, dtype=F64, device=device)
        r = K.anderson_update(X, Gc, Fc, fz, H, slot, n, active, use_reference=use_ref)
        Xc, zb = X.clone(), torch.zeros_like(fz)
        K.anderson_mix(Xc, Fc, Gc, torch.full((B, n), 0.5, dtype=F64, device=device), 0.7, slot, n, active, zb,
                       torch.full((B,), slot, device=device), use_reference=use_ref)
        U, V = X.clone(), G.clone()
        dots = K.broyden_pass1(V, X[0], fz, X[1], torch.zeros_like(fz), n, active, use_reference=use_ref)
        zn, dxc = torch.zeros_like(fz), torch.zeros_like(fz)
        udx = K.broyden_pass2(U, V, X[0], dxc, X[1], zn, fz, G[0], torch.ones(B, 3 * n + 1, dtype=F64, device=device), slot,
                              n, active, zb.clone(), torch.full((B,), -1, device=device), 0, use_reference=use_ref)
        outs.append((Gc, Fc, H, *r, Xc, zb, dots, U, V, dxc, zn, udx))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert outs[0][2][B - 1].abs().sum() > 0  # the last sample was reached
