"""Video decode/encode, bbox files, box smoothing, the Haar detector's no-face path, landmark files."""
import numpy as np
import pytest

from ldeq.video.io import (AtomicVideoWriter, HaarFaceDetector, NoFaceError, VideoError, VideoReader, load_bboxes,
                           read_video, save_landmarks, smooth_boxes, write_video)


def _frames(T=5, H=48, W=64):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, size=(H, W, 3)).astype(np.float32)
    base = np.repeat(np.repeat(base[::8, ::8], 8, 0), 8, 1)  # blocky: survives mp4 compression
    return [np.clip(base + 10 * t, 0, 255).astype(np.uint8) for t in range(T)]


def test_video_roundtrip(tmp_path):
    frames = _frames()
    write_video(str(tmp_path / "a.mp4"), frames, fps=25)
    got, fps = read_video(str(tmp_path / "a.mp4"))
    assert got.shape == (5, 48, 64, 3) and fps == pytest.approx(25)
    assert np.abs(got.astype(float) - np.stack(frames)).mean() < 12  # lossy codec, same content
    r = VideoReader(str(tmp_path / "a.mp4"))
    assert r.size == (64, 48) and r.frame_count == 5
    assert len(list(r)) == 5 and len(list(r)) == 5  # re-iterable


@pytest.mark.parametrize("content,msg", [(None, "not found"), (b"", "cannot decode"), (b"not a video" * 50, "cannot decode")])
def test_bad_videos(tmp_path, content, msg):
    p = tmp_path / "bad.mp4"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(VideoError, match=msg):
        VideoReader(str(p))


def test_atomic_writer_flushes_on_error(tmp_path):
    path = tmp_path / "out.mp4"
    frames = _frames()
    with pytest.raises(RuntimeError):
        with AtomicVideoWriter(str(path), 30, (64, 48)) as w:
            for i, f in enumerate(frames):
                if i == 3:
                    raise RuntimeError("boom")
                w.write(f)
                assert not path.exists()  # nothing under the final name while writing
    assert len(list(VideoReader(str(path)))) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]  # no temporary file left


def test_atomic_writer_replaces_the_partial_file_of_a_killed_run(tmp_path):
    from ldeq.video.io import partial_video_path
    path = tmp_path / "out.mp4"
    stale = partial_video_path(str(path))
    assert stale == str(tmp_path / ".out.mp4.partial.mp4")
    open(stale, "wb").write(b"half a video from a SIGKILLed run")
    with AtomicVideoWriter(str(path), 30, (64, 48)) as w:
        w.write(_frames()[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]
    assert len(list(VideoReader(str(path)))) == 1


def test_load_bboxes_formats_and_errors(tmp_path):
    b = np.array([[1, 2, 11, 22, 0.9], [np.nan] * 5, [3, 4, 13, 24, 0.8]], float)
    np.save(tmp_path / "b.npy", b)
    got = load_bboxes(str(tmp_path / "b.npy"), n_frames=3)
    assert got.shape == (3, 4) and np.isnan(got[1]).all()
    np.testing.assert_array_equal(got[[0, 2]], b[[0, 2], :4])
    (tmp_path / "b.txt").write_text("# x1 y1 x2 y2\n1,2,11,22\n3 4 13 24\n")
    np.testing.assert_array_equal(load_bboxes(str(tmp_path / "b.txt")), [[1, 2, 11, 22], [3, 4, 13, 24]])
    with pytest.raises(ValueError, match="2 boxes for a video of 5 frames"):
        load_bboxes(str(tmp_path / "b.txt"), n_frames=5)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_bboxes(str(tmp_path / "none.npy"))
    np.save(tmp_path / "flat.npy", np.zeros(4))
    with pytest.raises(ValueError, match="n_frames, >=4"):
        load_bboxes(str(tmp_path / "flat.npy"))
    (tmp_path / "inv.txt").write_text("1 2 11 22\n5 5 4 9\n")
    with pytest.raises(ValueError, match="row 1"):
        load_bboxes(str(tmp_path / "inv.txt"))
    (tmp_path / "junk.txt").write_text("a b c d\n")
    with pytest.raises(ValueError, match="cannot parse"):
        load_bboxes(str(tmp_path / "junk.txt"))


def test_smooth_boxes_hand_computed():
    nan = [np.nan] * 4
    raw = np.array([nan, [0, 0, 10, 10], [2, 2, 12, 12], nan, nan, nan, [4, 4, 14, 14]], float)
    out = smooth_boxes(raw, alpha=0.5, max_hold=2)
    np.testing.assert_allclose(out[0], [0, 0, 10, 10])  # back-filled from the first detection
    np.testing.assert_allclose(out[2], [1, 1, 11, 11])  # EMA 0.5
    np.testing.assert_allclose(out[3], [1, 1, 11, 11])  # held
    np.testing.assert_allclose(out[4], [1, 1, 11, 11])  # held (2nd)
    assert np.isnan(out[5]).all()  # beyond max_hold: no face
    np.testing.assert_allclose(out[6], [4, 4, 14, 14])  # restarts without the stale box


def test_haar_no_face_is_a_clear_error():
    det = HaarFaceDetector()
    blank = [np.full((120, 160, 3), 128, np.uint8)] * 3
    assert det.detect(blank[0]) is None
    with pytest.raises(NoFaceError, match="no face in any of 3 frames.*--bboxes"):
        det.boxes(blank, name="clip.mp4")
    # with an injected detector: frames without face are held / back-filled
    seq = [None, np.array([10, 10, 50, 50.0]), None]
    boxes = det.boxes(range(3), detect=lambda i: seq[i])
    np.testing.assert_allclose(boxes, [[10, 10, 50, 50]] * 3)


def test_save_landmarks_npy_and_csv(tmp_path):
    lm = np.arange(3 * 4 * 2, dtype=float).reshape(3, 4, 2)
    lm[1] = np.nan
    save_landmarks(str(tmp_path / "v"), lm)
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), lm)
    lines = (tmp_path / "v.csv").read_text().splitlines()
    assert lines[0] == "frame,x0,y0,x1,y1,x2,y2,x3,y3"
    row2 = [float(v) for v in lines[3].split(",")]
    assert row2[0] == 2 and row2[1:] == lm[2].reshape(-1).tolist()
    assert "nan" in lines[2].lower()


def test_outputs_get_normal_permissions(tmp_path):
    import os
    umask = os.umask(0o022)
    try:
        write_video(str(tmp_path / "p.mp4"), _frames(2), 30)
        save_landmarks(str(tmp_path / "p"), np.zeros((2, 3, 2)))
    finally:
        os.umask(umask)
    for name in ("p.mp4", "p.npy", "p.csv"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
