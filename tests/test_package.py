"""Package-level contracts: ldeq.solvers stays model-agnostic, the extension reports itself, the CLI dispatches."""
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LANDMARK_MODULES = ("ldeq.model", "ldeq.data", "ldeq.video", "ldeq.train", "ldeq.evaluate", "ldeq.metrics")


def test_importing_solvers_does_not_import_landmark_code():
    code = ("import sys, ldeq.solvers; "
            f"bad = [m for m in sys.modules if m.startswith({LANDMARK_MODULES!r})]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"ldeq.solvers pulled in landmark modules: {r.stdout} {r.stderr}"


def test_solvers_source_never_names_landmark_modules():
    pattern = re.compile(r"^\s*(from|import)\s+(ldeq\.(model|data|video|train|evaluate|metrics)|\.\.(model|data))",
                         re.M)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "solvers").rglob("*.py") if pattern.search(p.read_text())]
    assert not offenders, f"solvers/ must stay model-agnostic, but these import landmark code: {offenders}"


def test_extension_built_and_registers_ops():
    from ldeq import _ext
    assert _ext.extension_loaded(), "ldeq._C did not import: run `make build`"
    for op in ("heatmap_softargmax", "heatmap_softargmax_backward", "heatmap_decode", "heatmap_decode_backward"):
        assert _ext.has_kernel(op, "cpu"), f"no CPU kernel registered for ldeq::{op}"
    assert isinstance(_ext.cuda_built(), bool)


def test_cpu_kernels_run_on_several_threads():
    # at::parallel_for is inline OpenMP: an extension built without -fopenmp silently runs every CPU
    # kernel on one thread (it did until 2026-11-22). Counted thread ids, not timed.
    import torch
    from ldeq import _C
    # No skip on a one-CPU machine: OpenMP still starts the 2 threads asked for.
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        used = _C.parallel_threads_used(64)
    finally:
        torch.set_num_threads(before)
    assert used == 2, f"at::parallel_for inside ldeq._C used {used} thread(s) with torch.set_num_threads(2)"


def test_cli_help_and_unknown_command(capsys):
    from ldeq.cli import main
    assert main(["--help"]) == 0
    assert "train" in capsys.readouterr().out
    assert main(["no-such-command"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'no-such-command'" in err and "eval" in err


@pytest.mark.parametrize("name", ["train", "eval", "video", "predict", "export", "data", "demo"])
def test_cli_subcommands_import(name):
    import importlib
    from ldeq.cli import COMMANDS
    module = importlib.import_module(COMMANDS[name][0])
    assert callable(getattr(module, "main", None)), f"{COMMANDS[name][0]} has no main(argv)"


def test_python_dash_m_ldeq_works_like_the_ldeq_script(tmp_path):
    # `python -m ldeq` (ldeq/__main__.py) and the `ldeq` console script share ldeq.cli.main:
    # same usage text, same exit codes, from a directory outside the checkout.
    import shutil
    r = subprocess.run([sys.executable, "-m", "ldeq", "--help"], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 0 and "usage: ldeq COMMAND" in r.stdout, r.stderr
    bad = subprocess.run([sys.executable, "-m", "ldeq", "no-such-command"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert bad.returncode == 2 and "unknown command 'no-such-command'" in bad.stderr
    sub = subprocess.run([sys.executable, "-m", "ldeq", "eval", "--help"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert sub.returncode == 0 and sub.stdout.startswith("usage:"), sub.stderr
    script = shutil.which("ldeq", path=str(pathlib.Path(sys.executable).parent))
    assert script, "the `ldeq` console script is not installed beside this Python"
    s = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert s.returncode == 0 and s.stdout == r.stdout
