"""Synthetic face videos with ground truth on every frame (built on ldeq.data.synthetic.render_face).

A clip is one random face (fixed identity, background and appearance) whose pose, position, scale
and expression follow smooth sums of sinusoids, plus "ambiguous stretches" where a still-image
model tends to flicker between plausible answers:

* ``occluder``: a hand-like ellipse or a rectangle slides across the face;
* ``motion_blur``: a linear motion-blur kernel (random direction, ``blur_len`` pixels);
* ``flicker``: the exposure and the light direction jump from frame to frame.

Sensor noise is redrawn every frame (as in a real camera). Face boxes imitate a detector: the
landmarks' extent scaled by ``box_scale`` around its centre, with per-frame jitter of
``box_jitter`` times the box size (detector boxes shake; that shake is part of what RwR smooths).

Hard clips (``preset='hard'``, modelled on what the paper says of the WFLW-V hard split: fast head
turns, occlusion, blur, lighting changes) add *motion events* on top of the smooth motion and one
more ambiguous stretch:

* ``head_turn``: yaw (and some pitch / roll) moves to a new value within 3, 6 or 12 frames;
* ``sweep``: the face translates by 10-25 % of the frame within 4, 8 or 16 frames;
* ``jump``: the face jumps by 6-15 % of the frame (and zooms by up to 10 %) between two frames;
* ``expression``: the mouth opens / smiles / the brows rise within 2-6 frames, or the eyes blink;
* ``light_switch`` (a stretch kind): the exposure and the light direction step to new values
  and stay there (a light switched on or off), unlike ``flicker`` which changes every frame;
* speed blur (``speed_blur=True``): every frame whose landmarks moved more than 3 px since the
  previous frame gets a linear motion blur along the motion, of length proportional to the speed
  (an exposure of about 2/3 of a frame).

Event offsets persist (the face stays where a sweep or a jump took it, within a safe area of the
frame); ground truth is exact on every frame. ``preset='easy'`` is the smooth motion alone,
``preset='ambiguous'`` the smooth motion with the three ambiguous stretches (the clips of the
demo and of the former 'hard' split).
"""
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from ldeq.data.synthetic import random_face_params, render_face

EVENTS = ("occluder", "motion_blur", "flicker")
# Stretch kinds accepted by ``events`` (EVENTS is the demo's default set; 'light_switch' is extra).
ALL_EVENTS = EVENTS + ("light_switch",)
MOTION_EVENTS = ("head_turn", "sweep", "jump", "expression")
# Named clip kinds (see module doc). The keys are make_synthetic_video arguments.
PRESETS: Dict[str, Dict[str, object]] = {
    "easy": {"events": (), "motion_events": (), "speed_blur": False},
    "ambiguous": {"events": EVENTS, "motion_events": (), "speed_blur": False},
    "hard": {"events": ALL_EVENTS, "motion_events": MOTION_EVENTS, "speed_blur": True,
             "motion_event_every": 12},
}


@dataclass
class SyntheticVideo:
    """frames (T, H, W, 3) uint8 RGB; landmarks (T, 98, 2) frame pixels; boxes (T, 4) x1 y1 x2 y2;
    events: (kind, first_frame, last_frame_exclusive) of each ambiguous stretch; motion_events: the
    same for each motion event (a jump at frame t is ``(kind, t, t + 1)``)."""
    frames: np.ndarray
    landmarks: np.ndarray
    boxes: np.ndarray
    events: List[Tuple[str, int, int]] = field(default_factory=list)
    fps: float = 30.0
    motion_events: List[Tuple[str, int, int]] = field(default_factory=list)

    def __len__(self):
        return len(self.frames)


def boxes_from_landmarks(landmarks: np.ndarray, scale: float = 1.2, jitter: float = 0.0,
                         rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """(T, K, 2) -> (T, 4) boxes: the landmarks' extent scaled by ``scale`` about its centre, plus
    Gaussian jitter of ``jitter`` times the box side on each coordinate."""
    lo, hi = landmarks.min(axis=1), landmarks.max(axis=1)
    c, half = (lo + hi) / 2, (hi - lo) / 2 * scale
    b = np.concatenate([c - half, c + half], axis=1)
    if jitter > 0:
        rng = rng or np.random.default_rng(0)
        side = (hi - lo).max(axis=1, keepdims=True) * scale
        b = b + rng.normal(scale=jitter, size=b.shape) * side
    return b


def _motion_blur(img: np.ndarray, length: int, angle: float) -> np.ndarray:
    k = np.zeros((length, length), np.float32)
    c = (length - 1) / 2
    d = np.array([math.cos(angle), math.sin(angle)]) * c
    cv2.line(k, (int(round(c - d[0])), int(round(c - d[1]))), (int(round(c + d[0])), int(round(c + d[1]))), 1.0, 1)
    return cv2.filter2D(img, -1, k / k.sum())


def _smoothstep(u: np.ndarray) -> np.ndarray:
    u = np.clip(u, 0.0, 1.0)
    return u * u * (3 - 2 * u)


def _motion_event_offsets(rng: np.random.Generator, n_frames: int, kinds: Tuple[str, ...], every: float,
                          base) -> Tuple[Dict[str, np.ndarray], List[Tuple[str, int, int]]]:
    """Per-frame offsets {field: (T,)} of the motion events and their spans (see module doc).

    Events start at random gaps of about ``every`` frames (uniform in [every/2, 3 every/2]); each
    moves its fields from the current offset to a new target along a smoothstep of its duration
    (one frame for a jump) and the offset stays there. Targets keep the face inside a safe area.
    """
    fields = ("yaw", "pitch", "roll", "cx", "cy", "size", "mouth_open", "smile", "brow_raise", "eye_open")
    off = {k: np.zeros(n_frames) for k in fields}
    cur = {k: 0.0 for k in fields}
    spans: List[Tuple[str, int, int]] = []
    t = int(rng.integers(3, max(4, int(every) + 1)))
    while kinds and t < n_frames - 1:
        kind = str(rng.choice(list(kinds)))
        target: Dict[str, float] = {}
        back = None  # (after frames, duration): expression events return to neutral
        if kind == "head_turn":
            dur = int(rng.choice([3, 6, 12]))
            yaw = cur["yaw"] + base.yaw
            new = float(rng.uniform(0.45, 0.9)) * (-1.0 if yaw > 0 else 1.0) * float(rng.uniform(0.6, 1.0))
            target = {"yaw": new - base.yaw, "pitch": float(rng.uniform(-0.15, 0.15)),
                      "roll": float(rng.uniform(-0.2, 0.2))}
        elif kind == "sweep":
            dur = int(rng.choice([4, 8, 16]))
            d = float(rng.uniform(0.10, 0.25))
            target = {"cx": float(np.clip(cur["cx"] + d * (-1.0 if cur["cx"] > 0 else 1.0), -0.16, 0.16)),
                      "cy": float(np.clip(cur["cy"] + rng.uniform(-0.08, 0.08), -0.06, 0.06))}
        elif kind == "jump":
            dur = 1
            d = float(rng.uniform(0.06, 0.15))
            target = {"cx": float(np.clip(cur["cx"] + d * (-1.0 if cur["cx"] > 0 else 1.0), -0.16, 0.16)),
                      "cy": float(np.clip(cur["cy"] + rng.uniform(-0.05, 0.05), -0.06, 0.06)),
                      "size": float(np.clip(cur["size"] + rng.uniform(-0.1, 0.1) * base.size,
                                            -0.1 * base.size, 0.1 * base.size))}
        else:  # expression
            dur = int(rng.integers(2, 7))
            if rng.random() < 0.3:  # blink
                target, back = {"eye_open": 0.15 - base.eye_open}, (2, 2)
            else:
                target = {"mouth_open": float(rng.uniform(0.15, 0.45)), "smile": float(rng.uniform(-0.05, 0.2)),
                          "brow_raise": float(rng.uniform(0.0, 0.15))}
                back = (int(rng.integers(6, 20)), int(rng.integers(3, 8)))
        end = min(n_frames, t + dur)
        for k, v in target.items():
            ramp = _smoothstep((np.arange(n_frames) - t + 1) / dur)
            off[k] += (v - cur[k]) * ramp
            cur[k] = v
        if back is not None:
            t_back = end + back[0]
            for k in target:
                ramp = _smoothstep((np.arange(n_frames) - t_back + 1) / back[1])
                off[k] -= cur[k] * ramp
                cur[k] = 0.0
            end = min(n_frames, t_back + back[1])
        spans.append((kind, t, end))
        t = end + int(rng.uniform(every / 2, 3 * every / 2))
    return off, spans


def make_synthetic_video(seed: int = 0, n_frames: int = 90, size: Tuple[int, int] = (256, 320),
                         events: Tuple[str, ...] = EVENTS, event_len: int = 20, motion: float = 1.0,
                         blur_len: int = 11, box_scale: float = 1.2, box_jitter: float = 0.01,
                         fps: float = 30.0, motion_events: Tuple[str, ...] = (), motion_event_every: float = 12,
                         speed_blur: bool = False, preset: Optional[str] = None) -> SyntheticVideo:
    """One synthetic clip (see module doc).

    seed: identity and motion; n_frames: T; size: (H, W) of the frames; events: which ambiguous
    stretches to insert (each once, ``event_len`` frames, at random non-overlapping places when T
    allows; kinds from ALL_EVENTS); motion: amplitude multiplier of the smooth head motion (0 = still
    head); motion_events: kinds from MOTION_EVENTS drawn about every ``motion_event_every`` frames;
    speed_blur: motion blur proportional to the landmarks' speed. ``preset`` ('easy', 'ambiguous',
    'hard') sets events, motion_events, speed_blur and motion_event_every from PRESETS (then those
    arguments are ignored). With the defaults the clip is the same as before motion events existed.
    """
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
        pr = PRESETS[preset]
        events, motion_events = tuple(pr["events"]), tuple(pr["motion_events"])
        speed_blur = bool(pr["speed_blur"])
        motion_event_every = float(pr.get("motion_event_every", motion_event_every))
    unknown = set(events) - set(ALL_EVENTS)
    if unknown:
        raise ValueError(f"events: unknown {sorted(unknown)}; expected a subset of {ALL_EVENTS}")
    unknown = set(motion_events) - set(MOTION_EVENTS)
    if unknown:
        raise ValueError(f"motion_events: unknown {sorted(unknown)}; expected a subset of {MOTION_EVENTS}")
    if n_frames < 2:
        raise ValueError(f"n_frames: expected >= 2, got {n_frames}")
    if not motion_event_every >= 2:
        raise ValueError(f"motion_event_every: expected >= 2 frames, got {motion_event_every}")
    rng = np.random.default_rng([seed, 7])
    base = random_face_params(rng)
    H, W = size
    # a frame of size (H, W) with the face a bit smaller than in the training crops, so it can move
    base = dataclasses.replace(base, occluder=0, blur=min(base.blur, 0.6), cx=0.5, cy=0.5,
                               size=0.3 * 256 / min(H, W) * rng.uniform(0.9, 1.1) * min(H, W) / 256)
    # smooth motion: each driven field is base + amplitude * sum of two sinusoids (periods in frames)
    drive = {"yaw": 0.35, "pitch": 0.12, "roll": 0.15, "cx": 0.08, "cy": 0.05, "size": 0.02,
             "mouth_open": 0.12, "eye_open": 0.15, "smile": 0.05}
    waves = {k: (rng.uniform(40, 120, 2), rng.uniform(0, 2 * math.pi, 2)) for k in drive}
    # ambiguous stretches at non-overlapping random places
    ev: List[Tuple[str, int, int]] = []
    gap = 2  # clean frames before and between stretches
    slots = list(range(max(1, (n_frames - gap) // (event_len + gap))))
    rng.shuffle(slots)
    for kind, s in zip(events, slots):
        start = gap + s * (event_len + gap)
        if start + event_len <= n_frames:
            ev.append((kind, start, start + event_len))
    blur_angle = rng.uniform(0, math.pi)
    occ_kind = int(rng.choice([1, 2]))
    # Motion events draw from their own generator so that the clips without them stay as before.
    m_off, m_spans = _motion_event_offsets(np.random.default_rng([seed, 17]), n_frames, tuple(motion_events),
                                           motion_event_every, base)
    light_rng = np.random.default_rng([seed, 19])
    switch = {"ambient": float(light_rng.uniform(0.45, 1.25)), "light": float(light_rng.uniform(0.3, 0.9)),
              "light_angle": float(light_rng.uniform(0, 2 * math.pi))}
    frames, lms, blurs = [], [], []
    for t in range(n_frames):
        upd = {}
        for k, amp in drive.items():
            periods, phases = waves[k]
            v = getattr(base, k) + motion * amp * 0.5 * sum(math.sin(2 * math.pi * t / p + ph)
                                                           for p, ph in zip(periods, phases))
            upd[k] = v
        for k, o in m_off.items():
            if o[t] != 0.0:
                upd[k] = upd.get(k, getattr(base, k)) + float(o[t])
        upd["mouth_open"] = max(0.0, upd["mouth_open"])
        upd["eye_open"] = float(np.clip(upd["eye_open"], 0.1 if motion_events else 0.2, 1.3))
        blur_now = 0
        for kind, a, b in ev:
            if not a <= t < b:
                continue
            u = (t - a) / max(1, b - a - 1)
            if kind == "occluder":  # slides from the left of the face to the right
                upd.update(occluder=occ_kind, occ_x=-1.8 + 3.6 * u, occ_y=0.2, occ_w=0.55, occ_h=0.7,
                           occ_angle=0.3)
            elif kind == "flicker":
                upd.update(ambient=float(rng.uniform(0.45, 1.25)), light=float(rng.uniform(0.2, 0.9)),
                           light_angle=float(rng.uniform(0, 2 * math.pi)))
            elif kind == "motion_blur":
                blur_now = blur_len
            elif kind == "light_switch":
                upd.update(switch)
        p = dataclasses.replace(base, **upd)
        img, lm = render_face(p, (H, W), np.random.default_rng([seed, 11, t]))
        if blur_now:
            img = _motion_blur(img, blur_now, blur_angle)
        frames.append(img)
        lms.append(lm)
        blurs.append(blur_now)
    lm = np.stack(lms)
    if speed_blur:  # exposure blur along the motion of the landmarks' centroid since the last frame
        d = np.diff(lm.mean(axis=1), axis=0)
        for t in range(1, n_frames):
            speed = float(np.hypot(*d[t - 1]))
            if speed > 3.0 and not blurs[t]:
                n = int(min(25, round(speed * 2 / 3))) | 1
                frames[t] = _motion_blur(frames[t], n, math.atan2(d[t - 1][1], d[t - 1][0]))
    boxes = boxes_from_landmarks(lm, box_scale, box_jitter, np.random.default_rng([seed, 13]))
    return SyntheticVideo(np.stack(frames), lm, boxes, ev, fps, m_spans)


def make_synthetic_videos(n_videos: int = 4, seed: int = 0, lengths: Optional[List[int]] = None,
                          **kwargs) -> List[SyntheticVideo]:
    """``n_videos`` clips with seeds seed, seed+1, ...; ``lengths`` gives each clip's frame count."""
    lengths = lengths or [kwargs.pop("n_frames", 90)] * n_videos
    if len(lengths) != n_videos:
        raise ValueError(f"lengths: expected {n_videos} values, got {len(lengths)}")
    return [make_synthetic_video(seed + i, n_frames=n, **kwargs) for i, n in enumerate(lengths)]


def write_wflwv_root(root: str, n_per_split: int = 4, n_frames: int = 90, seed: int = 0, progress: bool = True,
                     splits: Tuple[str, ...] = ("easy", "hard")) -> dict:
    """Writes synthetic clips in the WFLW-V layout (videos/<ID>.mp4, bboxes/<ID>.npy,
    landmarks/<ID>.npy) with split lists ``root/splits/{split}_video_IDs.txt`` for each of
    ``splits`` ('easy', 'hard'): each split's clips use the preset of the same name (PRESETS:
    'easy' = smooth motion only; 'hard' = fast head turns, sweeps and jumps, expression changes,
    occluders, motion and speed blur, flicker and light switches). Returns {split: [IDs]}.

    Note: the .mp4 is lossy (mp4v), so a model sees slightly different pixels than in memory.
    """
    import os

    from tqdm.auto import tqdm

    from .._io import atomic_save, atomic_write_text
    from .io import write_video

    bad = [s for s in splits if s not in ("easy", "hard")]
    if bad or not splits:
        raise ValueError(f"splits: expected a non-empty subset of ('easy', 'hard'), got {tuple(splits)}")
    ids = {s: [f"synth_{s}_{i:03d}" for i in range(n_per_split)] for s in splits}
    for sub in ("videos", "bboxes", "landmarks", "splits"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    jobs = [(s, i, vid) for s in splits for i, vid in enumerate(ids[s])]
    for split, i, vid in tqdm(jobs, desc="synthetic WFLW-V", disable=not progress):
        v = make_synthetic_video(seed + 1000 * (split == "hard") + i, n_frames, preset=split)
        write_video(os.path.join(root, "videos", f"{vid}.mp4"), v.frames, v.fps)
        for sub, arr in (("bboxes", v.boxes), ("landmarks", v.landmarks)):
            atomic_save(os.path.join(root, sub, f"{vid}.npy"), lambda tmp: np.save(tmp, arr), suffix=".npy")
    for split, lst in ids.items():
        atomic_write_text(os.path.join(root, "splits", f"{split}_video_IDs.txt"), "\n".join(lst) + "\n")
    return ids
