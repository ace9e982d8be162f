"""WFLW-V split lists shipped with the package and the loader on a small synthetic root."""
import hashlib
import importlib.resources
import os

import numpy as np
import pytest

from ldeq.video.synthetic import write_wflwv_root
from ldeq.video.wflwv import WFLWV, download_ranges, split_ids

# sha256 of the official WFLW-V split files (easy/hard video IDs and per-video frame ranges, as
# released with the official LDEQ code), computed from the project's reference copy on 2026-11-30.
# The package ships byte-identical copies in ldeq/resources/wflw_v/.
OFFICIAL_SHA256 = {
    "download_ranges.txt": "9b0ee057f64b66851c9c4bca8f109c23e149bcac6796572812638842089105fc",
    "easy_video_IDs.txt": "ee26f852466b2c7e0f5edd07c4e2d5f9ddf594ef89b67015c3c4a5c9a6e7580e",
    "hard_video_IDs.txt": "d492b8d6335462db8bf755600fa800340dce877c9b38501269d8f4e1d7fc4e1f",
}


def test_package_split_files_are_the_official_ones():
    res = importlib.resources.files("ldeq") / "resources" / "wflw_v"
    for name, digest in OFFICIAL_SHA256.items():
        assert hashlib.sha256((res / name).read_bytes()).hexdigest() == digest, name


def test_official_split_lists():
    easy, hard = split_ids("easy"), split_ids("hard")
    assert len(easy) == 500 and len(hard) == 500 and not set(easy) & set(hard)
    r = download_ranges()
    assert len(r) == 1000 and set(r) == set(easy) | set(hard)
    a, b = r[easy[0]]
    assert 120 <= b - a + 1 <= 151  # clips are 120-151 frames
    with pytest.raises(ValueError, match="split"):
        split_ids("medium")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("wflwv")
    write_wflwv_root(str(r), n_per_split=1, n_frames=4, progress=False)
    return r


def test_loader_reads_items(root):
    ds = WFLWV(str(root), "all", split_dir=str(root / "splits"))
    assert [it.vid for it in ds] == ["synth_easy_000", "synth_hard_000"]
    it = ds[1]
    lm = it.landmarks()
    assert lm.shape == (4, 98, 2)
    assert it.bboxes(len(lm)).shape == (4, 4)
    assert len(list(it.reader())) == 4


def test_missing_files_skip_or_error(root, tmp_path):
    ds = WFLWV(str(root), "easy")  # official IDs: none of them is in this root
    assert len(ds) == 0 and len(ds.missing) == 500
    with pytest.raises(FileNotFoundError, match="eEbMsJPwPEM"):
        WFLWV(str(root), "easy", missing="error")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        WFLWV(str(tmp_path / "nope"))
    np.save(root / "landmarks" / "bad.npy", np.zeros((4, 68, 2)))
    for sub in ("videos/bad.mp4", "bboxes/bad.npy"):
        (root / sub).write_bytes((root / sub.replace("bad", "synth_easy_000")).read_bytes())
    with pytest.raises(ValueError, match=r"\(n_frames, 98, 2\)"):
        WFLWV(str(root), ids=["bad"])[0].landmarks()


# ----------------------------------------------------------------------------- ldeq data wflw-v
def _coded_video(path, n, size=(48, 32)):
    """A video whose frame i is uniformly grey level 30 + 15 i (so a cut can be read back)."""
    from ldeq.video.io import write_video
    write_video(path, [np.full((size[1], size[0], 3), min(30 + 15 * i, 255), np.uint8) for i in range(n)], 25)


class FakeDownloader:
    """Writes a coded video per ID; 'gone' raises like a removed video; counts the calls."""

    def __init__(self, lengths):
        self.lengths, self.calls = lengths, []

    def download(self, vid, folder):
        self.calls.append(vid)
        if vid == "gone":
            raise RuntimeError("ERROR: [youtube] gone: Video unavailable")
        path = os.path.join(folder, f"{vid}.mp4")
        _coded_video(path, self.lengths[vid])
        return path


def _frame_codes(path):
    from ldeq.video.io import VideoReader
    return [int(round((f.mean() - 30) / 15)) for f in VideoReader(str(path))]


def test_download_cuts_official_ranges_resumes_and_reports_failures(tmp_path):
    import json

    from ldeq.video.wflwv import download_wflwv
    root = tmp_path / "root"
    ranges = {"vidA": (2, 5), "vidB": (0, 3), "short": (3, 9), "gone": (0, 1)}
    dl = FakeDownloader({"vidA": 10, "vidB": 4, "short": 6})
    os.makedirs(root / "landmarks")
    np.save(root / "landmarks" / "vidB.npy", np.zeros((4, 98, 2)))
    rep = download_wflwv(str(root), dl, ranges=ranges, progress=False)
    assert rep["done"] == ["vidA", "vidB"] and rep["skipped"] == []
    assert set(rep["failed"]) == {"short", "gone"}
    assert "6 frames but the clip needs frames 3..9" in rep["failed"]["short"]
    assert "Video unavailable" in rep["failed"]["gone"]
    assert _frame_codes(root / "videos" / "vidA.mp4") == [2, 3, 4, 5]  # inclusive, 0-based
    assert _frame_codes(root / "videos" / "vidB.mp4") == [0, 1, 2, 3]
    assert sorted(os.listdir(root / "videos")) == ["vidA.mp4", "vidB.mp4"]  # no partial clip, no temp
    assert not (root / ".download").exists()
    assert json.loads((root / "download_report.json").read_text()) == rep
    # rerun: done clips are skipped without downloading, failures are retried
    dl2 = FakeDownloader({"vidA": 10, "vidB": 4, "short": 12})
    rep2 = download_wflwv(str(root), dl2, ranges=ranges, progress=False)
    assert dl2.calls == ["short", "gone"] and rep2["skipped"] == ["vidA", "vidB"] and rep2["done"] == ["short"]
    assert _frame_codes(root / "videos" / "short.mp4") == [3, 4, 5, 6, 7, 8, 9]


def test_clip_whose_landmarks_have_another_length_fails(tmp_path):
    from ldeq.video.wflwv import download_wflwv
    os.makedirs(tmp_path / "landmarks")
    np.save(tmp_path / "landmarks" / "v.npy", np.zeros((5, 98, 2)))
    rep = download_wflwv(str(tmp_path), FakeDownloader({"v": 8}), ranges={"v": (0, 3)}, progress=False)
    assert "the clip has 4 frames but its landmarks 5" in rep["failed"]["v"]
    assert not (tmp_path / "videos" / "v.mp4").exists()


def test_interrupted_cut_leaves_no_clip(tmp_path, monkeypatch):
    from ldeq.video import io as vio
    from ldeq.video.wflwv import download_wflwv
    real = vio.AtomicVideoWriter.write
    n = {"k": 0}

    def boom(self, frame):
        n["k"] += 1
        if n["k"] == 3:
            raise KeyboardInterrupt
        return real(self, frame)
    monkeypatch.setattr(vio.AtomicVideoWriter, "write", boom)
    with pytest.raises(KeyboardInterrupt):
        download_wflwv(str(tmp_path), FakeDownloader({"v": 8}), ranges={"v": (0, 6)}, progress=False)
    assert os.listdir(tmp_path / "videos") == []  # resumable: the next run starts this clip again


def test_ldeq_data_command_with_annotations_and_a_fake_downloader(tmp_path, capsys):
    import zipfile

    from ldeq.video.wflwv import WFLWV, data_main, download_ranges, split_ids
    vid = split_ids("easy")[0]
    first, last = download_ranges()[vid]
    n = last - first + 1
    ann = tmp_path / "WFLW_V_annotations.zip"
    with zipfile.ZipFile(ann, "w") as z:
        for kind, arr in (("bboxes", np.tile([10.0, 10, 40, 40], (n, 1))), ("landmarks", np.zeros((n, 98, 2)))):
            buf = __import__("io").BytesIO()
            np.save(buf, arr)
            z.writestr(f"WFLW_V/{kind}/{vid}.npy", buf.getvalue())
    root = tmp_path / "root"
    dl = FakeDownloader({vid: last + 3})
    rc = data_main(["wflw-v", "--out", str(root), "--annotations", str(ann), "--ids", vid, "--no-progress"],
                   downloader=dl)
    assert rc == 0 and dl.calls == [vid]
    out = capsys.readouterr().out
    assert "1 box files, 1 landmark files" in out and "1 downloaded" in out
    ds = WFLWV(str(root), "easy")
    assert [it.vid for it in ds.items] == [vid]
    assert len(list(ds.items[0].reader())) == n
    # bad input: exit 2 before anything is written
    assert data_main(["wflw-v", "--out", str(tmp_path / "o2"), "--ids", "notAnId"], downloader=dl) == 2
    assert "--ids: not WFLW-V video IDs" in capsys.readouterr().err and not (tmp_path / "o2").exists()
    assert data_main(["wflw-v", "--out", str(tmp_path / "o3"), "--annotations", str(tmp_path / "nope.zip")],
                     downloader=dl) == 2
    assert not (tmp_path / "o3").exists()


def test_missing_downloader_extra_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import importlib.util

    from ldeq.video.wflwv import data_main
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "yt_dlp" else real(name, *a))
    assert data_main(["wflw-v", "--out", str(tmp_path / "o"), "--split", "easy"]) == 2
    assert "pip install 'ldeq[download]'" in capsys.readouterr().err and not (tmp_path / "o").exists()
