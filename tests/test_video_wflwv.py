"""WFLW-V split lists shipped with the package and the loader on a small synthetic root."""
import hashlib
import importlib.resources

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
