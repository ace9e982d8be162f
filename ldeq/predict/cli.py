"""``ldeq predict``: landmarks of every face in images, folders, videos or a camera.

    ldeq predict INPUT [INPUT ...] --checkpoint PATH --out DIR [--annotate] [--detector haar|haar-ensemble]
    ldeq predict --camera 0 --checkpoint PATH --out DIR [--max-frames N] [--annotate]

INPUT: an image, a video file, or a folder (searched recursively for images and videos). Images
are batched (faces of several images solved together); videos and the camera are tracked, one
RwR state per face (``--mode``, default warm; every mode of ``ldeq.video.rwr.MODES``).

Outputs in DIR (all written atomically; see docs/predict.md for the columns):
  images:  predictions.json, predictions.csv, annotated/<relative path>.png with --annotate
  a video or the camera (STEM = file name without extension, or camera<N>):
           STEM_faces.json, STEM_faces.csv, STEM_landmarks.npy (tracks, T, K, 2),
           STEM_uncertainty.npy (tracks, T, K), STEM_boxes.npy (tracks, T, 5), and
           STEM_annotated.mp4 with --annotate; NaN where a track has no face in a frame.
Exit codes: 0 ok; 2 bad input (every input, option and the checkpoint are checked before
anything is written); 1 interrupted or failed mid-run (what was computed is written). For the
camera, Ctrl-C / SIGTERM is the normal stop (exit 0).
"""
import argparse
import os
import sys
from typing import Callable, Iterable, List, Optional

import numpy as np

from .._io import atomic_save, atomic_write_json, atomic_write_text
from ..cli import nonnegative_float, nonnegative_int, positive_int, sigterm_as_interrupt
from ..video.rwr import MODES

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


def parser() -> argparse.ArgumentParser:
    from ..video.cli import add_rwr_args
    from .detect import DETECTORS
    p = argparse.ArgumentParser(prog="ldeq predict", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="images, videos or folders (recursive)")
    p.add_argument("--camera", type=nonnegative_int, default=None, metavar="N",
                   help="read camera N (cv2.VideoCapture(N)) instead of files")
    p.add_argument("--max-frames", type=positive_int, default=None, help="stop the camera (or a video) after N frames")
    p.add_argument("--checkpoint", required=True, help="LDEQ checkpoint (ours or the official format)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--annotate", action="store_true", help="also write annotated images / videos")
    p.add_argument("--detector", choices=DETECTORS, default="haar",
                   help="face detector: haar (default) or haar-ensemble (more recall, ~24x slower); docs/predict.md")
    p.add_argument("--min-score", type=nonnegative_float, default=0.0, help="drop detections below this score")
    p.add_argument("--max-faces", type=positive_int, default=None, help="keep the N largest faces per frame")
    p.add_argument("--mode", choices=MODES, default="warm", help="RwR mode on videos and the camera (default warm)")
    add_rwr_args(p)
    p.add_argument("--iou-threshold", type=float, default=0.3, help="tracker: IoU to match a face (default 0.3)")
    p.add_argument("--max-misses", type=nonnegative_int, default=5,
                   help="tracker: frames a face may be undetected before its track and state are dropped (default 5)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="faces solved together (default 16)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _err(msg: str) -> int:
    print(f"ldeq predict: error: {msg}", file=sys.stderr)
    return 2


# ------------------------------------------------------------------------------------------ inputs
def collect_inputs(inputs: List[str]):
    """-> (images [(path, relative name)], videos [path]); ValueError / FileNotFoundError naming the
    input for a missing path, an unknown extension, an unreadable image or an empty folder."""
    import cv2
    images, videos = [], []
    for inp in inputs:
        if os.path.isdir(inp):
            found = 0
            for dirpath, dirnames, files in os.walk(inp):
                dirnames.sort()
                for f in sorted(files):
                    ext = os.path.splitext(f)[1].lower()
                    path = os.path.join(dirpath, f)
                    if ext in IMAGE_EXTS:
                        images.append((path, os.path.join(os.path.basename(os.path.normpath(inp)),
                                                          os.path.relpath(path, inp))))
                        found += 1
                    elif ext in VIDEO_EXTS:
                        videos.append(path)
                        found += 1
            if not found:
                raise ValueError(f"INPUT {inp!r}: folder holds no image ({', '.join(IMAGE_EXTS)}) or video "
                                 f"({', '.join(VIDEO_EXTS)})")
            continue
        if not os.path.isfile(inp):
            raise FileNotFoundError(f"INPUT {inp!r}: no such file or folder")
        ext = os.path.splitext(inp)[1].lower()
        if ext in IMAGE_EXTS:
            images.append((inp, os.path.basename(inp)))
        elif ext in VIDEO_EXTS:
            videos.append(inp)
        else:
            raise ValueError(f"INPUT {inp!r}: unknown extension {ext!r}; expected an image "
                             f"({', '.join(IMAGE_EXTS)}) or a video ({', '.join(VIDEO_EXTS)})")
    for path, _ in images:
        if os.path.getsize(path) == 0 or not cv2.haveImageReader(path):
            raise ValueError(f"INPUT {path!r}: not an image OpenCV can read (empty or corrupt)")
    return images, videos


class CameraSource:
    """Frames of ``cv2.VideoCapture(index)`` as RGB uint8 arrays. Opening reads one frame, so a
    missing camera is an error before anything is written."""

    def __init__(self, index: int):
        import cv2
        self.index = index
        self._cap = cv2.VideoCapture(int(index))
        ok, frame = self._cap.read() if self._cap.isOpened() else (False, None)
        if not ok or frame is None:
            self._cap.release()
            raise ValueError(f"--camera {index}: cannot open camera {index} or read a frame from it")
        self._first = frame
        self.fps = float(self._cap.get(cv2.CAP_PROP_FPS)) or 30.0

    def __iter__(self):
        import cv2
        try:
            frame = self._first
            while frame is not None:
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                ok, frame = self._cap.read()
                if not ok:
                    return
        finally:
            self._cap.release()


# ------------------------------------------------------------------------------------------ outputs
def _face_row_header(K: int) -> List[str]:
    return ([f"x{k},y{k}" for k in range(K)] + [f"u{k}" for k in range(K)])


def _face_row(f) -> str:
    vals = [*f.box, f.score, *f.landmarks.reshape(-1), *f.uncertainty]
    return ",".join(f"{v:.3f}" if i != 4 else f"{v:.6f}" for i, v in enumerate(vals))


def write_image_outputs(out: str, names: List[str], sizes, faces: List[List], K: int, checkpoint: str) -> List[str]:
    doc = {"checkpoint": os.path.abspath(checkpoint), "n_keypoints": K, "units": "image pixels",
           "images": [{"path": n, "width": int(s[1]), "height": int(s[0]), "faces": [f.to_dict() for f in fs]}
                      for n, s, fs in zip(names, sizes, faces)]}
    j = atomic_write_json(os.path.join(out, "predictions.json"), doc)
    lines = ["image,face,box_x1,box_y1,box_x2,box_y2,score," + ",".join(_face_row_header(K))]
    for n, fs in zip(names, faces):
        name = '"' + n.replace('"', '""') + '"' if ("," in n or '"' in n) else n
        lines += [f"{name},{i},{_face_row(f)}" for i, f in enumerate(fs)]
    c = atomic_write_text(os.path.join(out, "predictions.csv"), "\n".join(lines) + "\n")
    return [j, c]


class StreamRecorder:
    """Collects a stream's faces per frame and writes the per-track arrays, JSON and CSV."""

    def __init__(self, stem: str, K: int, fps: float = 30.0, annotate: bool = False, size=None, mode: str = ""):
        self.stem, self.K, self.fps, self.mode = stem, K, fps, mode
        self.frames: List[List] = []
        self.writer = None
        if annotate:
            from ..video.io import AtomicVideoWriter
            self.writer = AtomicVideoWriter(stem + "_annotated.mp4", fps, size)

    def add(self, frame: np.ndarray, faces) -> None:
        self.frames.append(faces)
        if self.writer is not None:
            self.writer.write(draw_faces(frame, faces, text=f"{self.mode} frame {len(self.frames) - 1}"))

    def close(self) -> List[str]:
        written = []
        if self.writer is not None:
            self.writer.close()
            if self.writer.n_frames:
                written.append(self.stem + "_annotated.mp4")
        T, K = len(self.frames), self.K
        ids = sorted({f.track_id for fs in self.frames for f in fs})
        row = {tid: i for i, tid in enumerate(ids)}
        lm = np.full((len(ids), T, K, 2), np.nan)
        unc = np.full((len(ids), T, K), np.nan)
        box = np.full((len(ids), T, 5), np.nan)
        for t, fs in enumerate(self.frames):
            for f in fs:
                i = row[f.track_id]
                lm[i, t], unc[i, t], box[i, t] = f.landmarks, f.uncertainty, [*f.box, f.score]
        for name, arr in (("_landmarks.npy", lm), ("_uncertainty.npy", unc), ("_boxes.npy", box)):
            written.append(atomic_save(self.stem + name, lambda tmp, a=arr: np.save(tmp, a), ".npy"))
        tracks = [{"track_id": int(tid), "row": row[tid],
                   "first_frame": int(next(t for t, fs in enumerate(self.frames) if any(f.track_id == tid for f in fs))),
                   "frames": int(sum(any(f.track_id == tid for f in fs) for fs in self.frames))} for tid in ids]
        doc = {"n_frames": T, "n_keypoints": K, "fps": self.fps, "units": "frame pixels", "mode": self.mode,
               "tracks": tracks, "frames": [{"frame": t, "faces": [f.to_dict() for f in fs]}
                                            for t, fs in enumerate(self.frames)]}
        written.append(atomic_write_json(self.stem + "_faces.json", doc))
        lines = ["frame,track_id,box_x1,box_y1,box_x2,box_y2,score," + ",".join(_face_row_header(K))]
        lines += [f"{t},{f.track_id},{_face_row(f)}" for t, fs in enumerate(self.frames) for f in fs]
        written.append(atomic_write_text(self.stem + "_faces.csv", "\n".join(lines) + "\n"))
        return written


def draw_faces(frame: np.ndarray, faces, text: Optional[str] = None) -> np.ndarray:
    """Frame copy with each face's landmarks, box and (streams) track id."""
    import cv2

    from ..video.io import draw_landmarks
    img = frame
    for f in faces:
        img = draw_landmarks(img, f.landmarks, f.box)
        if f.track_id is not None:
            x1, y1 = int(round(f.box[0])), int(round(f.box[1]))
            cv2.putText(img, f"#{f.track_id}", (x1 + 2, max(12, y1 + 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        (255, 255, 0), 1, cv2.LINE_AA)
    if text:
        img = draw_landmarks(img, None, text=text)
    return img if faces or text else frame.copy()


# ------------------------------------------------------------------------------------------ running
def run_images(pred, images, out: str, batch: int, annotate: bool, progress: bool, checkpoint: str) -> List[str]:
    from tqdm.auto import tqdm

    from .predictor import as_rgb
    names, sizes, faces = [], [], []
    bar = tqdm(total=len(images), desc="images", unit="img", disable=not progress)
    try:
        for s in range(0, len(images), batch):
            chunk = images[s:s + batch]
            rgbs = [as_rgb(p, "INPUT") for p, _ in chunk]
            res = pred.predict_batch(rgbs)
            for (path, name), rgb, fs in zip(chunk, rgbs, res):
                names.append(name)
                sizes.append(rgb.shape[:2])
                faces.append(fs)
                if annotate:
                    import cv2
                    dst = os.path.join(out, "annotated", os.path.splitext(name)[0] + ".png")
                    img = draw_faces(rgb, fs)
                    atomic_save(dst, lambda tmp, im=img: cv2.imwrite(tmp, im[:, :, ::-1].copy()), ".png")
            bar.update(len(chunk))
    finally:
        bar.close()
        written = write_image_outputs(out, names, sizes, faces, pred.n_keypoints, checkpoint) if names else []
    n_faces = sum(len(f) for f in faces)
    print(f"{len(names)} image(s), {n_faces} face(s)" + (f", {sum(not f for f in faces)} without face"
                                                        if any(not f for f in faces) else ""))
    return written + ([os.path.join(out, "annotated")] if annotate and names else [])


def run_stream(pred, frames: Iterable, stem: str, fps: float, size, annotate: bool, progress: bool,
               total: Optional[int], max_frames: Optional[int], desc: str) -> List[str]:
    """Runs a tracked stream into a StreamRecorder; outputs are written even when interrupted."""
    from tqdm.auto import tqdm
    rec = StreamRecorder(stem, pred.n_keypoints, fps, annotate, size, pred.config.mode)
    bar = tqdm(total=min(total, max_frames or total) if total else max_frames, desc=desc, unit="frame",
               disable=not progress)
    try:
        for t, (frame, faces) in enumerate(_with_frames(pred, frames)):
            rec.add(frame, faces)
            bar.update(1)
            if max_frames is not None and t + 1 >= max_frames:
                break
    finally:
        bar.close()
        written = rec.close()
        n_tracks = len({f.track_id for fs in rec.frames for f in fs})
        print(f"{desc}: {len(rec.frames)} frame(s), {n_tracks} track(s); wrote {', '.join(written)}")
    return written


def _with_frames(pred, frames):
    pred.reset()
    for frame in frames:
        yield frame, pred.step(frame)


def main(argv: Optional[List[str]] = None, camera: Optional[Callable[[int], Iterable]] = None) -> int:
    """``camera``: a callable ``index -> frame source`` replacing :class:`CameraSource` (tests; the
    source may have ``fps``)."""
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    from ..video.cli import check_device, rwr_config
    from ..video.io import VideoError, VideoReader
    try:  # every check before anything is written
        if args.camera is None and not args.inputs:
            raise ValueError("INPUT: give images, videos or folders, or --camera N")
        if args.camera is not None and args.inputs:
            raise ValueError(f"--camera: reads the camera only; got inputs {args.inputs[:3]} as well")
        if not 0 < args.iou_threshold <= 1:
            raise ValueError(f"--iou-threshold: expected a number in (0, 1], got {args.iou_threshold}")
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise ValueError(f"--out {args.out!r}: exists and is not a folder")
        check_device(args.device)
        images, videos = collect_inputs(args.inputs) if args.inputs else ([], [])
        readers = [VideoReader(v) for v in videos]
        stems = [os.path.join(args.out, os.path.splitext(os.path.basename(v))[0]) for v in videos]
        dup = sorted({s for s in stems if stems.count(s) > 1})
        if dup:
            raise ValueError(f"INPUT: several videos named {[os.path.basename(d) for d in dup]}; their outputs "
                             "would overwrite each other (run them separately)")
        from ..model import load_checkpoint
        model = load_checkpoint(args.checkpoint, map_location=str(args.device))
        cfg = rwr_config(args, args.mode, model.cfg.max_iter, model.cfg.image_size, args.batch_size)
        from .predictor import Predictor
        pred = Predictor(model, device=args.device, detector=args.detector, rwr=cfg, iou_threshold=args.iou_threshold,
                         max_misses=args.max_misses, min_score=args.min_score, max_faces=args.max_faces)
        source = None
        if args.camera is not None:
            source = (camera or CameraSource)(args.camera)
    except (ValueError, FileNotFoundError, ImportError, VideoError) as e:
        return _err(str(e))

    os.makedirs(args.out, exist_ok=True)
    progress = not args.no_progress
    with sigterm_as_interrupt():
        try:
            if source is not None:
                stem = os.path.join(args.out, f"camera{args.camera}")
                first = None
                frames = iter(source)
                try:
                    first = next(frames)
                except StopIteration:
                    return _err(f"--camera {args.camera}: no frame")
                import itertools
                try:
                    run_stream(pred, itertools.chain([first], frames), stem, getattr(source, "fps", 30.0),
                               (first.shape[1], first.shape[0]), args.annotate, progress, None, args.max_frames,
                               f"camera {args.camera}")
                except KeyboardInterrupt:
                    print("camera stopped", file=sys.stderr)
                return 0
            if images:
                run_images(pred, images, args.out, args.batch_size, args.annotate, progress, args.checkpoint)
            for r, stem in zip(readers, stems):
                run_stream(pred, r, stem, r.fps, r.size, args.annotate, progress, r.frame_count or None,
                           args.max_frames, os.path.basename(r.path))
        except KeyboardInterrupt:
            print("\ninterrupted: what was computed so far is written", file=sys.stderr)
            return 1
        except (ValueError, RuntimeError) as e:
            print(f"ldeq predict: error during the run: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
