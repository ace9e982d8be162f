"""The training loop: one process or many under ``torchrun``.

Per step: draw max_iter (stochastic, from a checkpointed generator shared by all ranks), run the
DDP-wrapped :class:`~ldeq.train.task.TrainStep` under autocast, coordinate loss (+ Jacobian
regulariser), backward (implicit gradient by default), clip, optimiser + LR schedule step, EMA.
Metrics are averaged over ranks; only rank 0 writes files. Checkpoints every ``ckpt_every`` steps
and at the end; evaluation (EMA weights) every ``eval_every`` steps and at the end.
"""
from __future__ import annotations

import math
import os
import random
import time
import warnings
from contextlib import nullcontext
from typing import Callable, Dict, Optional

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from .._io import atomic_write_json
from . import checkpoint as ckpt
from .config import Config, config_from_dict
from .data import batch_stream
from .distributed import (DistContext, barrier, cleanup, convert_sync_batchnorm, init_distributed,
                          reduce_mean)
from .ema import EMA
from .logs import MetricsWriter, plot_curves, read_metrics
from .losses import make_loss
from .schedule import make_scheduler
from .task import TrainStep, make_task, nme_torch

Hook = Callable[..., None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def set_determinism(on: bool) -> None:
    """Deterministic kernels (warn-only: ops without a deterministic variant still run)."""
    torch.backends.cudnn.benchmark = not on
    torch.backends.cudnn.deterministic = on
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on, warn_only=True)


def resolve_amp(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """'auto' -> bf16 on CUDA (if supported) else off; explicit bf16/fp16 need a CUDA device."""
    if amp == "off":
        return None
    if device.type != "cuda":
        if amp == "auto":
            return None
        raise ValueError(f"train.amp={amp!r} needs a CUDA device (this run is on {device}); use 'off' or 'auto'")
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def make_optimizer(params, cfg: Config) -> torch.optim.Optimizer:
    o = cfg.optim
    cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)


def _unwrap(m: nn.Module) -> nn.Module:
    return m.module if isinstance(m, DDP) else m


@torch.no_grad()
def evaluate(task, model: nn.Module, dataset, cfg: Config, ctx: DistContext,
             limit: Optional[int] = None) -> Dict[str, object]:
    """Inference on ``dataset`` (sharded over ranks, gathered): per-image NME (fraction), predictions
    (N, K, 2), ground truth (N, K, 2), mean solver iterations. Every rank gets the full result."""
    model.eval()
    n = len(dataset) if limit is None else min(limit, len(dataset))
    mine = list(range(ctx.rank, n, ctx.world_size))
    preds, gts, iters = [], [], []
    bs = cfg.train.eval_batch_size
    for b in range(0, len(mine), bs):
        items = [dataset[i] for i in mine[b:b + bs]]
        images = torch.stack([it[0] for it in items]).to(ctx.device)
        gt = torch.stack([it[1] for it in items])
        kp, it = task.predict(model, images)
        preds.append(kp.float().cpu())
        gts.append(gt.float())
        iters.append(it * len(items))
    local = (mine, torch.cat(preds) if preds else None, torch.cat(gts) if gts else None, sum(iters))
    if ctx.enabled:
        import torch.distributed as dist
        parts = [None] * ctx.world_size
        dist.all_gather_object(parts, local)
    else:
        parts = [local]
    order = np.argsort(np.concatenate([p[0] for p in parts if p[0]]))
    pred = torch.cat([p[1] for p in parts if p[1] is not None])[order]
    gt = torch.cat([p[2] for p in parts if p[2] is not None])[order]
    nme = nme_torch(pred, gt, task.iod).numpy().astype(np.float64)
    return {"nme": nme, "pred": pred, "gt": gt, "iters": sum(p[3] for p in parts) / max(n, 1)}


def _summarise_eval(res: Dict[str, object]) -> Dict[str, float]:
    from ldeq.metrics import auc, failure_rate
    nme = res["nme"]
    return {"test_nme": 100.0 * float(nme.mean()), "test_fr10": 100.0 * failure_rate(nme),
            "test_auc10": auc(nme), "test_iters": float(res["iters"])}


def train(cfg: Config, out_dir: str, resume: Optional[str] = None, *, stop_after: Optional[int] = None,
          hooks: Optional[Dict[str, Hook]] = None, progress: bool = True) -> Dict[str, object]:
    """Trains per ``cfg``, writing to ``out_dir`` (rank 0). Returns a summary dict.

    resume:     a checkpoint path/folder or 'auto' (``<out_dir>/checkpoints/last.pt`` if present).
    stop_after: return right after this global step without the final checkpoint/evaluation, as if
                the process had been killed there (tests of --resume).
    hooks:      optional callbacks: ``after_backward(step=, model=)`` (gradients are final, DDP
                all-reduced, before clipping) and ``after_step(step=, metrics=)``.
    """
    hooks = hooks or {}
    t_start = time.time()
    # process-wide settings this run changes, restored afterwards (train() may run inside a larger program)
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic)
    ctx = init_distributed(cfg.train.device)
    try:
        with warnings.catch_warnings():
            return _train(cfg, out_dir, resume, stop_after, hooks, progress, ctx, t_start)
    finally:
        cleanup(ctx)
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[3], saved[4]


def _train(cfg, out_dir, resume, stop_after, hooks, progress, ctx, t_start):
    tc = cfg.train
    # An implicit backward solve that misses b_tol keeps its best iterate; the failure rate
    # is logged as 'bwd_fail' rather than warned about on every step.
    warnings.filterwarnings("ignore", message="implicit backward solve failed", category=RuntimeWarning)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    set_determinism(tc.deterministic)
    amp_dtype = resolve_amp(tc.amp, ctx.device)
    seed_everything(tc.seed)  # same on every rank: identical initial weights
    task = make_task(cfg)
    model = task.build_model()
    if ctx.enabled and tc.sync_bn:
        model = convert_sync_batchnorm(model, ctx.device)
    model.to(ctx.device)
    step_module = TrainStep(model, cfg)
    ema = EMA(model, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
    optimizer = make_optimizer(model.parameters(), cfg)
    scheduler = make_scheduler(optimizer, tc.steps, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    iter_gen = torch.Generator().manual_seed(tc.seed + 7919)  # stochastic max_iter, rank-independent
    loss_fn = make_loss(tc.loss, tc.wing_w, tc.wing_eps)
    ckpt_dir = os.path.join(out_dir, "checkpoints")

    start_step = 0
    resume_path = ckpt.resolve_resume(resume, out_dir) if resume else None
    if resume_path:
        state = ckpt.load_checkpoint(resume_path)
        saved = config_from_dict(state["config"])
        if saved.model != cfg.model:
            raise ValueError(f"--resume: checkpoint {resume_path!r} has model config {saved.model}, "
                             f"but this run asks for {cfg.model}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        iter_gen.set_state(state["iter_gen"])
        ckpt.restore_rng(state["rng"])
        start_step = int(state["step"])

    ddp = (DDP(step_module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
           if ctx.enabled else step_module)
    train_set, test_set = task.datasets(ctx.is_main, lambda: barrier(ctx))
    stream = batch_stream(train_set, tc.batch_size, ctx.rank, ctx.world_size, tc.seed, start_step,
                          cfg.data.num_workers)

    writer = None
    if ctx.is_main:
        os.makedirs(out_dir, exist_ok=True)
        _write_json(os.path.join(out_dir, "config.json"), cfg.to_dict())
        writer = MetricsWriter(out_dir, truncate_after=start_step if resume_path else None)

    def save(step: int) -> None:
        if ctx.is_main:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                     "ema": ema.state_dict() if ema is not None else None,
                     "iter_gen": iter_gen.get_state(), "rng": ckpt.capture_rng(), "step": step,
                     "config": cfg.to_dict(), "world_size": ctx.world_size}
            ckpt.save_checkpoint(ckpt_dir, state, step, tc.keep_ckpts)
        barrier(ctx)

    def run_eval(step: int) -> Dict[str, float]:
        with (ema.applied(model) if ema is not None else nullcontext()):
            res = evaluate(task, model, test_set, cfg, ctx)
        row = {"step": step, **_summarise_eval(res)}
        if writer is not None:
            writer.write(row)
        return row

    bar = None
    if ctx.is_main and progress:
        from tqdm import tqdm
        bar = tqdm(total=tc.steps, initial=start_step, desc="train", dynamic_ncols=True)

    last_row: Dict[str, float] = {}
    time_limited = None
    autocast = (torch.autocast(ctx.device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext())
    for step in range(start_step, tc.steps):
        images, gt = next(stream)
        images, gt = images.to(ctx.device, non_blocking=True), gt.to(ctx.device, non_blocking=True)
        max_iter = cfg.solver.max_iter
        if cfg.solver.stochastic_max_iter:
            max_iter = int(torch.randint(1, max_iter + 1, (1,), generator=iter_gen))
        model.train()
        with autocast:
            out = ddp(images, max_iter)
        coord_loss = loss_fn(out.keypoints.float(), gt)
        loss = coord_loss + cfg.solver.jac_reg * out.reg.float()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss ({float(loss)}) at step {step + 1}; resume from the "
                                     f"last checkpoint in {ckpt_dir} with a lower optim.lr or train.amp=off")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        rec = out.backward
        bwd_fail = (float(rec.failed.float().mean()) if rec is not None and rec.failed is not None
                    else float("nan"))
        if "after_backward" in hooks:
            hooks["after_backward"](step=step + 1, model=model)
        scaler.unscale_(optimizer)
        gnorm = (nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                 if cfg.optim.grad_clip > 0 else torch.zeros(()))
        scaler.step(optimizer)
        scaler.update()
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        if ema is not None:
            ema.update(model)

        done = step + 1
        with torch.no_grad():
            nme = nme_torch(out.keypoints.detach(), gt, task.iod).mean()
        metrics = reduce_mean({"loss": float(coord_loss.detach()), "nme": 100.0 * float(nme), "reg": float(out.reg.detach()),
                               "iters": out.nstep, "residual": out.residual, "bwd_fail": bwd_fail,
                               "grad_norm": float(gnorm)}, ctx)
        row = {"step": done, **metrics, "lr": lr, "max_iter": max_iter, "time": round(time.time() - t_start, 3)}
        if "after_step" in hooks:
            hooks["after_step"](step=done, metrics=row)
        if writer is not None and (done % tc.log_every == 0 or done == tc.steps):
            writer.write(row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", nme=f"{row['nme']:.2f}",
                            it=f"{row['iters']:.1f}", res=f"{row['residual']:.1e}", refresh=False)
        last_row = row
        if tc.ckpt_every and done % tc.ckpt_every == 0 and done != tc.steps:
            save(done)
        if tc.eval_every and done % tc.eval_every == 0 and done != tc.steps:
            run_eval(done)
        if tc.time_limit_min and done != tc.steps:
            over = float(time.time() - t_start > 60 * tc.time_limit_min)
            if reduce_mean({"over": over}, ctx)["over"] > 0:  # every rank stops at the same step
                time_limited = done
                if writer is not None and done % tc.log_every:
                    writer.write(row)
                break
        if stop_after is not None and done >= stop_after and done != tc.steps:
            if bar is not None:
                bar.close()
            return {"stopped_at": done, "last": last_row}

    if bar is not None:
        bar.close()
    final_step = time_limited or max(tc.steps, start_step)
    if time_limited or start_step < tc.steps or not os.path.isfile(os.path.join(ckpt_dir, ckpt.LAST)):
        save(final_step)
    final = run_eval(final_step)
    summary = {"steps": final_step, "last": last_row, "final_eval": final,
               "train_seconds": round(time.time() - t_start, 1), "world_size": ctx.world_size,
               "out_dir": out_dir, "planned_steps": tc.steps, "stopped_by_time_limit": time_limited is not None}
    if ctx.is_main:
        writer.close()
        export_model(os.path.join(out_dir, "model_final.pt"), task, model, ema, cfg)
        summary["curves"] = plot_curves(read_metrics(writer.jsonl_path), os.path.join(out_dir, "curves.png"))
        _write_json(os.path.join(out_dir, "summary.json"), summary)
    barrier(ctx)
    return summary


def export_model(path: str, task, model: nn.Module, ema: Optional[EMA], cfg: Config) -> str:
    """The final weights (EMA when enabled) as a model checkpoint: for an LDEQ,
    :func:`ldeq.model.checkpoint.save_checkpoint`'s format (the official ``{'args', 'state_dict'}``
    plus our config; loads with ``ldeq.model.checkpoint.load_checkpoint``, ``ldeq eval`` and the
    video pipeline), with the training config under ``extra['train_config']``."""
    with (ema.applied(model) if ema is not None else nullcontext()):
        if hasattr(model, "deq_layer"):
            from ldeq.model.checkpoint import save_checkpoint
            return save_checkpoint(model, path, extra={"train_config": cfg.to_dict()})
        sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    ckpt.atomic_torch_save({"state_dict": sd, "extra": {"train_config": cfg.to_dict()}}, path)
    return path


def _write_json(path: str, obj) -> None:
    atomic_write_json(path, obj, indent=2, default=_jsonable)


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, float) and math.isnan(o):
        return None
    return str(o)
