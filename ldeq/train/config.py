"""Training configuration: typed sections, presets, YAML/JSON files and ``section.key=value``
command-line overrides, all validated (an unknown key is an error that lists the valid ones).

Precedence: preset < config file < command-line overrides.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import yaml


@dataclass
class ModelConfig:
    """LDEQ architecture (reference section 1), with LDEQConfig's field names. ``arch='toy'`` is a
    tiny non-DEQ regressor used to test the training machinery in seconds; it ignores the widths."""
    arch: str = "ldeq"                 # 'ldeq' | 'toy'
    injection_width: int = 224         # W: backbone output channels
    cell_base_width: int = 224         # w: hourglass base width
    cell_width_increment: int = 24     # i: hourglass width increment per level
    cell_gn_groups: int = 1            # GroupNorm groups in the cell
    cell_softargmax_beta: float = 1.0  # soft-argmax sharpness
    cell_extra_latent_width: int = 0   # latent channels beyond the 98 heatmaps
    n_keypoints: int = 98
    image_size: int = 256              # input crop side; heatmaps are image_size / 4


@dataclass
class SolverConfig:
    """Fixed-point solve and gradient (reference section 2). Names are ldeq.solvers' own (and
    LDEQConfig's): solver options are ``<solver>_<kwarg>``, backward-solve options ``b_<option>``."""
    solver: str = "anderson"           # 'anderson' | 'broyden' | 'fixed_point' | 'fixed_point_last'
    max_iter: int = 15                 # training forward budget (upper bound if stochastic)
    stochastic_max_iter: bool = True   # per batch max_iter ~ uniform{1..max_iter}
    eval_max_iter: int = 15
    tol: float = 5e-3                  # 0 = fixed budget (run exactly max_iter)
    stop_mode: str = "rel"             # 'rel' | 'abs'
    anderson_m: int = 6
    anderson_lam: float = 1e-4
    anderson_lam_mode: str = "rel"     # 'rel': lam relative to the Gram matrix's scale; 'abs': absolute
    anderson_restart: float = 1.5      # restart safeguard (0 = off)
    anderson_beta: float = 1.0
    anderson_kind: str = "II"          # 'II': type-II mixing (TorchDEQ's); 'I': type-I (secant) mixing
    broyden_memory: int = 0            # 0: the solver's default (keep every update)
    grad: str = "ift"                  # 'ift' | 'jfb' | 'phantom'
    b_max_iter: int = 15               # implicit backward solve budget
    b_tol: float = 1e-4
    phantom_steps: int = 1
    phantom_tau: float = 0.8           # phantom gradient damping
    jac_reg: float = 0.0               # weight of the Jacobian Frobenius-norm regulariser (0 = off)
    extra_step: bool = True            # inference: apply f once more after the solve


@dataclass
class DataConfig:
    dataset: str = "synthetic"         # 'synthetic' | 'wflw' | 'toy'
    root: str = "data/synthetic"       # dataset folder (synthetic: generated there if missing)
    num_train: int = 2000              # synthetic/toy only: images to generate
    num_test: int = 200
    augment: bool = True
    num_workers: int = 0


@dataclass
class OptimConfig:
    optimizer: str = "adamw"           # 'adam' | 'adamw'
    lr: float = 1e-3                   # peak learning rate (for the global batch)
    weight_decay: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01         # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0             # max global grad norm (0 = off)
    ema_decay: float = 0.999           # 0 = no EMA


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32               # GLOBAL batch, split evenly across DDP ranks
    eval_batch_size: int = 32
    eval_every: int = 500              # 0 = only at the end
    ckpt_every: int = 200              # 0 = only at the end
    keep_ckpts: int = 2                # step_*.pt files kept besides last.pt
    log_every: int = 10
    loss: str = "l1"                   # 'l1' | 'l2' | 'wing'
    wing_w: float = 10.0               # Wing loss width, in crop pixels (256 px = 1.0)
    wing_eps: float = 2.0
    seed: int = 0
    deterministic: bool = True
    amp: str = "auto"                  # 'auto' (bf16 on CUDA, off on CPU) | 'off' | 'bf16' | 'fp16'
    device: str = "auto"               # 'auto' | 'cpu' | 'cuda'
    threads: int = 0                   # torch CPU threads (0 = leave torch's default)
    sync_bn: bool = True               # synchronise BatchNorm statistics across DDP ranks
    time_limit_min: float = 0.0        # stop (checkpoint + final evaluation) after this many minutes (0 = off)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> Dict[str, Dict[str, Any]]:
        return dataclasses.asdict(self)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}
_SECTION_CLASSES = {"model": ModelConfig, "solver": SolverConfig, "data": DataConfig,
                    "optim": OptimConfig, "train": TrainConfig}

# Choices checked by validate(); keys absent here accept any value of the right type.
_CHOICES = {
    ("model", "arch"): ("ldeq", "toy"),
    ("solver", "solver"): ("anderson", "broyden", "fixed_point", "fixed_point_last"),
    ("solver", "stop_mode"): ("rel", "abs"),
    ("solver", "anderson_lam_mode"): ("rel", "abs"),
    ("solver", "anderson_kind"): ("I", "II"),
    ("solver", "grad"): ("ift", "jfb", "phantom"),
    ("data", "dataset"): ("synthetic", "wflw", "toy"),
    ("optim", "optimizer"): ("adam", "adamw"),
    ("train", "loss"): ("l1", "l2", "wing"),
    ("train", "amp"): ("auto", "off", "bf16", "fp16"),
    ("train", "device"): ("auto", "cpu", "cuda"),
}

# Presets. 'wflw': paper-scale model (authors' debug widths 224/224/24) and a GPU schedule; the
# training recipe was never released, so these are our choices (docs/training.md).
# 'synthetic-small': a small model that learns the synthetic faces on 2 CPU cores in minutes.
PRESETS: Dict[str, Dict[str, Dict[str, Any]]] = {
    "wflw": {
        "model": {"arch": "ldeq", "injection_width": 224, "cell_base_width": 224, "cell_width_increment": 24,
                  "cell_gn_groups": 1, "cell_softargmax_beta": 1.0},
        "solver": {"solver": "anderson", "max_iter": 15, "stochastic_max_iter": True, "eval_max_iter": 15,
                   "tol": 5e-3, "grad": "ift", "b_max_iter": 15},
        "data": {"dataset": "wflw", "root": "data/WFLW", "augment": True, "num_workers": 8},
        "optim": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "warmup_steps": 1000,
                  "grad_clip": 1.0, "ema_decay": 0.999},
        "train": {"steps": 60000, "batch_size": 64, "eval_batch_size": 64, "eval_every": 5000,
                  "ckpt_every": 1000, "log_every": 50, "loss": "l1", "amp": "auto"},
    },
    "synthetic-small": {
        "model": {"arch": "ldeq", "injection_width": 32, "cell_base_width": 32, "cell_width_increment": 8,
                  "cell_gn_groups": 1, "cell_softargmax_beta": 1.0, "image_size": 64},
        # JFB: on CPU a step costs ~3x less than with the implicit backward solve (bench_train_memory), which buys more
        # steps in the demo's few minutes; solver.grad=ift works too (tested in test_train_ddp.py)
        "solver": {"solver": "anderson", "max_iter": 6, "stochastic_max_iter": True, "eval_max_iter": 8,
                   "tol": 1e-2, "grad": "jfb", "b_max_iter": 6, "b_tol": 1e-3},
        "data": {"dataset": "synthetic", "root": "data/synthetic", "num_train": 1000, "num_test": 100,
                 "augment": True, "num_workers": 0},
        "optim": {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 1e-4, "warmup_steps": 30,
                  "grad_clip": 1.0, "ema_decay": 0.99},
        "train": {"steps": 4000, "batch_size": 8, "eval_batch_size": 25, "eval_every": 0,
                  "ckpt_every": 100, "log_every": 5, "loss": "l1", "amp": "off", "threads": 2},
    },
}


class ConfigError(ValueError):
    """Invalid configuration (unknown key, wrong type, value out of range)."""


def _valid_keys(section: str) -> List[str]:
    return [f.name for f in dataclasses.fields(_SECTION_CLASSES[section])]


def _coerce(section: str, key: str, value: Any, default: Any) -> Any:
    """Casts ``value`` to the type of the field's default; ints are accepted for floats."""
    where = f"{section}.{key}"
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{where} expects true/false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where} expects an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} expects a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if isinstance(value, bool):  # YAML 1.1 reads a bare off/on/no/yes as a bool (amp: off)
            value = "on" if value else "off"
        if not isinstance(value, str):
            raise ConfigError(f"{where} expects a string, got {value!r}")
        return value
    return value


# Keys renamed to the one-name-per-knob scheme: accepted in saved configs (checkpoints), refused
# with a pointer to the new name in user files and overrides.
RENAMED = {("model", "base_width"): "cell_base_width", ("model", "width_increment"): "cell_width_increment",
           ("model", "gn_groups"): "cell_gn_groups", ("model", "beta"): "cell_softargmax_beta",
           ("model", "extra_latent"): "cell_extra_latent_width", ("model", "num_landmarks"): "n_keypoints",
           ("solver", "name"): "solver", ("solver", "backward_max_iter"): "b_max_iter",
           ("solver", "backward_tol"): "b_tol", ("solver", "phantom_damping"): "phantom_tau",
           ("solver", "extra_final_step"): "extra_step"}


def apply_dict(cfg: Config, updates: Dict[str, Any], source: str = "config", legacy: bool = False) -> Config:
    """Returns a copy of ``cfg`` with ``{section: {key: value}}`` applied, rejecting unknown names
    (``legacy``: map keys from before the rename, for configs saved in older checkpoints)."""
    cfg = copy.deepcopy(cfg)
    if not isinstance(updates, dict):
        raise ConfigError(f"{source}: expected a mapping of sections {sorted(SECTIONS)}, got {type(updates).__name__}")
    for section, values in updates.items():
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown section {section!r}; valid sections: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {section!r} must be a mapping, got {type(values).__name__}")
        obj = getattr(cfg, section)
        for key, value in values.items():
            if key not in _valid_keys(section):
                if (section, key) in RENAMED:
                    if legacy:  # a config saved before the rename (e.g. in an older checkpoint)
                        key = RENAMED[(section, key)]
                    else:
                        raise ConfigError(f"{source}: {section}.{key} was renamed to "
                                          f"{section}.{RENAMED[(section, key)]} (one name per knob across "
                                          "ldeq.solvers, the model config and the train config)")
                else:
                    raise ConfigError(f"{source}: unknown key {section}.{key}; valid keys in {section!r}: "
                                      f"{', '.join(_valid_keys(section))}")
            setattr(obj, key, _coerce(section, key, value, getattr(obj, key)))
    return cfg


def parse_override(text: str) -> Dict[str, Dict[str, Any]]:
    """``'optim.lr=3e-4'`` -> ``{'optim': {'lr': 0.0003}}`` (the value is parsed as YAML)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. optim.lr=3e-4")
    name, raw = text.split("=", 1)
    section, key = name.split(".", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    # YAML reads '3e-4' as a string (no dot): retry as a number.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    return {section: {key: value}}


def load_file(path: str) -> Dict[str, Any]:
    """Reads a YAML or JSON config file (chosen by extension; YAML otherwise)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    with open(path) as f:
        text = f.read()
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"config file {path!r} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: {e}")
    return data or {}


def validate(cfg: Config) -> Config:
    """Checks choices and ranges; returns ``cfg``."""
    for (section, key), choices in _CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in choices:
            raise ConfigError(f"{section}.{key}={value!r}; expected one of {list(choices)}")
    positive = [("train", "steps"), ("train", "batch_size"), ("train", "eval_batch_size"),
                ("train", "log_every"), ("solver", "max_iter"), ("solver", "eval_max_iter"),
                ("solver", "b_max_iter"), ("solver", "phantom_steps"), ("solver", "anderson_m"),
                ("model", "n_keypoints"),
                ("model", "image_size")]
    for section, key in positive:
        if getattr(getattr(cfg, section), key) < 1:
            raise ConfigError(f"{section}.{key} must be >= 1, got {getattr(getattr(cfg, section), key)}")
    non_negative = [("train", "eval_every"), ("train", "ckpt_every"), ("train", "keep_ckpts"),
                    ("train", "threads"), ("train", "time_limit_min"), ("optim", "warmup_steps"), ("optim", "grad_clip"),
                    ("optim", "weight_decay"), ("solver", "jac_reg"), ("solver", "broyden_memory"),
                    ("data", "num_workers")]
    for section, key in non_negative:
        if getattr(getattr(cfg, section), key) < 0:
            raise ConfigError(f"{section}.{key} must be >= 0, got {getattr(getattr(cfg, section), key)}")
    if (cfg.model.arch == "toy") != (cfg.data.dataset == "toy"):
        raise ConfigError(f"model.arch={cfg.model.arch!r} with data.dataset={cfg.data.dataset!r}: the toy "
                          "model trains only on the toy dataset and vice versa")
    if cfg.model.image_size % 64:
        raise ConfigError(f"model.image_size must be a multiple of 64 (heatmaps are image_size/4 and the "
                          f"hourglass halves them 4 times), got {cfg.model.image_size}")
    if not cfg.solver.tol >= 0:
        raise ConfigError(f"solver.tol must be >= 0 (0: run exactly max_iter iterations), got {cfg.solver.tol}")
    if not cfg.solver.b_tol > 0:
        raise ConfigError(f"solver.b_tol must be > 0, got {cfg.solver.b_tol}")
    if not 0.0 < cfg.solver.phantom_tau <= 1.0:
        raise ConfigError(f"solver.phantom_tau must be in (0, 1], got {cfg.solver.phantom_tau}")
    if not 0.0 < cfg.solver.anderson_beta <= 1.0:
        raise ConfigError(f"solver.anderson_beta must be in (0, 1], got {cfg.solver.anderson_beta}")
    if not (cfg.solver.anderson_restart == 0 or cfg.solver.anderson_restart > 1):
        raise ConfigError(f"solver.anderson_restart must be 0 (off) or > 1, got {cfg.solver.anderson_restart}")
    if not cfg.solver.anderson_lam >= 0:
        raise ConfigError(f"solver.anderson_lam must be >= 0, got {cfg.solver.anderson_lam}")
    if not cfg.optim.lr > 0:
        raise ConfigError(f"optim.lr must be > 0, got {cfg.optim.lr}")
    if not 0.0 <= cfg.optim.ema_decay < 1.0:
        raise ConfigError(f"optim.ema_decay must be in [0, 1), got {cfg.optim.ema_decay}")
    if not 0.0 <= cfg.optim.min_lr_ratio <= 1.0:
        raise ConfigError(f"optim.min_lr_ratio must be in [0, 1], got {cfg.optim.min_lr_ratio}")
    return cfg


def build_config(preset: Optional[str] = None, files: Sequence[str] = (), overrides: Sequence[str] = ()) -> Config:
    """preset (or defaults) <- each file in order <- each ``section.key=value`` override; validated."""
    cfg = Config()
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; available presets: {', '.join(PRESETS)}")
        cfg = apply_dict(cfg, PRESETS[preset], source=f"preset {preset!r}")
    for path in files:
        cfg = apply_dict(cfg, load_file(path), source=path)
    for text in overrides:
        cfg = apply_dict(cfg, parse_override(text), source=f"override {text!r}")
    return validate(cfg)


def config_from_dict(data: Dict[str, Any]) -> Config:
    """Rebuilds a Config saved with :meth:`Config.to_dict` (e.g. from a checkpoint)."""
    data = copy.deepcopy(data)
    solver = data.get("solver") if isinstance(data, dict) else None
    if isinstance(solver, dict) and "anderson_lam_mode" not in solver:  # saved before relative lam / restarts
        solver.update(anderson_lam_mode="abs", anderson_restart=0.0)
    return validate(apply_dict(Config(), data, source="saved config", legacy=True))
