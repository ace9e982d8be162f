"""``ldeq export --onnx DIR``: the LDEQ as two ONNX graphs, so a deployment runs RwR without PyTorch.

    ldeq export --checkpoint PATH --onnx DIR [--max-iter-full N] [--max-iter-step 1] [--opset 17]

Writes (atomically) to DIR:

* ``ldeq_init.onnx``: ``image`` (B, 3, S, S) float32 RGB in [0, 1] (the face crop; ImageNet
  normalisation is inside the graph) -> ``landmarks`` (B, K, 2) crop units, ``uncertainty``
  (B, K) crop units, ``state`` (B, Z, S/4, S/4). A solve from zeros: ``max_iter_full`` plain
  fixed-point iterations z <- f(z; x) (a fixed budget, no early stop) plus the extra final step
  when the checkpoint uses it. This equals the PyTorch model's own solve from zeros when the
  checkpoint's solver is 'fixed_point_last' (the official loop, last iterate) with tol = 0, the
  official video setting; for other solvers it is the plain iteration instead (an Anderson
  checkpoint may need a larger --max-iter-full).
* ``ldeq_step.onnx``: one RwR step. Inputs ``image`` (B, 3, S, S), ``state`` (B, Z, S/4, S/4) the
  previous frame's state, ``gamma`` (1,) float32 (0 = mode warm, > 0 = mode prox); outputs
  ``landmarks``, ``uncertainty`` and ``new_state``, the state to feed to the next frame. ``max_iter_step`` applications of
  T(z) = (f(z; x) + gamma * state) / (1 + gamma) from z0 = state, then the extra final step of T:
  exactly :class:`ldeq.video.rwr.CellSolve` (warm for gamma = 0, prox otherwise).
* ``ldeq_onnx.json``: the crop size and scale, keypoint count, iteration budgets, the input
  and output names and shapes, so a deployment crops faces as ``ldeq.data.crop`` does
  (square of side max(w, h) * 1.2 around the box) and maps crop units back (x * S through the
  inverse crop affine).

The batch axis is dynamic. Heatmap ops are traced through their pure-PyTorch references (the
compiled kernels are not ONNX operators). Verified with onnxruntime against the PyTorch runner on
a short clip in tests/test_export.py.
"""
import argparse
import contextlib
import os
import sys
import warnings
from typing import List, Optional

import torch
from torch import nn

from ._io import atomic_save, atomic_write_json
from .cli import positive_int
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD

OPSET = 17


class _Normalize(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class InitGraph(nn.Module):
    """image (B, 3, S, S) in [0, 1] -> landmarks, uncertainty, state: a solve from zeros."""

    def __init__(self, model, max_iter: int):
        super().__init__()
        self.model, self.max_iter, self.norm = model, int(max_iter), _Normalize()

    def forward(self, image):
        x = self.model.injection(self.norm(image))
        S = self.model.cfg.heatmap_size
        z = torch.zeros(image.shape[0], self.model.cfg.z_width, S, S, dtype=x.dtype, device=x.device)
        for _ in range(self.max_iter + int(self.model.cfg.extra_step)):
            z = self.model.cell(z, x)
        _, kp, std = self.model.decode(z)
        return kp, std, z


class StepGraph(nn.Module):
    """(image, state, gamma) -> landmarks, uncertainty, new state: one RwR frame (warm / prox)."""

    def __init__(self, model, max_iter: int):
        super().__init__()
        self.model, self.max_iter, self.norm = model, int(max_iter), _Normalize()

    def forward(self, image, state, gamma):
        x = self.model.injection(self.norm(image))
        g = gamma.reshape(1, 1, 1, 1)
        z = state
        for _ in range(self.max_iter + int(self.model.cfg.extra_step)):
            z = (self.model.cell(z, x) + g * state) / (1.0 + g)
        _, kp, std = self.model.decode(z)
        return kp, std, z


@contextlib.contextmanager
def traceable_ops():
    """Route ldeq's heatmap ops to their pure-PyTorch references and switch off any prepacked
    oneDNN cell path (``ldeq.model.fast``, where present): only standard ops reach the tracer."""
    from .ops import heatmap
    old = heatmap._use_kernel
    heatmap._use_kernel = lambda op, t: False
    try:
        from .model import fast
    except ImportError:
        fast = None
    prev = fast.set_packed_enabled(False) if fast is not None and hasattr(fast, "set_packed_enabled") else None
    try:
        yield
    finally:
        heatmap._use_kernel = old
        if prev is not None:
            fast.set_packed_enabled(prev)


def _export(module, args, path, input_names, output_names, opset):
    dyn = {n: {0: "batch"} for n in input_names + output_names if n != "gamma"}

    def write(tmp):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(module, args, tmp, dynamo=False, input_names=input_names, output_names=output_names,
                              dynamic_axes=dyn, opset_version=opset, do_constant_folding=True)
    atomic_save(path, write, ".onnx")
    return path


def export_onnx(model, out_dir: str, max_iter_full: Optional[int] = None, max_iter_step: int = 1,
                opset: int = OPSET) -> List[str]:
    """Writes ldeq_init.onnx, ldeq_step.onnx and ldeq_onnx.json for an LDEQ (see module doc);
    returns the paths. The model is exported in float32 on the CPU."""
    from .model import LDEQ
    if not isinstance(model, LDEQ):
        raise TypeError(f"model: expected an ldeq.model.LDEQ, got {type(model).__name__}")
    max_iter_full = model.cfg.max_iter if max_iter_full is None else int(max_iter_full)
    if max_iter_full < 1 or int(max_iter_step) < 1:
        raise ValueError(f"max_iter_full, max_iter_step: expected integers >= 1, got {max_iter_full}, {max_iter_step}")
    model = model.float().cpu().eval()
    cfg = model.cfg
    S, Z, h = cfg.image_size, cfg.z_width, cfg.heatmap_size
    os.makedirs(out_dir, exist_ok=True)
    image = torch.rand(2, 3, S, S)
    with torch.no_grad(), traceable_ops():
        state = InitGraph(model, 1)(image)[2]
        p_init = _export(InitGraph(model, max_iter_full), (image,), os.path.join(out_dir, "ldeq_init.onnx"),
                         ["image"], ["landmarks", "uncertainty", "state"], opset)
        p_step = _export(StepGraph(model, max_iter_step), (image, state, torch.tensor([0.5])),
                         os.path.join(out_dir, "ldeq_step.onnx"), ["image", "state", "gamma"],
                         ["landmarks", "uncertainty", "new_state"], opset)
    meta = {"format": "ldeq-onnx-1", "opset": opset, "crop_size": S, "crop_scale": 1.2, "n_keypoints": cfg.n_keypoints,
            "state_shape": ["B", Z, h, h], "max_iter_full": max_iter_full, "max_iter_step": int(max_iter_step),
            "extra_step": bool(cfg.extra_step), "image": "RGB float32 in [0, 1], (B, 3, S, S); normalised inside",
            "landmarks": "(B, K, 2) x, y in crop units (crop pixels / S)",
            "uncertainty": "(B, K) heatmap spread in crop units",
            "init": {"file": "ldeq_init.onnx", "inputs": ["image"], "outputs": ["landmarks", "uncertainty", "state"]},
            "step": {"file": "ldeq_step.onnx", "inputs": ["image", "state", "gamma (1,): 0 = warm, > 0 = prox"],
                     "outputs": ["landmarks", "uncertainty", "new_state"]},
            "model_config": cfg.to_dict()}
    p_meta = atomic_write_json(os.path.join(out_dir, "ldeq_onnx.json"), meta, indent=2)
    return [p_init, p_step, p_meta]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="ldeq export", description="Export a checkpoint to ONNX: a solve from "
                                "zeros and one RwR step (see docs/predict.md)")
    p.add_argument("--checkpoint", required=True, help="LDEQ checkpoint (ours or the official format)")
    p.add_argument("--onnx", required=True, metavar="DIR", help="output folder for the .onnx files")
    p.add_argument("--max-iter-full", type=positive_int, default=None,
                   help="iterations of the solve from zeros (default: the checkpoint's max_iter)")
    p.add_argument("--max-iter-step", type=positive_int, default=1, help="iterations per RwR step (default 1)")
    p.add_argument("--opset", type=positive_int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    from .model import load_checkpoint
    try:
        import importlib.util
        if importlib.util.find_spec("onnx") is None:  # torch.onnx.export writes through the onnx package
            raise ValueError("--onnx: needs the onnx package: pip install 'ldeq[export]' (or pip install onnx)")
        if os.path.exists(args.onnx) and not os.path.isdir(args.onnx):
            raise ValueError(f"--onnx {args.onnx!r}: exists and is not a folder")
        model = load_checkpoint(args.checkpoint)
    except (ValueError, FileNotFoundError) as e:
        print(f"ldeq export: error: {e}", file=sys.stderr)
        return 2
    paths = export_onnx(model, args.onnx, args.max_iter_full, args.max_iter_step, args.opset)
    print("wrote " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
