"""End-to-end LDEQ speed: ldeq's default path against the official-style plain-PyTorch path.

One process, the same random weights (``PlainLDEQ.load_state_dict(ldeq.state_dict())``, strict),
the same inputs, the two paths interleaved round by round. The plain path
(``benchmarks/_plain_ldeq.py``) is what a user of the official code runs: NCHW, eager,
``cat([z, x])`` before every cell call, soft-argmax and decode as torch expressions, the official
last-iterate loop (``fixed_point_last``, residual read back each iteration) and the DEQ
repository's IFT hook. ldeq runs ``model(images, solver='fixed_point_last', max_iter, tol=0)``
(inference), ``LDEQSolve`` (the RwR step, as ``ldeq video`` runs it) and ``model(..., grad=...)``
(training); its default path is the packed channels-last cell of ``ldeq.model.fast``.

Works (per thread count): ``solve_b1`` / ``solve_b8`` (inference, max_iter iterations + the
final step, from zeros), ``rwr_b1`` (one warm RwR step: max_iter_warm iterations + final step
from the previous state; frames/s), ``jfb_b4`` / ``ift_b4`` (training step: forward, L1 keypoint
loss, backward, SGD step with lr 0 so both paths keep the same weights; IFT backward: b_max_iter
VJPs each). Agreement: keypoints max |ldeq - plain| (normalised units), training loss and the
head-weight gradient. Also: GFLOP per cell call (torch's FLOP counter on the official cell) and
the rate each path achieves per cell call against the best 3x3 224->224 convolution measured in
the same run (NCHW, channels-last, prepacked); a per-category torch.profiler breakdown of a full
solve; bf16 autocast next to float32; ``--compile``: torch.compile (inductor, freezing) of the cell
step, first-call time apart from steady state; ``--device cuda``: the sync-free warm step and
fixed-budget solve captured as CUDA graphs (written for CUDA, not run on the CPU-only dev machine).

    flock /tmp/ldeq_bench.lock python benchmarks/bench_e2e.py --threads 2 1 --rounds 3
    python benchmarks/bench_e2e.py --preset tiny --rounds 1        # seconds, smoke test
Writes benchmarks/results/e2e_<device>.json and prints markdown tables.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _plain_ldeq import PlainLDEQ  # noqa: E402

from ldeq._io import atomic_write_json  # noqa: E402
from ldeq.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from ldeq.model import LDEQ, LDEQConfig, fast  # noqa: E402
from ldeq.video.model_solve import LDEQSolve  # noqa: E402

PRESETS = {
    "debug": dict(),  # the authors' debug widths 224/224/24, image 256 (heatmaps 64)
    "small": dict(injection_width=64, cell_base_width=64, cell_width_increment=16),
    "tiny": dict(injection_width=8, cell_base_width=8, cell_width_increment=4, heatmap_size=16, image_size=64),
}
WORKS = ("solve_b1", "solve_b8", "rwr_b1", "jfb_b4", "ift_b4")
KP_TOL = 1e-3  # keypoints agreement target (normalised units), issue 14


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, cpu=None):
    """(wall seconds, fn()); appends the process CPU seconds to ``cpu`` when given."""
    _sync(device)
    c = time.process_time()
    t = time.perf_counter()
    out = fn()
    _sync(device)
    dt = time.perf_counter() - t
    if cpu is not None:
        cpu.append(time.process_time() - c)
    return dt, out


def _loadavg():
    return open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else []


# ------------------------------------------------------------------------------------------ the works
class Works:
    """Builds, for each work, a pair of callables (plain, ldeq) returning comparable outputs."""

    def __init__(self, model, plain, cfg, device, max_iter, max_iter_warm, b_max_iter, seed=0):
        self.model, self.plain, self.cfg, self.device = model, plain, cfg, device
        self.max_iter, self.max_iter_warm, self.b_max_iter = max_iter, max_iter_warm, b_max_iter
        g = torch.Generator().manual_seed(seed)
        n = cfg.image_size
        self.raw = {B: torch.rand(B, 3, n, n, generator=g).to(device) for B in (1, 4, 8)}  # RGB in [0, 1]
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        self.norm = lambda im: (im - mean) / std
        self.images = {B: self.norm(im) for B, im in self.raw.items()}
        self.target = torch.rand(4, cfg.n_keypoints, 2, generator=g).to(device)
        self.solve = LDEQSolve(model)
        with torch.no_grad():  # the previous frame's state for the RwR step (same for both paths)
            self.z_prev = model(self.images[1], solver="fixed_point_last", max_iter=max_iter, tol=0.0).z_star.detach()

    def pair(self, work):
        m, p = self.model, self.plain
        if work.startswith("solve_b"):
            x = self.images[int(work[7:])]

            def plain():
                with torch.no_grad():
                    return p(x, max_iter=self.max_iter)[0]

            def ldeq():
                with torch.no_grad():
                    return m(x, solver="fixed_point_last", max_iter=self.max_iter, tol=0.0).keypoints
            return plain, ldeq
        if work == "rwr_b1":
            raw, z0 = self.raw[1], self.z_prev

            def plain():
                with torch.no_grad():
                    return p(self.norm(raw), z0=z0, max_iter=self.max_iter_warm)[0]

            def ldeq():
                return self.solve(raw, z0, self.max_iter_warm)[0]
            return plain, ldeq
        grad = work[:3]
        x = self.images[4]
        opt_p = torch.optim.SGD(p.parameters(), lr=0.0)
        opt_m = torch.optim.SGD(m.parameters(), lr=0.0)

        def step(module, opt, fwd):
            opt.zero_grad(set_to_none=True)
            kp = fwd()
            loss = (kp - self.target).abs().mean()
            loss.backward()
            g = m.deq_layer.cell.head.conv.weight.grad if module is m else p.deq_layer.cell.head.conv.weight.grad
            g = g.detach().clone()
            opt.step()
            return loss.detach(), g

        def plain():
            return step(p, opt_p, lambda: p(x, max_iter=self.max_iter, grad=grad, b_max_iter=self.b_max_iter)[0])

        def ldeq():
            kw = dict(b_solver="fixed_point_last", b_max_iter=self.b_max_iter, b_tol=0.0) if grad == "ift" else {}
            with warnings.catch_warnings():  # b_tol=0: the backward solve "fails" to converge by design
                warnings.simplefilter("ignore", RuntimeWarning)
                return step(m, opt_m, lambda: m(x, solver="fixed_point_last", max_iter=self.max_iter, tol=0.0,
                                                grad=grad, deq_kwargs=kw).keypoints)
        return plain, ldeq


def agreement(work, out_plain, out_ldeq):
    if isinstance(out_plain, tuple):  # training: (loss, head-weight grad)
        (lp, gp), (lm, gm) = out_plain, out_ldeq
        return {"loss_abs_diff": float((lp - lm).abs()),
                "grad_rel_diff": float((gp - gm).norm() / gp.norm().clamp_min(1e-30))}
    return {"keypoints_max_abs_diff": float((out_plain - out_ldeq).abs().max())}


def run_works(works, names, rounds, device):
    """Interleaved rounds: per work, plain then ldeq, ``rounds`` times after one warm-up each."""
    res = {}
    for name in names:
        plain, ldeq = works.pair(name)
        outs = {"plain": plain(), "ldeq": ldeq()}  # warm-up (primitive creation, weight packing)
        times, cpu = {"plain": [], "ldeq": []}, {"plain": [], "ldeq": []}
        for _ in range(rounds):
            for k, fn in (("plain", plain), ("ldeq", ldeq)):
                dt, _ = _time(fn, device, cpu[k])
                times[k].append(dt)
        B = int(name.split("_b")[1])
        row = {"batch": B, "load": _loadavg(), **agreement(name, outs["plain"], outs["ldeq"])}
        for k in times:
            row[k] = {"best_s": min(times[k]), "median_s": statistics.median(times[k]), "all_s": times[k],
                      "items_per_s": B / min(times[k]), "cpu_s": min(cpu[k])}
        row["speedup"] = min(times["plain"]) / min(times["ldeq"])
        row["speedup_cpu_time"] = min(cpu["plain"]) / min(cpu["ldeq"])
        res[name] = row
        diffs = {k: v for k, v in row.items() if "diff" in k}
        print(f"  {name}: plain {min(times['plain']):.3f} s, ldeq {min(times['ldeq']):.3f} s, "
              f"x{row['speedup']:.2f} (CPU time x{row['speedup_cpu_time']:.2f}), {diffs}, load {row['load']}",
              flush=True)
    return res


# ------------------------------------------------------------------------------------------ cell vs floor
def conv_floor(device, rounds, width=224, size=64):
    """Best GFLOP/s of a lone 3x3 width->width convolution on size x size, batch 1 (three layouts)."""
    g = torch.Generator().manual_seed(1)
    w = (torch.randn(width, width, 3, 3, generator=g) * 0.02).to(device)
    b = torch.zeros(width, device=device)
    x = torch.randn(1, width, size, size, generator=g).to(device)
    flops = 2 * width * width * 9 * size * size
    cands = {"nchw": lambda: F.conv2d(x, w, b, padding=1)}
    if device.type == "cpu":
        xc = x.contiguous(memory_format=torch.channels_last)
        cands["channels_last"] = lambda: F.conv2d(xc, w, b, padding=1)
        if fast.packed_available():
            wp = torch._C._nn.mkldnn_reorder_conv2d_weight(w.to_mkldnn(), [1, 1], [1, 1], [1, 1], 1, list(x.shape))
            cands["prepacked"] = lambda: torch.ops.mkldnn._convolution_pointwise(
                xc, wp, b, [1, 1], [1, 1], [1, 1], 1, "none", [], "")
    out = {}
    with torch.no_grad():
        for k, fn in cands.items():
            fn()
            out[k] = flops / min(_time(fn, device)[0] for _ in range(max(3, rounds))) / 1e9
    return out


def cell_rates(model, plain, cfg, device, rounds):
    """Time of one cell call (batch 1) on each path and the official cell's FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode
    g = torch.Generator().manual_seed(2)
    S = cfg.heatmap_size
    x = torch.randn(1, cfg.injection_width, S, S, generator=g).to(device)
    z = torch.rand(1, cfg.z_width, S, S, generator=g).to(device)
    pc = plain.deq_layer.cell
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            pc(z, x)
        flops = fc.get_total_flops()
        xl = x.contiguous(memory_format=torch.channels_last) if device.type == "cpu" else x
        c = model.cell_inject(xl)
        inject_flops = 2 * c.numel() * cfg.injection_width
        fns = {"plain": lambda: pc(z, x), "ldeq": lambda: model.cell_step(z, c)}
        ts = {k: [] for k in fns}
        for fn in fns.values():
            fn()
        for _ in range(max(3, rounds)):
            for k, fn in fns.items():
                ts[k].append(_time(fn, device)[0])
    return {"gflop_per_call": flops / 1e9, "injection_gflop_done_once": inject_flops / 1e9,
            **{f"{k}_s": min(v) for k, v in ts.items()}}


# ------------------------------------------------------------------------------------------ profile
_COPIES = {"copy_", "cat", "contiguous", "clone", "empty", "empty_like", "empty_strided", "_to_copy", "to",
           "zeros", "zeros_like", "fill_", "zero_", "as_strided", "resize_", "new_zeros", "new_empty"}
_NORMS = {"group_norm", "native_group_norm", "batch_norm", "native_batch_norm", "_batch_norm_impl_index",
          "_native_batch_norm_legit_no_training", "layer_norm", "native_layer_norm"}


def _category(name: str) -> str:
    """torch.profiler op name -> the issue's categories."""
    op = name.split("::")[-1]
    if "conv" in op:  # conv2d, convolution, mkldnn_convolution, _slow_conv2d_forward, _convolution_pointwise
        return "convolution"
    if "reorder" in op or op == "to_mkldnn":
        return "weight packing"
    if name.startswith("ldeq::heatmap"):
        return "ldeq heatmap kernels"
    if name.startswith("ldeq::"):
        return "ldeq solver kernels"
    if op in _COPIES:
        return "copies / cat / alloc"
    if "pool" in op or "upsample" in op:
        return "pooling / upsampling"
    if op in _NORMS:
        return "GroupNorm / BatchNorm"
    if "leaky_relu" in op:
        return "LeakyReLU"
    return "other (elementwise, reductions)"


def profile_solve(fn):
    from torch.profiler import ProfilerActivity, profile
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    cats, slow = {}, 0
    total = 0.0
    for ev in prof.key_averages():
        t = ev.self_cpu_time_total
        total += t
        cats[_category(ev.key)] = cats.get(_category(ev.key), 0.0) + t
        if "_slow_conv2d" in ev.key:
            slow += ev.count
    return {"self_ms": {k: v / 1e3 for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
            "share": {k: v / total for k, v in cats.items()}, "slow_conv2d_calls": slow, "total_ms": total / 1e3}


# ------------------------------------------------------------------------------------------ extras
def autocast_speed(model, works, device, rounds):
    x = works.images[1]
    kw = dict(solver="fixed_point_last", max_iter=works.max_iter, tol=0.0)

    def f32():
        with torch.no_grad():
            return model(x, **kw).keypoints

    def bf16():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(x, **kw)
        assert out.z_star.dtype == torch.float32
        return out.keypoints
    a, b = f32(), bf16()
    ts = {"float32": [], "bf16_autocast": []}
    for _ in range(rounds):
        for k, fn in (("float32", f32), ("bf16_autocast", bf16)):
            ts[k].append(_time(fn, device)[0])
    return {**{f"{k}_s": min(v) for k, v in ts.items()}, "keypoints_max_abs_diff": float((a - b).abs().max())}


def compile_speed(model, cfg, device, rounds):
    """torch.compile (inductor, freezing) of the cell step; None where compiling fails."""
    import torch._inductor.config as icfg
    g = torch.Generator().manual_seed(3)
    S = cfg.heatmap_size
    z = torch.rand(1, cfg.z_width, S, S, generator=g).to(device)
    x = torch.randn(1, cfg.injection_width, S, S, generator=g).to(device)
    with torch.no_grad():
        c = model.cell_inject(x.contiguous(memory_format=torch.channels_last) if device.type == "cpu" else x)
        eager = model.cell_step(z, c)
        try:
            with icfg.patch(freezing=True):
                step = torch.compile(lambda a, b: model.cell_step(a, b), dynamic=False)
                t0 = time.perf_counter()
                out = step(z, c)
                first = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001  (a missing compiler, an unsupported op: report it)
            return {"error": f"{type(e).__name__}: {e}"[:300]}
        ts = {"packed_eager": [], "compiled": []}
        for _ in range(max(3, rounds)):
            ts["packed_eager"].append(_time(lambda: model.cell_step(z, c), device)[0])
            ts["compiled"].append(_time(lambda: step(z, c), device)[0])
    return {"first_call_s": first, **{f"{k}_s": min(v) for k, v in ts.items()},
            "max_abs_diff": float((out - eager).abs().max())}


def cuda_graph_rwr(model, works, rounds):
    """CUDA only: the sync-free warm step and fixed-budget solve captured as CUDA graphs."""
    dev = torch.device("cuda")
    x, z0 = works.images[1].clone(), works.z_prev.clone()

    def capture(fn, *static):
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                fn(*static)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn(*static)
        return graph, out
    res = {}
    with torch.no_grad():
        for name, fn, static in (("rwr_step", lambda a, b: fast.warm_step(model, a, b, works.max_iter_warm), (x, z0)),
                                 ("solve", lambda a: fast.fixed_budget_solve(model, a, works.max_iter), (x,))):
            eager = fn(*static)
            graph, out = capture(fn, *static)
            graph.replay()
            torch.cuda.synchronize()
            diff = float((out[0] - eager[0]).abs().max())
            te = min(_time(lambda: fn(*static), dev)[0] for _ in range(max(3, rounds)))
            tg = min(_time(graph.replay, dev)[0] for _ in range(max(3, rounds)))
            res[name] = {"eager_s": te, "cuda_graph_s": tg, "keypoints_max_abs_diff": diff}
    return res


# ------------------------------------------------------------------------------------------ driver
def run(preset="debug", threads=(2, 1), rounds=3, works=WORKS, max_iter=5, max_iter_warm=1, b_max_iter=5,
        device="cpu", profile=True, autocast=True, compile_=False, threads_all_works=(2,)):
    device = torch.device(device)
    torch.manual_seed(0)
    cfg = LDEQConfig(**PRESETS[preset], max_iter=max_iter, tol=0.0, solver="fixed_point_last")
    model = LDEQ(cfg).to(device).eval()
    plain = PlainLDEQ(cfg).to(device).eval()
    plain.load_state_dict(model.state_dict(), strict=True)
    W = Works(model, plain, cfg, device, max_iter, max_iter_warm, b_max_iter)
    out = {"preset": preset, "config": cfg.to_dict(), "device": str(device), "rounds": rounds,
           "max_iter": max_iter, "max_iter_warm": max_iter_warm, "b_max_iter": b_max_iter,
           "packed_path": fast.packed_available(), "load_before": _loadavg(),
           "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}", "threads": {}}
    for t in threads:
        torch.set_num_threads(t)
        print(f"threads {t}:", flush=True)
        r = {}
        names = [w for w in works if t in threads_all_works or w in ("solve_b1", "rwr_b1")]
        r["works"] = {}
        for name in names:
            train = name[:3] in ("jfb", "ift")
            model.train(train)
            plain.train(train)
            r["works"].update(run_works(W, [name], rounds, device))
        model.eval()
        plain.eval()
        r["floor_gflops"] = conv_floor(device, rounds)
        r["cell"] = cell_rates(model, plain, cfg, device, rounds)
        best = max(r["floor_gflops"].values())
        c = r["cell"]
        c["floor_s"] = c["gflop_per_call"] / best
        c["ldeq_vs_floor"] = c["ldeq_s"] / c["floor_s"]
        c["plain_vs_floor"] = c["plain_s"] / c["floor_s"]
        c["ldeq_gflops_equiv"] = c["gflop_per_call"] / c["ldeq_s"]
        c["plain_gflops"] = c["gflop_per_call"] / c["plain_s"]
        print(f"  conv floor {r['floor_gflops']}, cell {c}", flush=True)
        if profile and device.type == "cpu":
            x = W.images[1]
            with torch.no_grad():
                r["profile"] = {
                    "plain": profile_solve(lambda: plain(x, max_iter=max_iter)),
                    "ldeq": profile_solve(lambda: model(x, solver="fixed_point_last", max_iter=max_iter, tol=0.0))}
            print(f"  profile {r['profile']}", flush=True)
        if autocast and device.type == "cpu" and t == threads[0]:
            r["autocast"] = autocast_speed(model, W, device, rounds)
            print(f"  autocast {r['autocast']}", flush=True)
        if compile_ and t == threads[0]:
            r["compile"] = compile_speed(model, cfg, device, rounds)
            print(f"  compile {r['compile']}", flush=True)
        if device.type == "cuda" and t == threads[0]:
            r["cuda_graph"] = cuda_graph_rwr(model, W, rounds)
            print(f"  cuda graph {r['cuda_graph']}", flush=True)
        r["load_after"] = _loadavg()
        out["threads"][str(t)] = r
    return out


def to_markdown(res) -> str:
    lines = []
    for t, r in res["threads"].items():
        lines += [f"threads {t} (load after: {' '.join(r['load_after'])})", "",
                  "| work | plain PyTorch | ldeq | speedup (wall) | speedup (CPU time) | agreement |",
                  "|---|---:|---:|---:|---:|---|"]
        for name, w in r["works"].items():
            unit = "frames/s" if name.startswith("rwr") else "s"
            val = (lambda m: f"{m['items_per_s']:.2f} frames/s") if unit == "frames/s" else (
                lambda m: f"{m['best_s'] * 1e3:.0f} ms")
            agree = ", ".join(f"{k} {v:.1e}" for k, v in w.items() if "diff" in k)
            lines.append(f"| {name} | {val(w['plain'])} | {val(w['ldeq'])} | {w['speedup']:.2f}x | "
                         f"{w['speedup_cpu_time']:.2f}x | {agree} |")
        c = r["cell"]
        fl = ", ".join(f"{k} {v:.0f}" for k, v in r["floor_gflops"].items())
        lines += ["", f"cell call (batch 1): {c['gflop_per_call']:.2f} GFLOP (official cell); plain "
                  f"{c['plain_s'] * 1e3:.0f} ms ({c['plain_gflops']:.0f} GFLOP/s, {c['plain_vs_floor']:.2f}x floor), "
                  f"ldeq {c['ldeq_s'] * 1e3:.0f} ms ({c['ldeq_gflops_equiv']:.0f} GFLOP/s equivalent, "
                  f"{c['ldeq_vs_floor']:.2f}x floor); 3x3 conv GFLOP/s: {fl}", ""]
        if "profile" in r:
            lines += ["| category (full solve, batch 1, self time) | plain ms | plain % | ldeq ms | ldeq % |",
                      "|---|---:|---:|---:|---:|"]
            pp, pl = r["profile"]["plain"], r["profile"]["ldeq"]
            for k in sorted(set(pp["self_ms"]) | set(pl["self_ms"]), key=lambda k: -pp["self_ms"].get(k, 0)):
                lines.append(f"| {k} | {pp['self_ms'].get(k, 0):.0f} | {100 * pp['share'].get(k, 0):.1f} | "
                             f"{pl['self_ms'].get(k, 0):.0f} | {100 * pl['share'].get(k, 0):.1f} |")
            lines += [f"| `_slow_conv2d_forward` calls | {pp['slow_conv2d_calls']} | | "
                      f"{pl['slow_conv2d_calls']} | |", ""]
        if "autocast" in r:
            a = r["autocast"]
            lines += [f"bf16 autocast full solve b1: {a['bf16_autocast_s'] * 1e3:.0f} ms vs float32 "
                      f"{a['float32_s'] * 1e3:.0f} ms (keypoints differ by {a['keypoints_max_abs_diff']:.1e})", ""]
        if "compile" in r:
            lines += [f"torch.compile (freezing) cell step: {r['compile']}", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="debug")
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    p.add_argument("--all-works-threads", type=int, nargs="+", default=None,
                   help="thread counts that run every work (default: all); the others run solve_b1 and rwr_b1")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--works", nargs="+", choices=WORKS, default=list(WORKS))
    p.add_argument("--max-iter", type=int, default=5)
    p.add_argument("--max-iter-warm", type=int, default=1)
    p.add_argument("--b-max-iter", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--no-autocast", action="store_true")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (freezing) of the cell step")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    for t in a.threads:
        if t < 1:
            p.error(f"--threads: expected integers >= 1, got {t}")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {a.device}: no CUDA device is available")
    res = run(a.preset, a.threads, a.rounds, a.works, a.max_iter, a.max_iter_warm, a.b_max_iter, a.device,
              not a.no_profile, not a.no_autocast, a.compile,
              tuple(a.all_works_threads) if a.all_works_threads is not None else tuple(a.threads))
    md = to_markdown(res)
    print(md)
    out = a.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                f"e2e_{torch.device(a.device).type}.json")
    atomic_write_json(out, {**res, "markdown": md,
                            "command": "python benchmarks/bench_e2e.py " + " ".join(argv or sys.argv[1:])}, indent=2)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
