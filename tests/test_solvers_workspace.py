"""The CPU workspace that reuses solver history buffers across calls (solvers/workspace.py)."""
import subprocess
import sys

import pytest
import torch

import ldeq.solvers as S
from ldeq.solvers import workspace as W


@pytest.fixture(autouse=True)
def fresh_workspace():
    limit = W.workspace_limit()
    S.empty_workspace()
    S.set_workspace_limit(64)
    yield
    S.set_workspace_limit(limit / 2 ** 20)
    S.empty_workspace()


def _problem(B=3, d=2000, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(B, d, generator=g) * 0.5
    return (lambda z: torch.tanh(0.6 * z + A)), torch.zeros(B, d)


def _entries():
    return [(e.buf.data_ptr(), e.free()) for e in W._WS.entries]


@pytest.mark.parametrize("solver", ["anderson", "broyden"])
def test_buffers_are_reused_and_results_do_not_change(solver):
    f, z0 = _problem()
    run = lambda: S.get_solver(solver)(f, z0, max_iter=12, tol=0)
    z1, _ = run()
    first = _entries()
    assert first and all(free for _, free in first)  # held by the workspace only, after the solve
    z2, _ = run()
    assert _entries() == first  # the same buffers, no new ones
    S.set_workspace_limit(0)
    assert S.workspace_bytes() == 0
    z3, _ = run()
    assert S.workspace_bytes() == 0  # limit 0: nothing kept
    assert torch.equal(z1, z2) and torch.equal(z1, z3)


def test_a_buffer_still_viewed_is_never_handed_out_again():
    """f keeps a view of its input (a solver buffer): the next solve must not write into it."""
    kept = []
    f0, z0 = _problem()

    def f(z):
        kept.append(z)
        return f0(z)
    S.anderson(f, z0, max_iter=6, tol=0)
    snapshot = [k.clone() for k in kept]
    assert not all(free for _, free in _entries())
    g, _ = _problem(seed=1)
    S.anderson(g, z0 + 1.0, max_iter=6, tol=0)
    for k, s in zip(kept, snapshot):
        assert torch.equal(k, s)


def test_limit_keeps_the_workspace_small():
    f, z0 = _problem(B=4, d=100_000)  # Anderson's rings: 3 x 6 x 4 x 1e5 x 4 B = 27.5 MiB
    S.set_workspace_limit(10)
    S.anderson(f, z0, max_iter=3, tol=0)
    assert S.workspace_bytes() <= 10 * 2 ** 20
    S.set_workspace_limit(30)
    S.anderson(f, z0, max_iter=3, tol=0)
    assert 0 < S.workspace_bytes() <= 30 * 2 ** 20


def test_bad_limits_name_the_setting():
    with pytest.raises(ValueError, match="megabytes must be a number >= 0"):
        S.set_workspace_limit(-1)
    code = "import ldeq.solvers as S, torch; S.anderson(lambda z: z * 0.5, torch.ones(2, 3), max_iter=2)"
    out = subprocess.run([sys.executable, "-c", code], env={"LDEQ_SOLVER_WORKSPACE_MB": "lots", "PATH": ""},
                         capture_output=True, text=True)
    assert out.returncode != 0 and "LDEQ_SOLVER_WORKSPACE_MB must be a number" in out.stderr
