"""The first thing to run on a machine with a GPU (`make gpu-check`): the CUDA tests and the CUDA
benchmarks, in under 8 minutes on one GPU, with a report.

    .venv/bin/python benchmarks/gpu_check.py [--out benchmarks/results/gpu_check_<gpu>.md] [--budget 470]

Steps (each with its own time limit, all inside --budget seconds):
  1. environment: GPU name and compute capability, torch and CUDA versions, whether ldeq._C has CUDA
     kernels (fails at once if not: build on the GPU machine with `make build`, or FORCE_CUDA=1);
  2. the CUDA tests: `pytest -m cuda tests` (every test parametrised over the device, run on cuda:
     kernels against the float64 reference, NaN / overflow rules, determinism of the solver
     reductions, batches past 65535, ...);
  3. benchmarks/bench_heatmap.py --device cuda (mean / median / p95 over 30 runs);
  4. benchmarks/bench_solvers.py --device cuda (ldeq.solvers against TorchDEQ);
  5. benchmarks/bench_e2e.py --device cuda (the whole model, when present).
The report (markdown) holds each step's command, exit status, duration and the end of its output;
the exit status is non-zero when any step failed or the budget ran out.
"""
import argparse
import datetime
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ENV_PROBE = r"""
import torch, ldeq._ext as e
print("torch", torch.__version__, "CUDA", torch.version.cuda)
print("cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"GPU {i}: {p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB")
print("ldeq._C loaded", e.extension_loaded(), "CUDA kernels", e.cuda_built())
print("CUDA kernels registered", sorted(n for n, d in e.KERNELS if d == "cuda"))
print("arch list compiled", torch.cuda.get_arch_list() if torch.cuda.is_available() else "n/a")
ok = torch.cuda.is_available() and e.cuda_built() and len([1 for n, d in e.KERNELS if d == "cuda"]) > 0
raise SystemExit(0 if ok else 3)
"""


def run_step(name, cmd, timeout, env=None, shown=None):
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as ex:
        out = (ex.stdout or b"").decode(errors="replace") if isinstance(ex.stdout, bytes) else (ex.stdout or "")
        rc, out = "timeout", out + f"\n[killed after {timeout} s]"
    dt = time.monotonic() - t0
    print(f"[gpu-check] {name}: rc={rc} in {dt:.0f} s", flush=True)
    return dict(name=name, cmd=shown or " ".join(cmd), rc=rc, seconds=dt, output=out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="report path (default benchmarks/results/gpu_check_<gpu>.md)")
    p.add_argument("--budget", type=float, default=470.0, help="seconds for all steps together (default 470)")
    a = p.parse_args(argv)
    py = sys.executable
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.monotonic()
    steps = []

    def left():
        return a.budget - (time.monotonic() - start)

    steps.append(run_step("environment", [py, "-c", ENV_PROBE], 120, env, shown="python -c <ENV_PROBE of gpu_check.py>"))
    plan = []
    if steps[0]["rc"] == 0:
        plan = [
            ("CUDA tests", [py, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests"], 270),
            ("heatmap benchmark", [py, "benchmarks/bench_heatmap.py", "--device", "cuda", "--runs", "30"], 60),
            ("solver benchmark", [py, "benchmarks/bench_solvers.py", "--device", "cuda", "--repeats", "3"], 70),
        ]
        if os.path.exists(os.path.join(ROOT, "benchmarks", "bench_e2e.py")):
            plan.append(("model benchmark", [py, "benchmarks/bench_e2e.py", "--device", "cuda", "--threads", "2",
                                             "--rounds", "2", "--no-profile"], 90))
    for name, cmd, limit in plan:
        budget = min(limit, left())
        if budget < 10:
            steps.append(dict(name=name, cmd=" ".join(cmd), rc="not run (budget spent)", seconds=0.0, output=""))
            continue
        steps.append(run_step(name, cmd, budget, env))

    total = time.monotonic() - start
    gpu = "unknown-gpu"
    m = re.search(r"GPU 0: ([^,]+),", steps[0]["output"])
    if m:
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", m.group(1)).strip("-").lower()
    out = a.out or os.path.join(ROOT, "benchmarks", "results", f"gpu_check_{gpu}.md")
    ok = all(s["rc"] == 0 for s in steps) and len(steps) == 1 + len(plan) and steps[0]["rc"] == 0
    lines = [f"# gpu-check report: {'PASS' if ok else 'FAIL'}", "",
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {total:.0f} s in all "
             f"(budget {a.budget:.0f} s), host {os.uname().nodename}", "",
             "| step | exit | seconds |", "|---|---|---:|"]
    lines += [f"| {s['name']} | {s['rc']} | {s['seconds']:.0f} |" for s in steps]
    if steps[0]["rc"] != 0:
        lines += ["", "ldeq._C has no CUDA kernels or no GPU is visible: build on this machine (`make build` "
                  "compiles CUDA when a GPU is visible) and run again."]
    for s in steps:
        tail = "\n".join(s["output"].strip().splitlines()[-80:])
        lines += ["", f"## {s['name']}", "", f"`{s['cmd']}`: exit {s['rc']}, {s['seconds']:.0f} s", "", "```", tail,
                  "```"]
    from ldeq._io import atomic_write_text
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    atomic_write_text(out, "\n".join(lines) + "\n")
    print(f"[gpu-check] {'PASS' if ok else 'FAIL'} in {total:.0f} s; report: {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
