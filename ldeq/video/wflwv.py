"""WFLW-V loader (reference section 6).

Layout::

    ROOT/videos/<ID>.mp4
    ROOT/bboxes/<ID>.npy       (n_frames, >=4): x1 y1 x2 y2 per frame (extra columns ignored)
    ROOT/landmarks/<ID>.npy    (n_frames, 98, 2) frame pixels (pseudo-labels)

The official easy / hard split lists (500 IDs each) ship with ldeq in
``ldeq/resources/wflw_v/{easy,hard}_video_IDs.txt`` (``split_dir`` points at other lists, e.g. those
of a synthetic root written by ``ldeq video synth``). A ROOT may hold only part of the dataset:
``missing='skip'`` (default) drops IDs whose files are absent and reports them in
``WFLWV.missing``; ``missing='error'`` raises on the first absent file.

``ldeq data wflw-v --out ROOT --annotations BBOXES.zip --annotations LANDMARKS.zip`` builds such a
root (:func:`data_main`): the official annotation archives are unpacked into ``bboxes/`` and
``landmarks/``, and every clip is downloaded with yt-dlp (optional extra ``ldeq[download]``),
cut to its official frame range and written to ``videos/<ID>.mp4``; reruns resume, failures are
listed in ``ROOT/download_report.json``.
"""
import os
from dataclasses import dataclass
from importlib import resources
from typing import Dict, List, Optional, Sequence

import numpy as np

from .io import VideoReader, load_bboxes

SPLITS = ("easy", "hard")


def split_ids(split: str, split_dir: Optional[str] = None) -> List[str]:
    """The video IDs of the 'easy' or 'hard' split, in file order: the official lists shipped with
    ldeq (500 each), or ``split_dir/<split>_video_IDs.txt`` when ``split_dir`` is given."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    name = f"{split}_video_IDs.txt"
    if split_dir is not None:
        path = os.path.join(split_dir, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"split list {path!r}: not found")
        with open(path) as fh:
            text = fh.read()
    else:
        text = resources.files("ldeq").joinpath("resources", "wflw_v", name).read_text()
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def download_ranges() -> Dict[str, tuple]:
    """{ID: (first_frame, last_frame)} of each clip in its source video."""
    text = resources.files("ldeq").joinpath("resources", "wflw_v", "download_ranges.txt").read_text()
    out = {}
    for ln in text.splitlines():
        f = ln.split()
        if len(f) >= 3:
            out[f[0]] = (int(f[1]), int(f[2]))
    return out


@dataclass
class WFLWVItem:
    vid: str
    video_path: str
    bboxes_path: str
    landmarks_path: str

    def landmarks(self) -> np.ndarray:
        lm = np.load(self.landmarks_path, allow_pickle=False).astype(np.float64)
        if lm.ndim != 3 or lm.shape[1:] != (98, 2):
            raise ValueError(f"landmarks {self.landmarks_path!r}: expected (n_frames, 98, 2), got {lm.shape}")
        return lm

    def bboxes(self, n_frames: Optional[int] = None) -> np.ndarray:
        return load_bboxes(self.bboxes_path, n_frames)

    def reader(self) -> VideoReader:
        return VideoReader(self.video_path)


class WFLWV:
    """Items of a WFLW-V root for a split ('easy', 'hard', 'all') or an explicit ID list."""

    def __init__(self, root: str, split: str = "all", ids: Optional[Sequence[str]] = None, missing: str = "skip",
                 split_dir: Optional[str] = None):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"WFLW-V root {root!r}: not a directory")
        if missing not in ("skip", "error"):
            raise ValueError(f"missing: expected 'skip' or 'error', got {missing!r}")
        if ids is None:
            ids = (split_ids("easy", split_dir) + split_ids("hard", split_dir) if split == "all"
                   else split_ids(split, split_dir))
        self.root, self.split = root, split
        self.items: List[WFLWVItem] = []
        self.missing: List[str] = []
        for vid in ids:
            it = WFLWVItem(vid, os.path.join(root, "videos", f"{vid}.mp4"), os.path.join(root, "bboxes", f"{vid}.npy"),
                           os.path.join(root, "landmarks", f"{vid}.npy"))
            absent = [p for p in (it.video_path, it.bboxes_path, it.landmarks_path) if not os.path.isfile(p)]
            if absent:
                if missing == "error":
                    raise FileNotFoundError(f"WFLW-V video {vid}: missing {', '.join(absent)}")
                self.missing.append(vid)
            else:
                self.items.append(it)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i) -> WFLWVItem:
        return self.items[i]


# ----------------------------------------------------------------------------- download (ldeq data wflw-v)
class Downloader:
    """Fetches one YouTube video: ``download(video_id, folder) -> path`` of the file it wrote in
    ``folder`` (any container OpenCV decodes), or raises. :class:`YtDlpDownloader` is the real one;
    tests pass a fake (CI has no network)."""

    def download(self, video_id: str, folder: str) -> str:  # pragma: no cover - interface
        raise NotImplementedError


class YtDlpDownloader(Downloader):
    """yt-dlp (the maintained YouTube downloader; the official script's pytube is unmaintained),
    optional extra ``pip install 'ldeq[download]'``. ``fmt`` is a yt-dlp format selector; the
    default takes a single-file H.264 mp4 (no ffmpeg merge needed) of at most 720 p, the highest
    progressive stream pytube picked when the official labels were made: the labels are in that
    video's pixels, so another resolution would misplace them (checked: see :func:`cut_clip`)."""

    DEFAULT_FORMAT = ("bestvideo[ext=mp4][vcodec^=avc1][height<=720]/best[ext=mp4][height<=720]/"
                      "bestvideo[ext=mp4][height<=720]/best[height<=720]")

    def __init__(self, fmt: Optional[str] = None, retries: int = 5, quiet: bool = True):
        import importlib.util
        if importlib.util.find_spec("yt_dlp") is None:  # a missing extra is a clear error up front
            raise ImportError("downloading WFLW-V needs yt-dlp: pip install 'ldeq[download]' (or pip install yt-dlp)")
        self.fmt, self.retries, self.quiet = fmt or self.DEFAULT_FORMAT, int(retries), quiet

    def download(self, video_id: str, folder: str) -> str:
        import yt_dlp
        opts = {"format": self.fmt, "outtmpl": os.path.join(folder, f"{video_id}.%(ext)s"), "quiet": self.quiet,
                "noprogress": True, "retries": self.retries, "continuedl": True, "noplaylist": True}
        with yt_dlp.YoutubeDL(opts) as ydl:
            info = ydl.extract_info(f"https://www.youtube.com/watch?v={video_id}", download=True)
            return ydl.prepare_filename(info)


def cut_clip(src: str, dst: str, first: int, last: int) -> int:
    """Frames ``first..last`` (inclusive, 0-based, as the official script counts) of ``src`` to
    ``dst`` (.mp4, mp4v, the source's fps and size), atomically. Raises ValueError when the source
    is shorter than ``last + 1`` frames (then nothing is written). Returns the frame count."""
    import cv2

    from .io import AtomicVideoWriter
    cap = cv2.VideoCapture(src)
    if not cap.isOpened():
        raise ValueError(f"{src!r}: OpenCV cannot open the downloaded video")
    fps = float(cap.get(cv2.CAP_PROP_FPS)) or 30.0
    writer, n, idx = None, 0, -1
    try:
        while idx < last:
            ok, frame = cap.read()
            if not ok:
                break
            idx += 1
            if idx < first:
                continue
            if writer is None:
                writer = AtomicVideoWriter(dst, fps, (frame.shape[1], frame.shape[0]))
            writer.write(frame[:, :, ::-1])
            n += 1
        if idx < last:
            raise ValueError(f"{src!r}: the video has {idx + 1} frames but the clip needs frames {first}..{last}")
    except BaseException:
        if writer is not None:
            writer.n_frames = 0  # close() then deletes the temporary file: no partial clip
        raise
    finally:
        cap.release()
        if writer is not None:
            writer.close()
    return n


def import_annotations(root: str, sources: Sequence[str]) -> Dict[str, int]:
    """Places the official annotation files (``bboxes/<ID>.npy``, ``landmarks/<ID>.npy``) from zip /
    tar archives or folders into ``root/bboxes`` and ``root/landmarks`` (atomically; existing files
    are kept). The kind of each .npy comes from its parent folder name (``bboxes`` / ``landmarks``)
    or, failing that, from the archive's name. Returns {'bboxes': n, 'landmarks': n} imported."""
    import io as _io
    import tarfile
    import zipfile

    from .._io import atomic_save

    def kind_of(member: str, source: str) -> Optional[str]:
        parts = [p.lower() for p in member.replace("\\", "/").split("/")[:-1]] + [os.path.basename(source).lower()]
        for p in parts:
            if "bbox" in p or "box" in p:
                return "bboxes"
            if "landmark" in p:
                return "landmarks"
        return None

    counts = {"bboxes": 0, "landmarks": 0}

    def place(member: str, source: str, read):
        name = os.path.basename(member)
        if not name.endswith(".npy") or name.startswith("._"):
            return
        kind = kind_of(member, source)
        if kind is None:
            raise ValueError(f"annotations {source!r}: cannot tell whether {member!r} holds boxes or landmarks "
                             "(expected it under a 'bboxes' or 'landmarks' folder)")
        dst = os.path.join(root, kind, name)
        if os.path.isfile(dst):
            return
        data = read()
        arr = np.load(_io.BytesIO(data), allow_pickle=False)
        ok = arr.ndim == 3 and arr.shape[1:] == (98, 2) if kind == "landmarks" else arr.ndim == 2 and arr.shape[1] >= 4
        if not ok:
            raise ValueError(f"annotations {source!r}: {member!r} has shape {arr.shape}, not a WFLW-V {kind} array")
        atomic_save(dst, lambda tmp: open(tmp, "wb").write(data), ".npy")
        counts[kind] += 1

    for src in sources:
        if os.path.isdir(src):
            for dirpath, _, files in os.walk(src):
                for f in sorted(files):
                    path = os.path.join(dirpath, f)
                    place(os.path.relpath(path, os.path.dirname(os.path.abspath(src))), src,
                          lambda p=path: open(p, "rb").read())
        elif zipfile.is_zipfile(src):
            with zipfile.ZipFile(src) as z:
                for m in z.namelist():
                    place(m, src, lambda m=m: z.read(m))
        elif os.path.isfile(src) and tarfile.is_tarfile(src):
            with tarfile.open(src) as t:
                for m in t.getmembers():
                    if m.isfile():
                        place(m.name, src, lambda m=m: t.extractfile(m).read())
        else:
            raise FileNotFoundError(f"annotations {src!r}: not a folder, .zip or .tar archive")
    return counts


def download_wflwv(root: str, downloader: Downloader, ids: Optional[Sequence[str]] = None,
                   ranges: Optional[Dict[str, tuple]] = None, progress: bool = True) -> Dict[str, object]:
    """Downloads and cuts the WFLW-V clips into ``root/videos/<ID>.mp4``.

    Resumes: an ID whose clip exists is skipped (clips are written atomically, so an existing one is
    complete); a download interrupted half-way is restarted (yt-dlp continues its ``.part`` file in
    ``root/.download/``). A failure (video removed, private, region-locked, too short, network)
    is recorded and the next ID continues. Writes ``root/download_report.json`` (atomically) after
    every video: {'done': [...], 'skipped': [...], 'failed': {ID: reason}}; returns the same dict.
    When a clip's landmarks are present, their frame count must equal the clip's (else failed).
    """
    from tqdm.auto import tqdm

    from .._io import atomic_write_json
    ranges = download_ranges() if ranges is None else dict(ranges)
    ids = list(ranges) if ids is None else list(ids)
    unknown = [i for i in ids if i not in ranges]
    if unknown:
        raise ValueError(f"ids: no download range for {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    vid_dir, tmp_dir = os.path.join(root, "videos"), os.path.join(root, ".download")
    os.makedirs(vid_dir, exist_ok=True)
    report: Dict[str, object] = {"done": [], "skipped": [], "failed": {}}
    report_path = os.path.join(root, "download_report.json")
    bar = tqdm(ids, desc="WFLW-V", unit="video", disable=not progress)
    try:
        for vid in bar:
            dst = os.path.join(vid_dir, f"{vid}.mp4")
            if os.path.isfile(dst):
                report["skipped"].append(vid)
                continue
            first, last = ranges[vid]
            try:
                os.makedirs(tmp_dir, exist_ok=True)
                src = downloader.download(vid, tmp_dir)
                try:
                    n = cut_clip(src, dst, int(first), int(last))
                finally:
                    if src and os.path.isfile(src):
                        os.unlink(src)
                lm = os.path.join(root, "landmarks", f"{vid}.npy")
                if os.path.isfile(lm):
                    n_lm = np.load(lm, mmap_mode="r", allow_pickle=False).shape[0]
                    if n_lm != n:
                        os.unlink(dst)
                        raise ValueError(f"the clip has {n} frames but its landmarks {n_lm}")
                report["done"].append(vid)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 -- one lost video must not stop the other 999
                report["failed"][vid] = f"{type(e).__name__}: {str(e)[:300]}"
            atomic_write_json(report_path, report, indent=1)
    finally:
        bar.close()
        atomic_write_json(report_path, report, indent=1)
        if os.path.isdir(tmp_dir) and not os.listdir(tmp_dir):
            os.rmdir(tmp_dir)
    return report


def data_main(argv: Optional[List[str]] = None, downloader: Optional[Downloader] = None) -> int:
    """``ldeq data wflw-v --out ROOT [--annotations FILE ...] [--ids ID,...] [--split easy|hard|all]``."""
    import argparse
    import sys
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="ldeq data", description="Download datasets. 'ldeq data wflw-v --out ROOT' "
                                "fetches the WFLW-V videos with yt-dlp (pip install 'ldeq[download]'), cuts them "
                                "to the official frame ranges and places the official annotations.")
    p.add_argument("dataset", choices=["wflw-v"])
    p.add_argument("--out", required=True, help="WFLW-V root (videos/, bboxes/, landmarks/)")
    p.add_argument("--annotations", action="append", default=[], metavar="ARCHIVE",
                   help="the official bboxes / landmarks archive (.zip, .tar or folder); repeatable")
    p.add_argument("--split", choices=["easy", "hard", "all"], default="all", help="which clips (default all 1000)")
    p.add_argument("--ids", default=None, help="comma-separated video IDs instead of --split")
    p.add_argument("--format", default=None, help="yt-dlp format selector (default: <= 720p H.264 mp4)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise ValueError(f"--out {args.out!r}: exists and is not a folder")
        for a in args.annotations:
            if not os.path.exists(a):
                raise FileNotFoundError(f"--annotations {a!r}: not found")
        ranges = download_ranges()
        if args.ids:
            ids = [i.strip() for i in args.ids.split(",") if i.strip()]
            bad = [i for i in ids if i not in ranges]
            if bad:
                raise ValueError(f"--ids: not WFLW-V video IDs: {bad[:5]}")
        else:
            ids = (split_ids("easy") + split_ids("hard")) if args.split == "all" else split_ids(args.split)
        dl = downloader or YtDlpDownloader(args.format)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"ldeq data: error: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    if args.annotations:
        try:
            counts = import_annotations(args.out, args.annotations)
        except (ValueError, FileNotFoundError, OSError) as e:
            print(f"ldeq data: error: {e}", file=sys.stderr)
            return 2
        print(f"annotations: {counts['bboxes']} box files, {counts['landmarks']} landmark files placed under {args.out}")
    try:
        rep = download_wflwv(args.out, dl, ids, ranges, progress=not args.no_progress)
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 1
    failed = rep["failed"]
    print(f"{len(rep['done'])} downloaded, {len(rep['skipped'])} already present, {len(failed)} failed "
          f"(details in {os.path.join(args.out, 'download_report.json')})")
    for vid, why in list(failed.items())[:10]:
        print(f"  {vid}: {why}")
    return 1 if failed else 0


main = data_main
