#!/usr/bin/env bash
# Packaging smoke test (`make wheel-check`; .ci/run calls it after `make test`):
#   1. `pip wheel --no-build-isolation .` with the build venv's torch (the extension must match it);
#   2. a fresh virtualenv (no system site-packages, no access to the checkout) installs that wheel
#      and its install_requires from the package index (torch pinned by the wheel to the torch it
#      was compiled against);
#   3. `pip check`, then an import-and-run smoke test from an empty directory: the compiled kernels
#      load, a solver, the heatmap ops (against their reference), a tiny LDEQ forward, the packaged
#      WFLW-V split lists, and the CLI both as `ldeq` and as `python -m ldeq`.
# Environment: PY (build interpreter, default .venv/bin/python), KEEP=1 keeps the temporary folder.
# The wheel is built without CUDA kernels unless WHEEL_CUDA=1: `make test` under FORCE_CUDA=1 has
# already compiled them once, and a second nvcc pass would double CI time for no new check.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PY:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || { echo "wheel_smoke: build interpreter $PY not found (run make setup first)" >&2; exit 2; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ldeq_wheel.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
t0=$(date +%s)

if [ "${WHEEL_CUDA:-0}" = 1 ]; then export FORCE_CUDA=1; unset LDEQ_NO_CUDA; else export LDEQ_NO_CUDA=1; unset FORCE_CUDA; fi
# Build from a copy of the tracked files, so a stale in-place ldeq/_C*.so or build/ cannot leak in.
git ls-files -z | tar --null -T - -cf - | (mkdir -p "$WORK/src" && tar -xf - -C "$WORK/src")
"$PY" -m pip wheel --no-build-isolation --no-deps -w "$WORK/dist" "$WORK/src" > "$WORK/wheel.log" 2>&1 \
  || { tail -n 60 "$WORK/wheel.log"; echo "wheel_smoke: pip wheel failed (log $WORK/wheel.log)" >&2; exit 1; }
WHEEL=$(ls "$WORK"/dist/ldeq-*.whl)
echo "wheel_smoke: built $(basename "$WHEEL") ($(du -h "$WHEEL" | cut -f1)) in $(( $(date +%s) - t0 )) s"
LIST=$(unzip -l "$WHEEL")
grep -q 'ldeq/_C\..*\.so' <<<"$LIST" || { echo "wheel_smoke: ldeq/_C*.so missing from the wheel" >&2; exit 1; }
grep -q 'ldeq/resources/wflw_v/easy_video_IDs.txt' <<<"$LIST" || { echo "wheel_smoke: package data missing" >&2; exit 1; }
grep -q 'ldeq/solvers/anderson.py' <<<"$LIST" || { echo "wheel_smoke: ldeq.solvers missing" >&2; exit 1; }
grep -q 'dist-info/.*LICENSE' <<<"$LIST" || { echo "wheel_smoke: LICENSE missing from the wheel" >&2; exit 1; }

BASE=$("$PY" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')
"$BASE" -m venv "$WORK/venv"
V="$WORK/venv/bin"
t1=$(date +%s)
"$V/python" -m pip install --quiet "$WHEEL" > "$WORK/install.log" 2>&1 \
  || { tail -n 40 "$WORK/install.log"; echo "wheel_smoke: installing the wheel failed" >&2; exit 1; }
echo "wheel_smoke: installed into a fresh venv with its dependencies in $(( $(date +%s) - t1 )) s"
"$V/python" -m pip check

mkdir -p "$WORK/run" && cd "$WORK/run"
"$V/python" - "$WORK/venv" <<'EOF'
import os
import sys

import torch

import ldeq
from ldeq import _ext
from ldeq.ops import heatmap_decode, heatmap_softargmax
from ldeq.ops import _reference as ref
from ldeq.solvers import anderson, get_solver

venv = os.path.realpath(sys.argv[1])
assert os.path.realpath(ldeq.__file__).startswith(venv), f"ldeq imported from {ldeq.__file__}, not the wheel"
assert _ext.extension_loaded(), "ldeq._C did not import from the wheel"
assert _ext.has_kernel("heatmap_softargmax", "cpu"), "no CPU kernel registered"

g = torch.Generator().manual_seed(0)
W = torch.randn(32, 32, generator=g, dtype=torch.float64)
W = 0.5 * W / torch.linalg.matrix_norm(W, 2)
x = torch.randn(4, 32, generator=g, dtype=torch.float64)
f = lambda z: torch.tanh(z @ W.T + x)
z, st = anderson(f, torch.zeros(4, 32, dtype=torch.float64), max_iter=100, tol=1e-10)
assert bool(st.converged.all()) and float((f(z) - z).norm(dim=1).max()) <= 1e-9, st.summary()
z2, st2 = get_solver("broyden")(f, torch.zeros(4, 32, dtype=torch.float64), max_iter=100, tol=1e-10)
assert bool(st2.converged.all())

logits = torch.randn(2, 5, 16, 16, generator=g)
h = heatmap_softargmax(logits, 1.0)
coords, std = heatmap_decode(h)
h_ref = ref.heatmap_softargmax(logits.double(), torch.tensor(1.0, dtype=torch.float64))
c_ref, _ = ref.heatmap_decode(h_ref)
assert torch.allclose(h.double(), h_ref, rtol=1e-5, atol=1e-6) and torch.allclose(coords.double(), c_ref, atol=1e-5)

from ldeq.model import LDEQ, LDEQConfig
m = LDEQ(LDEQConfig(injection_width=8, cell_base_width=4, cell_width_increment=2, heatmap_size=16,
                    image_size=64, n_keypoints=5, max_iter=2)).eval()
with torch.no_grad():
    out = m(torch.randn(1, 3, 64, 64, generator=g))
print("wheel_smoke: LDEQ forward ok:", type(out).__name__)

from ldeq.video.wflwv import split_ids
assert len(split_ids("easy")) == 500
print("wheel_smoke: import-and-run OK, ldeq from", os.path.dirname(ldeq.__file__))
EOF
a=$("$V/python" -m ldeq --help); b=$("$V/ldeq" --help)
[[ "$a" == "usage: ldeq COMMAND"* && "$a" == "$b" ]] || { echo "wheel_smoke: python -m ldeq and ldeq disagree" >&2; exit 1; }
"$V/python" -m ldeq eval --help > /dev/null
echo "wheel_smoke: CLI OK (ldeq and python -m ldeq)"
echo "wheel_smoke: OK in $(( $(date +%s) - t0 )) s"
