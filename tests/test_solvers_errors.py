"""Bad input to ldeq.solvers: a clear error naming the argument, or a flagged finite result."""
import math

import pytest
import torch

import ldeq.solvers as S

F64 = torch.float64
SOLVERS = ["anderson", "broyden", "fixed_point"]


def contraction(z):
    return 0.5 * torch.tanh(z) + 1.0


@pytest.mark.parametrize("name", SOLVERS)
def test_unknown_option_names_the_key_and_lists_valid_ones(name):
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'tolerance'.*valid options are: .*max_iter.*tol"):
        S.get_solver(name)(contraction, torch.zeros(2, 3), tolerance=1e-3)
    with pytest.raises(TypeError, match="'LBFGS_thres', 'ls'"):
        S.get_solver(name)(contraction, torch.zeros(2, 3), ls=True, LBFGS_thres=3)


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_z0_is_rejected(name, bad):
    z0 = torch.zeros(3, 4)
    z0[1, 2] = bad
    with pytest.raises(ValueError, match=r"z0 contains NaN or Inf \(samples \[1\]\)"):
        S.get_solver(name)(contraction, z0)


@pytest.mark.parametrize("name", SOLVERS)
def test_bad_z0_type_dtype_shape(name):
    solver = S.get_solver(name)
    with pytest.raises(TypeError, match="z0 must be a torch.Tensor or a list/tuple of them"):
        solver(contraction, "z")
    with pytest.raises(TypeError, match=r"z0\[0\] must be a torch.Tensor, got list"):
        solver(contraction, [[0.0]])
    with pytest.raises(TypeError, match="z0 must have a floating dtype"):
        solver(contraction, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="z0 must be batch-first"):
        solver(contraction, torch.tensor(1.0))
    with pytest.raises(ValueError, match="z0 must be batch-first"):
        solver(contraction, torch.zeros(0, 3))


@pytest.mark.parametrize("name", SOLVERS)
def test_f_returning_wrong_shape_dtype_or_type(name):
    solver = S.get_solver(name)
    with pytest.raises(ValueError, match=r"f must return the shape of its input \(2, 3\), got \(2, 4\)"):
        solver(lambda z: torch.zeros(2, 4), torch.zeros(2, 3))
    with pytest.raises(TypeError, match="f must return the dtype of z0 \\(torch.float32\\), got torch.float64"):
        solver(lambda z: z.double(), torch.zeros(2, 3))
    with pytest.raises(TypeError, match="f must return a torch.Tensor, got tuple"):
        solver(lambda z: (z,), torch.zeros(2, 3))
    with pytest.raises(TypeError, match="f must be callable"):
        solver(3, torch.zeros(2, 3))


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("opt,value,msg", [
    ("tol", -1e-3, "tol must be a finite number >= 0"),
    ("tol", float("nan"), "tol must be a finite number >= 0"),
    ("max_iter", 0, "max_iter must be an integer >= 1"),
    ("max_iter", 2.5, "max_iter must be an integer >= 1"),
    ("stop_mode", "max", "stop_mode must be 'abs' or 'rel'"),
    ("eps", 0.0, "eps must be a number > 0"),
    ("trajectory", [0], r"trajectory entries must be iteration numbers in \[1, max_iter=50\]"),
])
def test_bad_common_options(name, opt, value, msg):
    with pytest.raises(ValueError, match=msg):
        S.get_solver(name)(contraction, torch.zeros(2, 3), **{opt: value})


@pytest.mark.parametrize("opt,value,msg", [
    ("m", 0, "m must be an integer >= 1"),
    ("m", 2.0, "m must be an integer >= 1"),
    ("lam", -1.0, r"lam must be a finite number in \[0.0, inf\]"),
    ("beta", 0.0, r"beta must be a finite number in \(0.0, 1.0\]"),
    ("beta", 1.5, r"beta must be a finite number in \(0.0, 1.0\]"),
    ("backend", "cuda", "backend must be 'auto'"),
])
def test_bad_anderson_options(opt, value, msg):
    with pytest.raises(ValueError, match=msg):
        S.anderson(contraction, torch.zeros(2, 3), **{opt: value})


def test_bad_broyden_and_damping_options():
    with pytest.raises(ValueError, match="memory must be an integer >= 1"):
        S.broyden(contraction, torch.zeros(2, 3), memory=0)
    with pytest.raises(TypeError, match="beta or tau"):
        S.fixed_point(contraction, torch.zeros(2, 3), beta=0.5, tau=0.5)
    with pytest.raises(TypeError, match="f_subset must be callable"):
        S.anderson(contraction, torch.zeros(2, 3), f_subset=1)


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("when", [0, 3])
def test_nan_from_f_is_flagged_and_the_result_stays_finite(name, when):
    """f produces NaN for sample 1 from its `when`-th call on: that sample stops with the safeguard
    flag and its last finite lowest-residual iterate; the others converge as usual."""
    calls = {"n": 0}

    def f(z):
        out = contraction(z)
        if calls["n"] >= when:
            out = out.clone()
            out[1, 0] = float("nan")
        calls["n"] += 1
        return out

    z, st = S.get_solver(name)(f, torch.zeros(3, 5, dtype=F64), max_iter=100, tol=1e-10)
    assert bool(torch.isfinite(z).all())
    assert st.safeguard.tolist() == [False, True, False]
    assert st.converged.tolist() == [True, False, True]
    assert int(st.nstep[1]) == when + 1
    if when == 0:
        assert torch.equal(z[1], torch.zeros(5, dtype=F64)) and math.isinf(float(st.rel_lowest[1]))
    else:
        assert math.isfinite(float(st.rel_lowest[1]))
    ok = torch.tensor([0, 2])
    torch.testing.assert_close(contraction(z[ok]), z[ok], rtol=0, atol=1e-9)


def test_inf_from_f_is_flagged():
    f = lambda z: torch.where(torch.arange(2)[:, None] == 0, contraction(z), torch.full_like(z, math.inf))
    z, st = S.broyden(f, torch.zeros(2, 4, dtype=F64), max_iter=50, tol=1e-10)
    assert st.safeguard.tolist() == [False, True] and bool(torch.isfinite(z).all())


def test_anderson_degenerate_history_falls_back_instead_of_nan():
    """f constant: after one step every residual is 0 and with lam=0 the bordered system is
    singular (the original DEQ Anderson returned NaN here). tol=0 keeps iterating through it."""
    c = torch.randn(2, 6, dtype=F64)
    z, st = S.anderson(lambda z: c.clone(), torch.zeros(2, 6, dtype=F64), lam=0.0, max_iter=8, tol=0)
    assert bool(torch.isfinite(z).all()) and bool(torch.isfinite(st.abs_trace).all())
    torch.testing.assert_close(z, c, rtol=0, atol=0)
    assert st.safeguard.all()  # the regularised fallback fired and is reported


def test_broyden_degenerate_update_is_skipped_and_flagged():
    """f(z) = z + c with a direction where dg = 0 makes <v, dg> = 0: the update is dropped."""
    c = torch.ones(1, 3, dtype=F64)
    z, st = S.broyden(lambda z: z + c, torch.zeros(1, 3, dtype=F64), max_iter=4, tol=0)
    assert bool(torch.isfinite(z).all()) and bool(st.safeguard.all())
