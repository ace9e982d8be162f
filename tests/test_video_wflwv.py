"""WFLW-V split lists shipped with the package and the loader on a small synthetic root."""
import numpy as np
import pytest

from ldeq.video.synthetic import write_wflwv_root
from ldeq.video.wflwv import WFLWV, download_ranges, split_ids

from _paths import REFERENCE

REF = str(REFERENCE / "wflw_v")


def test_official_split_lists():
    easy, hard = split_ids("easy"), split_ids("hard")
    assert len(easy) == 500 and len(hard) == 500 and not set(easy) & set(hard)
    import os
    if os.path.isdir(REF):  # the package copy equals the reference files
        assert easy == open(f"{REF}/easy_video_IDs.txt").read().split()
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
