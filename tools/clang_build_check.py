"""Compile every C++ source of ldeq._C with Clang (zig's `zig c++`, from the `ziglang` package), as
a CI build check for a second compiler; optionally cross-compile for aarch64 to check that the
portable path builds where the x86 vector paths do not exist.

    pip install ziglang            # a Clang-based C++ compiler in a wheel (no system Clang needed)
    .venv/bin/python tools/clang_build_check.py [--target x86_64-linux-gnu aarch64-linux-gnu]

This is a compile-only check (-c, every csrc/**/*.cpp against the installed torch's headers):
zig links against its own libc++, while torch's libraries use libstdc++, so a full extension
link with zig is not possible; the GCC build (`make build`) is the one that links and runs.
The CUDA sources (.cu) need nvcc and are not compiled here (FORCE_CUDA=1 make build does).
Exit status 0 when every source compiles for every target.
"""
import argparse
import glob
import os
import subprocess
import sys
import sysconfig
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sources():
    found = sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")))
    found += sorted(glob.glob(os.path.join(ROOT, "csrc", "common", "*.cpp")))
    found += sorted(glob.glob(os.path.join(ROOT, "csrc", "*", "*_cpu.cpp")))
    return found


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", nargs="+", default=["x86_64-linux-gnu"],
                   help="zig targets (x86_64-linux-gnu: the AVX2/AVX-512 entry points; aarch64-linux-gnu: portable only)")
    p.add_argument("--out-dir", default=None, help="object files go here (default: a temporary folder)")
    a = p.parse_args(argv)
    import importlib.util
    if importlib.util.find_spec("ziglang") is None:
        print("clang_build_check: the `ziglang` package is missing: pip install ziglang", file=sys.stderr)
        return 2
    import tempfile

    import torch.utils.cpp_extension as ce
    includes = [os.path.join(ROOT, "csrc"), *ce.include_paths(), sysconfig.get_paths()["include"]]
    flags = ["-std=c++20", "-O2", "-fPIC", "-fno-trapping-math", "-fopenmp-simd", "-Wall", "-Wno-unused-function",
             "-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H"]
    out_dir = a.out_dir or tempfile.mkdtemp(prefix="ldeq_clang_")
    failures = 0
    for target in a.target:
        for src in sources():
            obj = os.path.join(out_dir, target, os.path.relpath(src, ROOT).replace(os.sep, "_") + ".o")
            os.makedirs(os.path.dirname(obj), exist_ok=True)
            cmd = [sys.executable, "-m", "ziglang", "c++", "-target", target, *flags,
                   *[f"-I{d}" for d in includes], "-c", src, "-o", obj]
            t0 = time.monotonic()
            r = subprocess.run(cmd, capture_output=True, text=True)
            status = "ok" if r.returncode == 0 else "FAILED"
            print(f"[{target}] {os.path.relpath(src, ROOT)}: {status} ({time.monotonic() - t0:.0f} s)", flush=True)
            if r.returncode != 0:
                failures += 1
                print(r.stderr[-4000:], file=sys.stderr)
    print(f"clang_build_check: {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
