"""Shared fixtures and the suite's skip policy.

CUDA cases are parametrised through ``device`` (or marked ``@pytest.mark.cuda``) and skipped when
no CUDA device is present; no CUDA call happens at import time.

No silent shrinking: the only skip allowed is the absent-CUDA one (reason ``NO_CUDA_REASON``).
Any other skip (``pytest.skip``, ``skipif``, ``importorskip``, a module-level skip) is turned into
a failure that names its reason, and the terminal summary says how many tests were skipped for an
absent CUDA device. A missing test dependency, fixture or broken import is therefore a failure.
"""
import pytest
import torch

torch.set_num_threads(2)

NO_CUDA_REASON = "no CUDA device"

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

_cuda_skips = []


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_CUDA_REASON)
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def _skip_reason(longrepr) -> str:
    """The reason text of a skip report (pytest stores (path, line, 'Skipped: reason'))."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        msg = str(longrepr[2])
    else:
        msg = str(longrepr)
    return msg[len("Skipped: "):] if msg.startswith("Skipped: ") else msg


def _forbidden(reason: str) -> str:
    return (f"skip not allowed: {reason!r}. The only permitted skip is {NO_CUDA_REASON!r} "
            f"(tests/conftest.py); a missing dependency, fixture or build must fail, not skip.")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.skipped or hasattr(rep, "wasxfail"):
        if hasattr(rep, "wasxfail"):  # an xfail is a hidden skip too
            rep.outcome = "failed"
            rep.longrepr = f"xfail not allowed: {rep.wasxfail!r} (tests/conftest.py)"
        return
    reason = _skip_reason(rep.longrepr)
    if reason == NO_CUDA_REASON and "cuda" in item.keywords and not torch.cuda.is_available():
        _cuda_skips.append(item.nodeid)
        return
    rep.outcome = "failed"
    rep.longrepr = _forbidden(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped:  # a module-level skip / importorskip would drop a whole file silently
        rep.outcome = "failed"
        rep.longrepr = _forbidden(_skip_reason(rep.longrepr))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if torch.cuda.is_available():
        terminalreporter.write_line("ldeq: CUDA device present; no test skipped for an absent device.")
    else:
        terminalreporter.write_line(
            f"ldeq: {len(_cuda_skips)} tests skipped for an absent CUDA device (the only skip allowed).")


@pytest.fixture(params=DEVICES)
def device(request):
    """Each device test runs on 'cpu' and, where a GPU is present, on 'cuda'."""
    return torch.device(request.param)
