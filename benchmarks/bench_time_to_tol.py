"""Time to tolerance: ldeq.solvers against TorchDEQ on three DEQ workloads, same process.

    .venv/bin/python benchmarks/bench_time_to_tol.py [--workloads mdeq transformer ldeq] [--batch 4]
        [--tol 1e-4] [--max-evals 200] [--repeats 1] [--ldeq-repeats N] [--ldeq-batch N] [--ldeq-image-size 256]
        [--ldeq-rho 0.9] [--ldeq-checkpoint PATH]
        [--quick] [--json out.json]
    .venv/bin/python benchmarks/bench_time_to_tol.py --probe [--probe-gains 2.5 3 4] [--probe-seeds 0 1]

--probe: the count-based check of "default Anderson converges wherever Broyden does" (no timing: the
f-evaluation counts and convergence do not depend on the machine's load). Over a grid of transformer
instances (weight gains x seeds, B = 4; probe_instance()) it runs ldeq's default Anderson, its
Broyden and type-II Anderson with restarts (the default before type I), and exits 1 when some
instance converges with Broyden but not with default Anderson. tests/test_solvers_anderson_safeguards.py
runs the same check on gains 2.5, 3, 4 x seeds 0, 1.

Every solve stops when every sample's relative residual ||f(z) - z|| / (||f(z)|| + 1e-9) is below
--tol, or after --max-evals evaluations of f (by the solver's own test). Reported per run: wall
time, time inside f, f evaluations, and the judge's verdict: one more, untimed evaluation of f at the
point the solver *returned*, the same for both libraries; "converged" = every sample's true relative
residual there is below --tol, "worst" its largest ("reported": the solver's own lowest residual,
which can differ: TorchDEQ's damped fixed-point iteration tests the damped step tau (f(x) - x) and
returns the point after it, 1.0-1.2x above tol on mdeq). Each library is run
with its defaults and over a small grid of m / lam / memory / damping; "best" is the fastest run in
which every sample converged (else the one with the lowest worst residual).

Workloads (float32, CPU unless --device cuda):
  mdeq:        a multi-scale convolutional cell (MDEQ-like) on a list state of three resolutions,
               (B, 16, 32, 32), (B, 32, 16, 16), (B, 64, 8, 8): per branch conv3x3-GN-ReLU-conv3x3-GN,
               plus the neighbouring branches (strided conv down, 1x1 conv + nearest upsample), plus
               the injection, ReLU. ldeq gets the list; TorchDEQ gets it flattened into one vector,
               as TorchDEQ's own DEQ layer does (MDEQWrapper).
  transformer: a post-LN transformer layer on sequences (B, 64, 128), 4 heads:
               h = LN(z + MHA(z) + x), f(z) = LN(h + MLP(h)).
  ldeq:        the LDEQ cell (ldeq.model, LDEQConfig() widths: 98 heatmaps, hourglass 224/+24,
               injection 224) at --ldeq-image-size (256: 64x64 heatmaps, the paper's), from random
               weights or --ldeq-checkpoint. The random cell is expansive (spectral radius of f's
               Jacobian at z0 = 0 about 12: no solver converges), so its z-weights W_z (the z part
               of the first 1x1 conv, the only place z enters f) are scaled to make that spectral
               radius --ldeq-rho (0.9; 0 keeps the random weights). At z0 = 0 the Jacobian is
               exactly proportional to the scale (f(z) = rest(W_z z + c)), so the scale is
               rho / rho_1, rho_1 estimated by 10 finite-difference power iterations on the
               unscaled cell (the mean of the last four ratios, the largest over the batch).

Random weights are drawn from a fixed seed (torch.manual_seed(0)); the mdeq cell's convs are scaled
by 0.9, the transformer's weight matrices by --transformer-gain (3: the case where plain Anderson
stalls and Broyden converges). On CPU denormals are flushed (both libraries; --no-flush-denormal
keeps them).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List

import torch
from torch import nn

import ldeq.solvers as S

RES_EPS = 1e-9


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------
# workloads
# --------------------------------------------------------------------------------------------
class MDEQCell(nn.Module):
    """Three-resolution residual cell; z = [z0 (B,16,32,32), z1 (B,32,16,16), z2 (B,64,8,8)]."""

    CH, RES = (16, 32, 64), (32, 16, 8)

    def __init__(self, scale=0.9):
        super().__init__()
        C = self.CH
        self.c1 = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1, bias=False) for c in C)
        self.n1 = nn.ModuleList(nn.GroupNorm(4, c) for c in C)
        self.c2 = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1, bias=False) for c in C)
        self.n2 = nn.ModuleList(nn.GroupNorm(4, c) for c in C)
        self.down = nn.ModuleList(nn.Conv2d(C[i], C[i + 1], 3, stride=2, padding=1, bias=False) for i in range(2))
        self.up = nn.ModuleList(nn.Conv2d(C[i + 1], C[i], 1, bias=False) for i in range(2))
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    m.weight.mul_(scale)

    def forward(self, z: List[torch.Tensor], x: List[torch.Tensor]) -> List[torch.Tensor]:
        y = [self.n2[i](self.c2[i](torch.relu(self.n1[i](self.c1[i](z[i]))))) for i in range(3)]
        out = []
        for i in range(3):
            s = y[i] + x[i]
            if i > 0:
                s = s + self.down[i - 1](y[i - 1])
            if i < 2:
                s = s + nn.functional.interpolate(self.up[i](y[i + 1]), scale_factor=2, mode="nearest")
            out.append(torch.relu(s))
        return out


class TransformerCell(nn.Module):
    """Post-LN transformer layer with input injection: (B, L, D) -> (B, L, D)."""

    def __init__(self, D=128, heads=4, hidden=256):
        super().__init__()
        self.attn = nn.MultiheadAttention(D, heads, batch_first=True)
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.mlp = nn.Sequential(nn.Linear(D, hidden), nn.GELU(), nn.Linear(hidden, D))

    def forward(self, z, x):
        h = self.ln1(z + self.attn(z, z, z, need_weights=False)[0] + x)
        return self.ln2(h + self.mlp(h))


def probe_instance(gain: float, seed: int, B: int = 4, L: int = 64, D: int = 128):
    """Transformer instance of the --probe grid: cell weights from torch.manual_seed(seed), matrices
    x gain, injection x ~ N(0, 1) from Generator seed + 10. Returns (f, z0)."""
    torch.manual_seed(seed)
    cell = TransformerCell(D=D, hidden=2 * D).eval()
    with torch.no_grad():
        for prm in cell.parameters():
            if prm.dim() == 2:
                prm.mul_(gain)
    x = torch.randn(B, L, D, generator=torch.Generator().manual_seed(seed + 10))
    return (lambda z: cell(z, x)), torch.zeros_like(x)


PROBE_SOLVERS = (("anderson", "default", {}), ("broyden", "default", {}),
                 ("anderson", "type II, restart 1.5", dict(kind="II", restart=1.5)))


def probe(gains, seeds, tol=1e-4, max_evals=200) -> int:
    """Count-based check: returns the number of instances where Broyden converges and default
    Anderson does not (0 = the target is met on this grid)."""
    torch.set_flush_denormal(True)
    print(f"probe: transformer (4, 64, 128), gains {list(gains)} x seeds {list(seeds)}, rel tol {tol}, "
          f"max {max_evals} f-evaluations; per solver: max f-evaluations over the batch (X: some sample "
          f"did not converge)", flush=True)
    conv = {(s, label): 0 for s, label, _ in PROBE_SOLVERS}
    misses, n = [], 0
    print("| gain | seed | " + " | ".join(f"{s} ({lab})" for s, lab, _ in PROBE_SOLVERS) + " |")
    print("|---|---|" + "---|" * len(PROBE_SOLVERS))
    for gain in gains:
        for seed in seeds:
            f, z0 = probe_instance(gain, seed)
            ok, cells = {}, []
            with torch.no_grad():
                for solver, label, kw in PROBE_SOLVERS:
                    _, st = S.get_solver(solver)(f, z0, max_iter=max_evals, tol=tol, stop_mode="rel", **kw)
                    ok[(solver, label)] = c = bool(st.converged.all())
                    conv[(solver, label)] += c
                    cells.append(f"{int(st.nstep.max())}{'' if c else ' X'}")
            n += 1
            if ok[("broyden", "default")] and not ok[("anderson", "default")]:
                misses.append((gain, seed))
            print(f"| {gain} | {seed} | " + " | ".join(cells) + " |", flush=True)
    print(f"\nconverged (all samples) on: " + ", ".join(f"{s} ({lab}) {conv[(s, lab)]}/{n}" for s, lab, _ in PROBE_SOLVERS))
    print(f"instances where Broyden converges and default Anderson does not: {misses or 'none'}", flush=True)
    return len(misses)


@torch.no_grad()
def jacobian_radius_at(f, z0, iters: int = 10, seed: int = 1) -> float:
    """Spectral radius of f's Jacobian at z0 by finite-difference power iteration (largest over the
    batch; the mean of the last four ratios, as a complex dominant pair makes them oscillate)."""
    f0 = f(z0)
    B = z0.shape[0]
    v = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed)).to(z0)
    shape = (B,) + (1,) * (z0.dim() - 1)
    v = v / v.reshape(B, -1).norm(dim=1).view(shape)
    eps = 1e-3 * f0.reshape(B, -1).norm(dim=1).view(shape)
    ratios = []
    for _ in range(iters):
        jv = (f(z0 + eps * v) - f0) / eps
        r = jv.reshape(B, -1).norm(dim=1)
        ratios.append(r)
        v = jv / r.view(shape)
    return float(torch.stack(ratios[-4:]).mean(0).max())


def make_workload(name: str, B: int, dev, a) -> Dict:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if name == "mdeq":
        cell = MDEQCell().to(dev).eval()
        x = [torch.randn(B, c, r, r, generator=g).to(dev) for c, r in zip(MDEQCell.CH, MDEQCell.RES)]
        z0 = [torch.zeros_like(t) for t in x]
        return dict(f=lambda z: cell(z, x), z0=z0, desc="MDEQ-like 3-scale conv cell, list state")
    if name == "transformer":
        cell = TransformerCell().eval()
        with torch.no_grad():
            for prm in cell.parameters():
                if prm.dim() == 2:
                    prm.mul_(a.transformer_gain)
        cell = cell.to(dev)
        x = torch.randn(B, 64, 128).to(dev)
        return dict(f=lambda z: cell(z, x), z0=torch.zeros_like(x),
                    desc=f"transformer layer (B, 64, 128), weight gain {a.transformer_gain}")
    if name == "ldeq":
        from ldeq.model.config import LDEQConfig
        from ldeq.model.ldeq import LDEQ
        if a.ldeq_checkpoint:
            from ldeq.model.checkpoint import load_checkpoint
            model = load_checkpoint(a.ldeq_checkpoint)
        else:
            model = LDEQ(LDEQConfig(image_size=a.ldeq_image_size))
        model = model.to(dev).eval()
        size = model.cfg.image_size
        imgs = torch.rand(B, 3, size, size, generator=g).to(dev) * 2 - 1
        with torch.no_grad():
            c = model.deq_layer.cell.inject(model.injection(imgs))
        z0 = model.zeros_z0(B, imgs)
        cell = model.deq_layer.cell
        desc = f"LDEQ cell {tuple(z0.shape[1:])}" + (" (checkpoint)" if a.ldeq_checkpoint else " (random init)")
        if not a.ldeq_checkpoint and a.ldeq_rho > 0:
            rho1 = jacobian_radius_at(lambda z: cell.step(z, c), z0)
            scale = a.ldeq_rho / rho1
            with torch.no_grad():
                cell.tail.conv.weight[:, :cell.z_width].mul_(scale)
            desc += f", W_z x {scale:.4f} (spectral radius at z0 {rho1:.2f} -> {a.ldeq_rho})"
        return dict(f=lambda z: cell.step(z, c), z0=z0, desc=desc)
    raise ValueError(f"unknown workload {name!r}")


# --------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------
class TimedF:
    def __init__(self, f, dev):
        self.f, self.dev, self.t, self.calls = f, dev, 0.0, 0

    def __call__(self, z):
        _sync(self.dev)
        t0 = time.perf_counter()
        out = self.f(z)
        _sync(self.dev)
        self.t += time.perf_counter() - t0
        self.calls += 1
        return out


def _flatten(z):
    """A solver's state (tensor or list of batch-first tensors) as one (B, d) matrix."""
    if torch.is_tensor(z):
        return z.reshape(z.shape[0], -1)
    return torch.cat([t.reshape(t.shape[0], -1) for t in z], 1)


def flat_f(f, z0):
    """f on the concatenated state (what TorchDEQ's DEQ layer hands its solvers for a list state)."""
    if torch.is_tensor(z0):
        return f, z0
    B = z0[0].shape[0]
    shapes = [t.shape[1:] for t in z0]
    sizes = [t[0].numel() for t in z0]

    def fv(v):
        parts = [p.view((B,) + tuple(s)) for p, s in zip(v.split(sizes, 1), shapes)]
        return _flatten(f(parts))
    return fv, _flatten(z0)


def ldeq_configs(max_evals, quick):
    c = [("anderson", "default", dict()), ("broyden", "default", dict()), ("fixed_point", "default", dict())]
    if not quick:
        c += [("anderson", "m=10", dict(m=10)), ("anderson", "beta=0.8", dict(beta=0.8)),
              ("anderson", "type II, restart 1.5", dict(kind="II", restart=1.5)), ("broyden", "memory=30", dict(memory=30)),
              ("fixed_point", "beta=0.8", dict(beta=0.8))]
    return c


def torchdeq_configs(max_evals, quick):
    c = [("anderson", "default", dict()), ("broyden", "default", dict()), ("fixed_point_iter", "default", dict())]
    if not quick:
        c += [("anderson", "m=10", dict(m=10)), ("anderson", "tau=0.8", dict(tau=0.8)),
              ("anderson", "lam=1e-8", dict(lam=1e-8)), ("broyden", "LBFGS_thres=30", dict(LBFGS_thres=30)),
              ("fixed_point_iter", "tau=0.8", dict(tau=0.8))]
    return c


def run_ldeq(f, z0, solver, kw, tol, max_evals, dev):
    tf = TimedF(f, dev)
    _sync(dev)
    t0 = time.perf_counter()
    with torch.no_grad():
        z, st = S.get_solver(solver)(tf, z0, max_iter=max_evals, tol=tol, stop_mode="rel", **kw)
    _sync(dev)
    wall = time.perf_counter() - t0
    return judged_row(f, z0, _flatten(z), tol, wall=wall, f_time=tf.t, evals=tf.calls, reported=float(st.rel_lowest.max()))


def run_torchdeq(f, z0, solver, kw, tol, max_evals, dev):
    import torchdeq.solver as T
    fv, v0 = flat_f(f, z0)
    tf = TimedF(fv, dev)
    # TorchDEQ's broyden evaluates f max_iter + 1 times, the others max_iter times.
    budget = max_evals - 1 if solver == "broyden" else max_evals
    _sync(dev)
    t0 = time.perf_counter()
    with torch.no_grad():
        z, _, info = T.get_solver(solver)(tf, v0, max_iter=budget, tol=tol, stop_mode="rel", **kw)
    _sync(dev)
    wall = time.perf_counter() - t0
    return judged_row(f, z0, z, tol, wall=wall, f_time=tf.t, evals=tf.calls, reported=float(info["rel_lowest"].max()))


@torch.no_grad()
def true_residual(f, z0, z):
    """The judge, the same for both libraries: per-sample ||f(z) - z|| / (||f(z)|| + 1e-9) of the
    point a solver *returned* (z: (B, d)), with one more evaluation of f outside the timed region.
    A solver's own report can differ: TorchDEQ's damped fixed-point iteration tests the damped
    step tau (f(x) - x) and returns the point after it."""
    B = z.shape[0]
    if torch.is_tensor(z0):
        fz = f(z.reshape(z0.shape)).reshape(B, -1)
    else:
        fz = flat_f(f, z0)[0](z.reshape(B, -1))
    d = fz - z.reshape(fz.shape)
    return d.norm(dim=1) / (fz.norm(dim=1) + 1e-9)


def judged_row(f, z0, z, tol, **row):
    r = true_residual(f, z0, z)
    return dict(row, converged=bool((r < tol).all()), worst=float(r.max()))


def best_of(rows):
    conv = [r for r in rows if r["converged"]]
    return min(conv, key=lambda r: r["wall"]) if conv else min(rows, key=lambda r: r["worst"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", nargs="+", default=["mdeq", "transformer", "ldeq"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--max-evals", type=int, default=200)
    p.add_argument("--repeats", type=int, default=1, help="runs per setting, the fastest reported")
    p.add_argument("--ldeq-repeats", type=int, default=None, help="--repeats for the ldeq workload (default --repeats)")
    p.add_argument("--ldeq-image-size", type=int, default=256)
    p.add_argument("--ldeq-checkpoint", default=None)
    p.add_argument("--ldeq-rho", type=float, default=0.9,
                   help="random LDEQ cell: scale W_z to this spectral radius of the Jacobian at z0 (0: unscaled)")
    p.add_argument("--ldeq-batch", type=int, default=None, help="batch for the ldeq workload (default --batch)")
    p.add_argument("--quick", action="store_true", help="defaults only (no grid)")
    p.add_argument("--transformer-gain", type=float, default=3.0,
                   help="scale of the transformer's weight matrices (3: plain Anderson stalls, Broyden converges)")
    p.add_argument("--no-flush-denormal", action="store_true",
                   help="keep denormal floats (x86: Anderson's mixed iterates make the mdeq convs ~8x slower, "
                        "in both libraries)")
    p.add_argument("--json", default=None)
    p.add_argument("--probe", action="store_true", help="count-based check only (see above), no timing")
    p.add_argument("--probe-gains", type=float, nargs="+", default=[2.5, 3.0, 4.0])
    p.add_argument("--probe-seeds", type=int, nargs="+", default=[0, 1])
    a = p.parse_args(argv)
    if a.probe:
        return 1 if probe(a.probe_gains, a.probe_seeds, a.tol, a.max_evals) else 0
    dev = torch.device(a.device)
    if not a.no_flush_denormal and dev.type == "cpu":
        torch.set_flush_denormal(True)
    print(f"device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}, tol {a.tol} (rel), "
          f"max {a.max_evals} f-evaluations, load {open('/proc/loadavg').read().split()[:3]}", flush=True)
    all_rows = []
    for wname in a.workloads:
        B = a.ldeq_batch if (wname == "ldeq" and a.ldeq_batch) else a.batch
        w = make_workload(wname, B, dev, a)
        print(f"\n## {wname}: {w['desc']}, B={B}", flush=True)
        lc, tc = ldeq_configs(a.max_evals, a.quick), torchdeq_configs(a.max_evals, a.quick)
        # Warm-up (untimed): a short solve with every solver of both libraries, so that one-time
        # costs (allocator, oneDNN primitives, lazily packed weights) land on no measured run.
        for solver, _, _ in lc[:3]:
            run_ldeq(w["f"], w["z0"], solver, {}, 0.0, 8, dev)
        for solver, _, _ in tc[:3]:
            run_torchdeq(w["f"], w["z0"], solver, {}, 0.0, 8, dev)
        rows = []
        for i in range(max(len(lc), len(tc))):  # interleaved: load hits both libraries alike
            for lib, cfgs, fn in (("ldeq", lc, run_ldeq), ("torchdeq", tc, run_torchdeq)):
                if i >= len(cfgs):
                    continue
                solver, label, kw = cfgs[i]
                best = None
                reps = a.ldeq_repeats if (wname == "ldeq" and a.ldeq_repeats) else a.repeats
                for _ in range(reps):
                    r = fn(w["f"], w["z0"], solver, kw, a.tol, a.max_evals, dev)
                    best = r if best is None or r["wall"] < best["wall"] else best
                row = dict(workload=wname, B=B, lib=lib, solver=solver, setting=label, **best,
                           outside_f=best["wall"] - best["f_time"], load=open("/proc/loadavg").read().split()[0])
                rows.append(row)
                print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        all_rows += rows
        print("\n| library | solver | setting | wall s | f s | outside f s | f-evals | all converged (judged) | worst rel res (judged) | reported |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['lib']} | {r['solver']} | {r['setting']} | {r['wall']:.3f} | {r['f_time']:.3f} | "
                  f"{r['outside_f']:.3f} | {r['evals']} | {'yes' if r['converged'] else 'no'} | {r['worst']:.1e} | {r['reported']:.1e} |")
        bl = best_of([r for r in rows if r["lib"] == "ldeq"])
        bt = best_of([r for r in rows if r["lib"] == "torchdeq"])
        ratio = bt["wall"] / bl["wall"]
        print(f"\nbest ldeq: {bl['solver']} {bl['setting']} {bl['wall']:.3f} s ({bl['evals']} evals, "
              f"converged {bl['converged']}); best TorchDEQ: {bt['solver']} {bt['setting']} {bt['wall']:.3f} s "
              f"({bt['evals']} evals, converged {bt['converged']}, {bt['outside_f'] / bt['wall']:.0%} outside f); "
              f"TorchDEQ / ldeq = {ratio:.2f}x", flush=True)
        la = next(r for r in rows if r["lib"] == "ldeq" and r["solver"] == "anderson" and r["setting"] == "default")
        lb = next(r for r in rows if r["lib"] == "ldeq" and r["solver"] == "broyden" and r["setting"] == "default")
        print(f"ldeq Anderson default converged: {la['converged']} ({la['evals']} evals); "
              f"ldeq Broyden default converged: {lb['converged']} ({lb['evals']} evals)", flush=True)
    if a.json:
        tmp = a.json + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(all_rows, fh, indent=1)
        os.replace(tmp, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
