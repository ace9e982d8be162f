"""LDEQ hyper-parameters: one dataclass, convertible to and from the official ``argparse.Namespace``.

Field names follow the official release's ``args`` where one exists, so an official checkpoint's
``args`` maps onto :class:`LDEQConfig` field by field (:meth:`LDEQConfig.from_namespace`) and our
checkpoints carry an ``args`` Namespace the official code could read back (:meth:`to_namespace`).
"""
import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict

NORMS = ("bn", "gn", "none")
CELL_NORMS = ("softargmax", "none")  # heatmap normalisation inside the cell (official 'cell_norm')
MODES = ("implicit", "explicit")
SOLVERS = ("anderson", "broyden", "fixed_point", "fixed_point_last")
# Names in the official release's args (and in ldeq checkpoints before the one-name-per-knob
# rename) -> our field names. Read when loading; never written back except by to_namespace.
LEGACY_FIELDS = {"max_iters": "max_iter", "stochastic_max_iters": "stochastic_max_iter",
                 "extra_final_step": "extra_step"}
OFFICIAL_SOLVERS = {"fpi": "fixed_point_last"}
LAM_MODES = ("rel", "abs")
ANDERSON_KINDS = ("II", "I")  # ldeq.solvers.anderson(kind=...)
# Saved settings that predate Anderson's relative lam and restarts ran with these (the official
# solver's meaning): a checkpoint keeps the solver it was trained with.
PRE_RESTART_ANDERSON = {"anderson_lam_mode": "abs", "anderson_restart": 0.0}
STOP_MODES = ("rel", "abs")


@dataclass
class LDEQConfig:
    """Every width and switch of the LDEQ (defaults: the authors' debug config, about 16.5 M params).

    Shapes: images (B, 3, image_size, image_size); injection (B, injection_width, S, S) and state z
    (B, z_width, S, S) with S = heatmap_size = image_size / 4 (the backbone has stride 4).
    """
    # architecture
    injection_width: int = 224          # backbone output channels W (tail: W/4 -> W/2 -> W)
    cell_base_width: int = 224          # hourglass base width w
    cell_width_increment: int = 24      # hourglass width increment i (w, w+i, ..., w+4i)
    cell_gn_groups: int = 1             # GroupNorm groups in the cell
    cell_norm_layer: str = "gn"         # cell Conv norm: 'gn' (official implicit), 'bn', 'none'
    backbone_norm_layer: str = "bn"     # backbone Conv norm (official: 'bn')
    cell_norm: str = "softargmax"       # heatmap normalisation at the end of the cell, or 'none'
    cell_softargmax_beta: float = 1.0   # softargmax inverse temperature (initial value if learned)
    cell_learn_softargmax_beta: bool = False  # learn one beta per z channel (softplus-positive)
    n_keypoints: int = 98
    cell_extra_latent_width: int = 0    # extra latent z channels beyond the keypoint heatmaps
    heatmap_size: int = 64
    image_size: int = 256
    # fixed-point solve
    model_mode: str = "implicit"        # 'implicit' (DEQ solve) or 'explicit' (unrolled, weight-tied)
    explicit_depth: int = 5             # cell applications in explicit mode
    solver: str = "anderson"            # ldeq.solvers name; 'fixed_point_last' = the official loop
    max_iter: int = 10
    tol: float = 5e-3                   # stop when the (stop_mode) residual is below tol; 0 = fixed budget
    stop_mode: str = "rel"
    extra_step: bool = True             # apply f once more after the solve (official default)
    stochastic_max_iter: bool = False   # training only: max_iter ~ uniform{1..max_iter} per batch
    anderson_m: int = 6                 # solver options: config key = <solver>_<kwarg of that solver>
    anderson_lam: float = 1e-4
    anderson_lam_mode: str = "rel"      # lam relative to the Gram matrix's scale; 'abs': the official meaning
    anderson_restart: float = 1.5       # Anderson's restart safeguard (0 = off; ldeq.solvers.anderson)
    anderson_beta: float = 1.0
    anderson_kind: str = "II"           # 'II': type-II mixing (TorchDEQ's); 'I': type-I (secant) mixing
    broyden_memory: int = 0             # Broyden's memory (0: the solver's default, max_iter)
    # decode
    official_std: bool = False          # uncertainty as the official release computes it (a 2nd moment)

    @property
    def z_width(self) -> int:
        return self.n_keypoints + self.cell_extra_latent_width

    @property
    def hourglass_widths(self):
        w, i = self.cell_base_width, self.cell_width_increment
        return [w + k * i for k in range(5)]

    def __post_init__(self):
        self.validate()

    def validate(self) -> "LDEQConfig":
        """Raise ValueError naming the field and the expected value for any inconsistent setting."""
        def need(ok, name, expected):
            if not ok:
                raise ValueError(f"LDEQConfig.{name}={getattr(self, name)!r}: expected {expected}")
        for name in ("injection_width", "cell_base_width", "n_keypoints", "heatmap_size", "image_size",
                     "cell_gn_groups", "explicit_depth", "max_iter", "anderson_m"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, "an int >= 1")
        need(isinstance(self.cell_width_increment, int) and self.cell_width_increment >= 0,
             "cell_width_increment", "an int >= 0")
        need(isinstance(self.cell_extra_latent_width, int) and self.cell_extra_latent_width >= 0,
             "cell_extra_latent_width", "an int >= 0")
        need(self.injection_width % 4 == 0, "injection_width", "a multiple of 4 (backbone widths W/4, W/2, W)")
        need(self.cell_norm_layer in NORMS, "cell_norm_layer", f"one of {NORMS}")
        need(self.backbone_norm_layer in NORMS, "backbone_norm_layer", f"one of {NORMS}")
        need(self.cell_norm in CELL_NORMS, "cell_norm", f"one of {CELL_NORMS}")
        need(self.model_mode in MODES, "model_mode", f"one of {MODES}")
        need(self.solver in SOLVERS, "solver", f"one of {SOLVERS}")
        need(self.stop_mode in STOP_MODES, "stop_mode", f"one of {STOP_MODES}")
        need(math.isfinite(self.cell_softargmax_beta) and self.cell_softargmax_beta > 0,
             "cell_softargmax_beta", "a finite float > 0")
        need(self.anderson_lam_mode in LAM_MODES, "anderson_lam_mode", f"one of {LAM_MODES}")
        need(self.anderson_kind in ANDERSON_KINDS, "anderson_kind", f"one of {ANDERSON_KINDS}")
        need(isinstance(self.anderson_lam, (int, float)) and math.isfinite(self.anderson_lam) and self.anderson_lam >= 0,
             "anderson_lam", "a finite float >= 0")
        need(isinstance(self.anderson_restart, (int, float)) and math.isfinite(self.anderson_restart)
             and (self.anderson_restart == 0 or self.anderson_restart > 1), "anderson_restart", "0 (off) or a float > 1")
        need(isinstance(self.broyden_memory, int) and self.broyden_memory >= 0, "broyden_memory",
             "an int >= 0 (0: the solver's default)")
        need(isinstance(self.tol, (int, float)) and math.isfinite(self.tol) and self.tol >= 0, "tol",
             "a finite float >= 0 (0: run exactly max_iter iterations)")
        # the hourglass halves the resolution 4 times; the backbone divides the image by 4
        need(self.heatmap_size % 16 == 0, "heatmap_size", "a multiple of 16 (hourglass depth 4)")
        need(self.image_size == 4 * self.heatmap_size, "image_size",
             f"4 * heatmap_size = {4 * self.heatmap_size} (the backbone has stride 4)")
        if self.cell_norm_layer == "gn":
            for w in self.hourglass_widths:
                need(w % self.cell_gn_groups == 0, "cell_gn_groups",
                     f"a divisor of every cell width {self.hourglass_widths}")
        return self

    # -- conversions ---------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "LDEQConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        d = {LEGACY_FIELDS.get(k, k) if LEGACY_FIELDS.get(k) not in d else k: v for k, v in d.items()}
        d = {**{k: v for k, v in PRE_RESTART_ANDERSON.items() if "anderson_lam_mode" not in d}, **d}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"LDEQConfig: unknown fields {unknown}; expected a subset of {sorted(names)}")
        return cls(**d)

    def replace(self, **changes) -> "LDEQConfig":
        return dataclasses.replace(self, **changes)

    def to_namespace(self) -> argparse.Namespace:
        """The official ``args`` Namespace (plus our field names), primitives only."""
        ns = argparse.Namespace(**self.to_dict())
        ns.z_width = self.z_width
        ns.im_size = self.image_size
        ns.cell_name = "Cell0"
        ns.ldeq_format = 1  # marks our own args: a learned beta here is a real, trained parameter
        ns.solver = "fpi" if self.solver in ("fixed_point_last", "fixed_point") else self.solver
        ns.max_iters = self.max_iter
        ns.rel_diff_target = self.tol
        ns.abs_diff_target = self.tol
        ns.take_one_less_inference_step = not self.extra_step
        ns.cell_use_bn_for_explicit = self.cell_norm_layer == "bn"
        ns.cell_norm = "None" if self.cell_norm == "none" else self.cell_norm
        return ns

    @classmethod
    def from_namespace(cls, ns, **overrides) -> "LDEQConfig":
        """Map official ``args`` (Namespace or dict) to a config; fields it lacks keep defaults.

        Official quirks handled: the cell norm is BN only in explicit mode with
        ``cell_use_bn_for_explicit``; a "learned" beta was never registered as a parameter in the
        official code (so never trained) and acts as the fixed value softplus(beta).
        """
        a = dict(vars(ns)) if isinstance(ns, argparse.Namespace) else dict(ns)
        for old, new in LEGACY_FIELDS.items():
            if old in a and new not in a:
                a[new] = a[old]
        if "anderson_lam_mode" not in a:
            a.update(PRE_RESTART_ANDERSON)
        own = {f.name for f in dataclasses.fields(cls)}
        kw: Dict[str, Any] = {k: a[k] for k in own if k in a and k not in ("cell_norm", "solver")}
        if "im_size" in a and "image_size" not in a:
            kw["image_size"] = int(a["im_size"])
        if "cell_norm" in a:
            kw["cell_norm"] = "none" if str(a["cell_norm"]).lower() == "none" else str(a["cell_norm"])
        if "solver" in a:
            kw["solver"] = OFFICIAL_SOLVERS.get(str(a["solver"]), str(a["solver"]))
        if "take_one_less_inference_step" in a and "extra_step" not in a:
            kw["extra_step"] = not bool(a["take_one_less_inference_step"])
        if "tol" not in a:
            mode = a.get("stop_mode", "rel")
            t = a.get("abs_diff_target" if mode == "abs" else "rel_diff_target")
            if t is not None:
                kw["tol"] = float(t)
        if "cell_norm_layer" not in a and "model_mode" in a:
            bn = a.get("model_mode") == "explicit" and bool(a.get("cell_use_bn_for_explicit", False))
            kw["cell_norm_layer"] = "bn" if bn else "gn"
        if "cell_extra_latent_width" not in a and "z_width" in a and "n_keypoints" in a:
            kw["cell_extra_latent_width"] = int(a["z_width"]) - int(a["n_keypoints"])
        if "heatmap_size" not in kw and "image_size" in kw:
            kw["heatmap_size"] = int(kw["image_size"]) // 4
        if "image_size" not in kw and "heatmap_size" in kw:
            kw["image_size"] = 4 * int(kw["heatmap_size"])
        if a.get("cell_learn_softargmax_beta") and not a.get("ldeq_format"):
            # official Normalize: exp(softplus(beta) * h) with beta a plain tensor, never trained
            kw["cell_learn_softargmax_beta"] = False
            kw["cell_softargmax_beta"] = math.log1p(math.exp(float(a.get("cell_softargmax_beta", 1.0))))
        kw.update(overrides)
        return cls(**kw)
