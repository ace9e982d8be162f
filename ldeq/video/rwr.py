"""Recurrence without Recurrence (RwR): landmarks on many videos at once, frame-synchronously.

The runner needs only a ``solve`` callable (the LDEQ model, or any stand-in):

    solve(images, z0, max_iter, **prox) -> (keypoints, z_star)
      images:    (B, 3, S, S) float32 RGB in [0, 1] (S = crop size, 256); normalisation is solve's job
      z0:        None (start from zeros) or a (B, ...) tensor of previous equilibria
      max_iter:  iteration budget of this solve
      prox:      only in modes 'prox' and 'adaptive': gamma = a float, or a (B, K) / (B, 1) tensor
                 (per sample / per landmark weight), anchor = (B, ...) tensor z*_{t-1}; in mode
                 'adaptive' also gamma_speed = float (see below). A solve that does not know
                 gamma_speed can still run 'off' / 'warm' / 'prox'.
      keypoints: (B, K, 2) (x, y) in crop units [0, 1) (crop pixels / S)
      z_star:    (B, ...) the equilibrium carried to the next frame (the state the keypoints were
                 decoded from, i.e. after the model's extra final step)

Modes (reference section 3):
  off   every frame from z0 = 0 with the full budget ``max_iter_full`` (per-frame inference).
  warm  the official RwR: frame 0 (and the first frame after a gap without face) from zeros with
        ``max_iter_full``; every other frame from z0 = z*_{t-1} with ``max_iter_warm`` (default 1).
  prox  our extension of the paper's constrained objective
        z*_t = argmin_z ||f(z; x_t) - z||^2 + gamma ||z - z*_{t-1}||^2:
        from z0 = z*_{t-1} we iterate the proximal map
            T(z) = (f(z; x_t) + gamma * z*_{t-1}) / (1 + gamma)
        for ``max_iter_prox`` steps (and the model's extra final step also uses T). Its fixed point
        satisfies z - f(z) = gamma (z*_{t-1} - z): the residual is traded against the distance to the
        previous equilibrium, which is the stationarity condition of the objective above when the
        Jacobian of f is neglected. gamma = 0 gives exactly ``warm``.
  adaptive  prox with a motion-compensated anchor and a per-landmark weight (our variant, chosen
        from the NME-NMF front, benchmarks/bench_rwr_front.py):
        1. the anchor z*_{t-1} is warped from frame t-1's crop into frame t's crop through the two
           crop affines (:func:`warp_states`), so the memory is held in frame coordinates and the
           detector box's jitter does not move it;
        2. one application q = f(anchor; x_t) gives each landmark's innovation
           d_k = ||kp_k(q) - kp_k(anchor)|| (crop units): how far frame t pulls it;
        3. gamma_k = gamma / (1 + (d_k / gamma_speed)^2) (gamma = ``adaptive_gamma``, gamma_speed =
           ``adaptive_speed``): a landmark the image pulls far (a moving face) gets little memory,
           one that only jitters (a still face, noise) keeps a lot;
        4. prox iterations with that per-landmark gamma, the first one reusing q (the same
           ``max_iter_adaptive`` + 1 cell calls per frame as prox);
        5. the landmarks (frame pixels) go through an innovation-gated constant-velocity Kalman
           (:class:`ldeq.video.filters.MotionKalman`, process noise ``adaptive_q``, gate
           ``adaptive_gate`` in units of the crop side; ``adaptive_q = 0`` skips it): the state
           carries the memory of the equilibrium, the output stage removes what flicker is left
           and follows a landmark as soon as it moves far. Reset with the state (first frame, gaps).
        The state must be a stack of maps over the crop (B, C, S, S), as the LDEQ's heatmaps are.

Crops (reference section 3): box (x1, y1, x2, y2) -> square of side max(w, h) * 1.2 around its
centre -> affine warp to S x S (ldeq.data.crop); keypoints go back through the inverse affine, so
the output is in frame pixels. A frame whose box is NaN is skipped (NaN landmarks) and the video's
state is reset, so the next frame with a face restarts from zeros.

Batching: up to ``batch_size`` videos are active at once; each step reads one frame of every active
video and solves them in one batch (two when some videos restart while others continue). When a
video ends its slot is given to the next video in the queue, so videos of different lengths keep
the batch full.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ldeq.data.crop import invert_affine, square_crop_affine, transform_points, warp_image

MODES = ("off", "warm", "prox", "adaptive")


@dataclass
class RwRConfig:
    """Parameters of an RwR run (see module doc)."""
    mode: str = "warm"
    max_iter_full: int = 20
    max_iter_warm: int = 1
    max_iter_prox: int = 1
    gamma: float = 1.0
    # mode 'adaptive' (defaults picked from the front measured by benchmarks/bench_rwr_front.py)
    max_iter_adaptive: int = 1
    adaptive_gamma: float = 1.0
    adaptive_speed: float = 0.01
    adaptive_q: float = 0.1
    adaptive_gate: float = 0.01
    batch_size: int = 16
    crop_size: int = 256
    crop_scale: float = 1.2

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")
        for k in ("max_iter_full", "max_iter_warm", "max_iter_prox", "max_iter_adaptive", "batch_size",
                  "crop_size"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"{k}: expected an integer >= 1, got {getattr(self, k)}")
        if self.gamma < 0:
            raise ValueError(f"gamma: expected >= 0, got {self.gamma}")
        if not self.adaptive_gamma >= 0:
            raise ValueError(f"adaptive_gamma: expected >= 0, got {self.adaptive_gamma}")
        if not self.adaptive_speed > 0:
            raise ValueError(f"adaptive_speed: expected > 0 (crop units), got {self.adaptive_speed}")
        if not self.adaptive_q >= 0:
            raise ValueError(f"adaptive_q: expected >= 0 (0 = no output Kalman), got {self.adaptive_q}")
        if not self.adaptive_gate > 0:
            raise ValueError(f"adaptive_gate: expected > 0 (crop units), got {self.adaptive_gate}")

    def output_filter(self):
        """The per-stream output stage of this mode (a fresh :class:`MotionKalman`), or None (modes
        other than 'adaptive', or adaptive_q = 0). Step it with ``f.step(points, scale=crop side in
        frame px)`` once per frame, and make a new one whenever the RwR state restarts."""
        if self.mode != "adaptive" or self.adaptive_q == 0:
            return None
        from .filters import MotionKalman
        return MotionKalman(self.adaptive_q, self.adaptive_gate)


class BoxesTooShort(ValueError):
    """A video has more frames than boxes."""


def crop_batch(frames: Sequence[np.ndarray], boxes: Sequence[np.ndarray], size: int = 256, scale: float = 1.2):
    """Crops frames (H, W, 3) uint8 RGB around boxes -> ((B, 3, S, S) float32 in [0, 1], (B, 2, 3) affines)."""
    mats = [square_crop_affine(b, size, scale) for b in boxes]
    crops = np.stack([warp_image(f, m, size) for f, m in zip(frames, mats)])
    images = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div_(255.0)
    return images, np.stack(mats)


def warp_states(z: torch.Tensor, mats_prev: np.ndarray, mats_cur: np.ndarray, crop_size: int) -> torch.Tensor:
    """Re-expresses states (B, C, S, S) (heatmap-like maps over the crop) computed in the crops of
    affines ``mats_prev`` (B, 2, 3) in the crops of ``mats_cur`` (B, 2, 3) (frame px -> crop px):
    the value at output pixel u is the input's value at G(u), G = crop_prev o frame <- crop_cur,
    bilinear, border values beyond the edge. Map pixel u spans crop pixels u * crop_size / S (the
    soft-argmax decode's convention, x = u / S in crop units). Identical affines give z back."""
    if z.dim() != 4 or z.shape[-1] != z.shape[-2]:
        raise ValueError(f"warp_states: expected states (B, C, S, S), got {tuple(z.shape)}")
    B, S = z.shape[0], z.shape[-1]
    mp, mc = np.asarray(mats_prev, np.float64), np.asarray(mats_cur, np.float64)
    if mp.shape != (B, 2, 3) or mc.shape != (B, 2, 3):
        raise ValueError(f"warp_states: expected affines ({B}, 2, 3), got {mp.shape} and {mc.shape}")
    k = crop_size / S
    G = np.empty((B, 2, 3))
    for b in range(B):
        cur = np.vstack([mc[b], [0.0, 0.0, 1.0]])
        prev = np.vstack([mp[b], [0.0, 0.0, 1.0]])
        g = np.diag([1 / k, 1 / k, 1.0]) @ prev @ np.linalg.inv(cur) @ np.diag([k, k, 1.0])
        G[b] = g[:2]
    if np.allclose(G, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), atol=1e-9):
        return z
    # in normalised coordinates (align_corners=True: -1 and 1 are the centres of pixels 0 and S-1)
    # n = 2u / (S - 1) - 1, so the map is n' = A n + (A 1 + 2 t / (S - 1) - 1) with G = [A | t]
    A, t = G[:, :, :2], G[:, :, 2]
    theta = np.concatenate([A, (A.sum(-1) + 2 * t / (S - 1) - 1)[..., None]], axis=-1)
    theta_t = torch.as_tensor(theta, dtype=z.dtype, device=z.device)
    grid = torch.nn.functional.affine_grid(theta_t, list(z.shape), align_corners=True)
    return torch.nn.functional.grid_sample(z, grid, mode="bilinear", padding_mode="border", align_corners=True)


def crop_sides(mats: np.ndarray, crop_size: int) -> np.ndarray:
    """(B, 2, 3) crop affines -> (B,) side of each crop in frame pixels."""
    mats = np.asarray(mats, np.float64)
    return crop_size / np.sqrt(np.abs(np.linalg.det(mats[:, :, :2])))


def uncrop_points(keypoints, mats: np.ndarray, size: int = 256) -> np.ndarray:
    """(B, K, 2) crop units -> (B, K, 2) frame pixels through the inverse of each crop affine."""
    kp = keypoints.detach().double().cpu().numpy() if torch.is_tensor(keypoints) else np.asarray(keypoints, np.float64)
    return np.stack([transform_points(k * size, invert_affine(m)) for k, m in zip(kp, mats)])


class RwRRunner:
    """Runs ``solve`` over videos with RwR. ``run`` returns one (T_i, K, 2) frame-pixel array per video.

    ``self.partial`` holds the landmarks of every frame processed so far (a list per video), so a
    caller that catches an exception (or KeyboardInterrupt) can still write what was computed.
    ``self.iters`` counts, per video, the iteration budget spent per frame (a list).
    """

    def __init__(self, solve: Callable, config: Optional[RwRConfig] = None, device="cpu"):
        self.solve = solve
        self.config = config or RwRConfig()
        self.device = torch.device(device)
        self.partial: List[List[np.ndarray]] = []
        self.iters: List[List[int]] = []

    def solve_group(self, images, states, restart: bool, mats_prev=None, mats_cur=None):
        """One RwR step for a group of streams that all restart or all continue.

        images (G, 3, S, S) crops; states: G previous equilibria (B, ...) each, or None when
        ``restart``; mats_prev / mats_cur: (G, 2, 3) crop affines of the previous and current frame
        (mode 'adaptive' warps the states between them). Returns ((keypoints (G, K, 2) in crop units,
        z_star (G, ...)), iteration budget used). The mode's output stage
        (``config.output_filter()``) is the caller's, per stream.
        """
        c = self.config
        images = images.to(self.device)
        if restart or c.mode == "off":
            return self.solve(images, None, c.max_iter_full), c.max_iter_full
        z0 = torch.stack(states).to(self.device)
        if c.mode == "warm":
            return self.solve(images, z0, c.max_iter_warm), c.max_iter_warm
        if c.mode == "adaptive":
            z0 = warp_states(z0, mats_prev, mats_cur, c.crop_size)
            return (self.solve(images, z0, c.max_iter_adaptive, gamma=c.adaptive_gamma, anchor=z0,
                               gamma_speed=c.adaptive_speed), c.max_iter_adaptive)
        return self.solve(images, z0, c.max_iter_prox, gamma=c.gamma, anchor=z0), c.max_iter_prox

    @torch.no_grad()
    def run(self, videos: Sequence, boxes: Sequence, progress: bool = True,
            on_frame: Optional[Callable] = None, names: Optional[Sequence[str]] = None) -> List[np.ndarray]:
        """Args:
            videos: per video an iterable of RGB uint8 (H, W, 3) frames (list, array, VideoReader).
            boxes:  per video a (>= T_i, 4) array of (x1, y1, x2, y2) boxes, NaN rows = no face.
            progress: tqdm bar over frames.
            on_frame: called as ``on_frame(video_index, t, frame, landmarks (K, 2) or None, box)`` after
                every frame, in frame order per video (used to write annotated videos as they go).
            names: video names for error messages.
        Returns: list of (T_i, K, 2) float64 arrays in frame pixels (NaN rows for skipped frames).
        """
        from tqdm.auto import tqdm

        c = self.config
        if len(videos) != len(boxes):
            raise ValueError(f"got {len(videos)} videos but {len(boxes)} box arrays")
        names = list(names) if names is not None else [f"video {i}" for i in range(len(videos))]
        boxes = [np.asarray(b, dtype=np.float64) for b in boxes]
        for i, b in enumerate(boxes):
            if b.ndim != 2 or b.shape[1] != 4:
                raise ValueError(f"boxes of {names[i]}: expected shape (n_frames, 4), got {b.shape}")
        n = len(videos)
        self.partial = [[] for _ in range(n)]
        self.iters = [[] for _ in range(n)]
        total = sum(len(b) for b in boxes)
        bar = tqdm(total=total, desc=f"RwR {c.mode}", unit="frame", disable=not progress)
        queue = list(range(n))
        active: List[int] = []
        its: Dict[int, object] = {}
        state: Dict[int, Optional[torch.Tensor]] = {}
        crop_of: Dict[int, np.ndarray] = {}  # each video's last crop affine (for mode 'adaptive')
        smooth: Dict[int, object] = {}       # each video's output stage (mode 'adaptive')
        n_kp = None
        try:
            while queue or active:
                while len(active) < c.batch_size and queue:
                    v = queue.pop(0)
                    active.append(v)
                    its[v], state[v] = iter(videos[v]), None
                groups = {True: [], False: []}  # restart? -> [(v, t, frame, box)]
                skipped = []
                for v in list(active):
                    frame = next(its[v], None)
                    if frame is None:
                        active.remove(v)
                        del its[v], state[v]
                        crop_of.pop(v, None)
                        smooth.pop(v, None)
                        continue
                    t = len(self.partial[v])
                    if t >= len(boxes[v]):
                        raise BoxesTooShort(f"boxes of {names[v]}: {len(boxes[v])} boxes but the video has more frames")
                    box = boxes[v][t]
                    if not np.isfinite(box).all():
                        skipped.append((v, t, frame, box))
                        continue
                    # mode off: every frame is a solve from zeros, so all frames share one batch
                    groups[c.mode == "off" or state[v] is None].append((v, t, frame, box))
                results = []
                for restart, items in groups.items():
                    if not items:
                        continue
                    images, mats = crop_batch([it[2] for it in items], [it[3] for it in items], c.crop_size, c.crop_scale)
                    prev = None if restart else np.stack([crop_of[it[0]] for it in items])
                    (kp, z_star), budget = self.solve_group(images, [state[it[0]] for it in items], restart,
                                                             prev, mats)
                    pts = uncrop_points(kp, mats, c.crop_size)
                    n_kp = pts.shape[1]
                    sides = crop_sides(mats, c.crop_size)
                    for j, it in enumerate(items):
                        state[it[0]] = z_star[j].detach()
                        crop_of[it[0]] = mats[j]
                        p = pts[j]
                        if restart:
                            smooth[it[0]] = c.output_filter()
                        if smooth.get(it[0]) is not None:
                            p = smooth[it[0]].step(p, scale=float(sides[j]))
                        results.append((it, p, budget))
                for it in skipped:
                    state[it[0]] = None  # no face: restart from zeros at the next face
                    smooth.pop(it[0], None)
                    results.append((it, None, 0))
                for (v, t, frame, box), pts, budget in sorted(results, key=lambda r: r[0][0]):
                    self.partial[v].append(pts)
                    self.iters[v].append(budget)
                    if on_frame is not None:
                        on_frame(v, t, frame, pts, box)
                bar.update(len(results))
        finally:
            bar.close()
        return self.collect(n_kp)

    def collect(self, n_kp: Optional[int] = None) -> List[np.ndarray]:
        """The landmarks in ``self.partial`` as (T_i, K, 2) arrays, NaN where a frame was skipped."""
        if n_kp is None:
            n_kp = next((p.shape[0] for seq in self.partial for p in seq if p is not None), 0)
        return [np.stack([p if p is not None else np.full((n_kp, 2), np.nan) for p in seq])
                if seq else np.zeros((0, n_kp, 2)) for seq in self.partial]


class CellSolve:
    """Builds the runner's ``solve`` from a DEQ cell, for any model with this structure:

        x = inject(images); f(z) = cell(z, x); z* = solver(f or the prox map, z0, max_iter)
        keypoints = decode(f(z*))    (the "extra final step"; skipped with final_step=False)
        returns (keypoints, f(z*)): the carried state is the decoded one

    ``zeros(x) -> z0`` gives the initial state. ``solver(f, z0, max_iter) -> z*`` runs warm / prox
    solves and defaults to :func:`fixed_budget_iteration` (exactly ``max_iter`` applications of f, no
    early stop: the official video setting). ``solver_from_zeros`` runs solves with z0 = None
    (mode off, first frames), e.g. Anderson with a tolerance; it defaults to ``solver``.
    """

    def __init__(self, inject: Callable, cell: Callable, decode: Callable, zeros: Callable,
                 solver: Optional[Callable] = None, solver_from_zeros: Optional[Callable] = None,
                 final_step: bool = True):
        self.inject, self.cell, self.decode, self.zeros = inject, cell, decode, zeros
        self.solver = solver or fixed_budget_iteration
        self.solver_from_zeros = solver_from_zeros or self.solver
        self.final_step = final_step

    def __call__(self, images, z0, max_iter, gamma=0.0, anchor=None, gamma_speed: Optional[float] = None):
        """gamma: float, or a (B, K) / (B, 1) tensor (per sample / landmark; K = the decoded keypoints,
        broadcast over the state's spatial dimensions; state channels beyond K get the mean over K).
        gamma_speed (mode 'adaptive'): gamma_k <- gamma_k / (1 + (d_k / gamma_speed)^2) with d_k the
        distance (crop units) between landmark k decoded from f(anchor) and from the anchor; the
        first prox step reuses f(anchor) when z0 is the anchor."""
        x = self.inject(images)
        solver = self.solver_from_zeros if z0 is None else self.solver
        z0 = self.zeros(x) if z0 is None else z0
        first = None
        if gamma_speed is not None:
            if anchor is None:
                raise ValueError("adaptive solve: gamma_speed needs anchor (z*_{t-1})")
            if not gamma_speed > 0:
                raise ValueError(f"gamma_speed: expected > 0, got {gamma_speed}")
            q = self.cell(anchor, x)
            d = (self.decode(q) - self.decode(anchor)).norm(dim=-1)  # (B, K)
            gamma = _gamma_tensor(gamma, d.shape[0], d.shape[1], d) / (1.0 + (d / gamma_speed) ** 2)
            if z0 is anchor:
                first = q
        if torch.is_tensor(gamma) or gamma > 0:
            if anchor is None:
                raise ValueError("prox solve: gamma > 0 needs anchor (z*_{t-1})")
            g = _gamma_map(gamma, anchor) if torch.is_tensor(gamma) else gamma
            f = lambda z: (self.cell(z, x) + g * anchor) / (1.0 + g)  # noqa: E731
            if first is not None and max_iter >= 1:  # T(anchor) from the f(anchor) already computed
                z0, max_iter = (first + g * anchor) / (1.0 + g), max_iter - 1
        else:
            f = lambda z: self.cell(z, x)  # noqa: E731
        z_star = solver(f, z0, max_iter)
        out = f(z_star) if self.final_step else z_star
        # The state carried to the next frame is the one decoded for this frame (after the final
        # step): the anchor of prox is then exactly the equilibrium behind the reported landmarks.
        return self.decode(out), out


def _gamma_tensor(gamma, B: int, K: int, like: torch.Tensor) -> torch.Tensor:
    """gamma (float or (B, K) / (B, 1) tensor) -> a (B, K) tensor like ``like``."""
    if not torch.is_tensor(gamma):
        return torch.full((B, K), float(gamma), dtype=like.dtype, device=like.device)
    if gamma.dim() != 2 or gamma.shape[0] != B or gamma.shape[1] not in (1, K):
        raise ValueError(f"gamma: expected a float or a ({B}, {K}) / ({B}, 1) tensor, got shape {tuple(gamma.shape)}")
    if bool((gamma < 0).any()):
        raise ValueError("gamma: expected values >= 0")
    return gamma.to(dtype=like.dtype, device=like.device).expand(B, K)


def _gamma_map(gamma: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """(B, K) or (B, 1) weights -> a tensor broadcastable against the state ``anchor`` (B, C, ...):
    a map state (B, C, H, W) gets gamma[:, k] on channel k < K and the mean over K on channels >= K
    (extra latent channels); a flat state (B, D) takes (B, 1) or (B, D) weights only."""
    B = anchor.shape[0]
    if gamma.dim() != 2 or gamma.shape[0] != B:
        raise ValueError(f"gamma: expected a (B, K) or (B, 1) tensor with B = {B}, got shape {tuple(gamma.shape)}")
    if bool((gamma < 0).any()):
        raise ValueError("gamma: expected values >= 0")
    gamma = gamma.to(dtype=anchor.dtype, device=anchor.device)
    C = anchor.shape[1] if anchor.dim() > 1 else 1
    K = gamma.shape[1]
    if K == 1 or anchor.dim() == 2 and K == C:
        g = gamma
    elif anchor.dim() > 2 and K <= C:
        g = torch.cat([gamma, gamma.mean(1, keepdim=True).expand(B, C - K)], 1) if K < C else gamma
    else:
        raise ValueError(f"gamma: {K} weights do not match a state of shape {tuple(anchor.shape)}")
    return g.view(B, g.shape[1], *([1] * (anchor.dim() - 2)))


def fixed_budget_iteration(f, z0, max_iter):
    """Exactly ``max_iter`` applications of f from z0 (a fixed budget, no early stop)."""
    z = z0
    for _ in range(max_iter):
        z = f(z)
    return z
