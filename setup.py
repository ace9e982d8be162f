"""Build script for ldeq: pure-Python packages plus the C++/CUDA extension ``ldeq._C``.

Build switches (environment variables):
  FORCE_CUDA=1           compile the CUDA kernels even when no GPU is visible (CI does this).
  LDEQ_NO_CUDA=1         never compile CUDA kernels.
  TORCH_CUDA_ARCH_LIST   CUDA architectures, always honoured when set. Default: the visible GPUs'
                         architectures; with no GPU visible, the broad list 7.0;7.5;8.0;8.6;8.9;9.0+PTX
                         filtered to what this nvcc accepts (`nvcc --list-gpu-arch`; CUDA 13 dropped
                         sm < 7.5, so 7.5;8.0;8.6;8.9;9.0+PTX there). The PTX of 9.0 is JIT-compiled on
                         newer GPUs.
  MAX_JOBS               parallel compile jobs; default: the CPUs this process may run on.

The extension must be built against the torch already installed, so install with
``pip install --no-build-isolation .`` (an isolated build would fetch a second torch).
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup


def _guess_cuda_home():
    """torch takes CUDA_HOME as the folder above the first `nvcc` on PATH; when that nvcc is a
    wrapper script (here /usr/local/bin/nvcc), the folder has no libcudart and linking fails.
    Pick the first candidate that has both bin/nvcc and libcudart.so, before torch looks."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for home in candidates:
        has_lib = any(os.path.exists(os.path.join(home, d, "libcudart.so")) for d in ("lib64", "lib"))
        if has_lib and os.path.exists(os.path.join(home, "bin", "nvcc")):
            os.environ["CUDA_HOME"] = home
            return


_guess_cuda_home()

try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension, CUDA_HOME
except ImportError:  # pragma: no cover - message for users only
    sys.exit("ldeq: torch must be installed before building ldeq "
             "(pip install torch==2.14.1, then pip install --no-build-isolation .)")

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _want_cuda():
    if _flag("LDEQ_NO_CUDA"):
        return False, "LDEQ_NO_CUDA=1"
    if _flag("FORCE_CUDA"):
        if CUDA_HOME is None:
            sys.exit("ldeq: FORCE_CUDA=1 but CUDA_HOME is not set and nvcc was not found")
        return True, "FORCE_CUDA=1"
    if torch.cuda.is_available() and CUDA_HOME is not None:
        return True, "GPU visible and CUDA_HOME set"
    return False, "no GPU visible or no CUDA_HOME (set FORCE_CUDA=1 to compile anyway)"


def _cuda_library_includes():
    # torch's CUDA 13 wheels ship cusparse.h & co. in site-packages/nvidia/cu13/include.
    dirs = []
    for sp in sys.path:
        for sub in ("nvidia/cu13/include", "nvidia/cuda_runtime/include"):
            d = os.path.join(sp, sub)
            if os.path.isdir(d) and d not in dirs:
                dirs.append(d)
    return dirs


def _default_max_jobs():
    """Parallel compile jobs: the CPUs this process may run on (affinity / cgroup cpuset aware)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


BROAD_CUDA_ARCHS = ("7.0", "7.5", "8.0", "8.6", "8.9", "9.0")


def _nvcc_archs():
    """Compute capabilities this nvcc compiles for ({'7.5', '8.0', ...}), or None when it cannot say."""
    import subprocess
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else shutil.which("nvcc")
    try:
        out = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError, TypeError):
        return None
    archs = {f"{a[:-1]}.{a[-1]}" for a in (w.split("_", 1)[1] for w in out.split() if w.startswith("compute_"))
             if a.isdigit()}
    return archs or None


def _default_cuda_arch_list():
    """(arch list, why): the visible GPUs' architectures, else the broad list nvcc accepts (+PTX)."""
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{a}.{b}" for a, b in caps), "the visible GPUs"
    known = _nvcc_archs()
    archs = [a for a in BROAD_CUDA_ARCHS if known is None or a in known]
    if not archs:  # an nvcc newer than every arch of the broad list: its oldest arch, as PTX
        archs = [min(known, key=lambda a: tuple(map(int, a.split("."))))]
    dropped = [a for a in BROAD_CUDA_ARCHS if a not in archs]
    why = "no GPU visible: broad list" + (f" without {', '.join(dropped)} (not supported by this nvcc)" if dropped else "")
    return ";".join(archs[:-1] + [archs[-1] + "+PTX"]), why


def make_extensions():
    with_cuda, why = _want_cuda()
    os.environ.setdefault("MAX_JOBS", str(_default_max_jobs()))
    if with_cuda:
        if os.environ.get("TORCH_CUDA_ARCH_LIST"):
            arch_why = "TORCH_CUDA_ARCH_LIST set by the caller"
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"], arch_why = _default_cuda_arch_list()
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "common", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "*", "*_cpu.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "*", "*_cuda.cu")))
    # -fno-trapping-math lets GCC if-convert (and so vectorise) the branch-free selects in the kernels.
    # -fopenmp: at::parallel_for is an inline `#pragma omp parallel` (torch's OpenMP build), so
    # without it every CPU kernel silently runs on one thread. Same libgomp as torch's.
    # MSVC takes neither flag; there the kernels build with their portable bodies only (no GCC/Clang
    # target attributes: csrc/common/cpu_dispatch.h), so the CPU capability is always `default`.
    if sys.platform == "win32":
        openmp, cxx = [], ["/O2", "/openmp", "/std:c++20"]
    else:
        openmp = ["-fopenmp"] if sys.platform.startswith("linux") else ["-fopenmp-simd"]
        cxx = ["-O3", *openmp, "-fno-trapping-math", "-std=c++20"]
    define_macros = []
    include_dirs = [os.path.join(ROOT, "csrc")]
    print("=" * 70)
    print(f"ldeq build: torch {torch.__version__} (CUDA {torch.version.cuda})")
    print(f"ldeq build: CUDA kernels {'ON' if with_cuda else 'OFF'} ({why})")
    if with_cuda:
        print(f"ldeq build: CUDA_HOME={CUDA_HOME} TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']} ({arch_why})")
    print(f"ldeq build: MAX_JOBS={os.environ['MAX_JOBS']} sources={len(sources) + (len(cuda_sources) if with_cuda else 0)}")
    print("=" * 70)
    if with_cuda:
        include_dirs += _cuda_library_includes()
        define_macros.append(("LDEQ_WITH_CUDA", None))
        ext = CUDAExtension(
            "ldeq._C", sources + cuda_sources, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr"]},
            extra_link_args=openmp)
    else:
        ext = CppExtension("ldeq._C", sources, include_dirs=include_dirs, define_macros=define_macros,
                           extra_compile_args={"cxx": cxx}, extra_link_args=openmp)
    return [ext]


setup(
    name="ldeq",
    version="0.1.0",
    description="Deep equilibrium solvers, the Landmark DEQ and the RwR video pipeline, with C++/CUDA kernels",
    python_requires=">=3.10",
    license="BSD-3-Clause",  # SPDX; the official LDEQ weights are not part of ldeq (README, Licence)
    license_files=["LICENSE"],
    packages=find_packages(include=["ldeq", "ldeq.*"]) + ["ldeq.solvers"],
    package_dir={"ldeq": "ldeq", "ldeq.solvers": "solvers"},
    package_data={"ldeq": ["resources/*", "resources/**/*"], "ldeq.solvers": ["py.typed"]},
    ext_modules=make_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    # Every third-party module the package imports at run time (cv2 = opencv-python-headless,
    # yaml = pyyaml). torch: pinned to the release the extension is compiled against (its C++ ABI
    # changes between releases; a wheel built here must not be installed beside another torch).
    install_requires=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "scipy", "tqdm", "pyyaml", "matplotlib",
                      "opencv-python-headless>=4.8,<5"],
    # Tests and benchmarks compare against TorchDEQ's internals, iterate for iterate: pinned to the
    # version they were written against.
    extras_require={
        "test": ["pytest>=8", "torchdeq==0.1.0", "onnx>=1.16", "onnxruntime>=1.18"],
        "bench": ["pytest>=8", "pytest-benchmark>=4", "torchdeq==0.1.0"],
        "export": ["onnx>=1.16"],  # `ldeq export --onnx` (torch.onnx needs the onnx package)
        "download": ["yt-dlp"],  # `ldeq data wflw-v` (the maintained YouTube downloader)
    },
    entry_points={"console_scripts": ["ldeq=ldeq.cli:main"]},
)
