"""``ldeq.predict``: Predictor on images and streams, the IoU tracker with one RwR state per face,
and the ``ldeq predict`` command (images, folders, videos, an injected camera, bad input).

Tolerances. Streams are compared with the video runner in the same batch composition and order
(identical float ops: 1e-6 px). ``predict_batch`` against one image at a time changes the batch
shape, hence the convolutions' reduction order (relative rounding ~1e-7 per op); the random,
untrained test model is not contractive, so 3 + 1 cell applications amplify that: measured
2.8e-4 px on these clips; we allow 1e-2 px (1e-4 of the ~80 px faces).
"""
import json
import os

import numpy as np
import pytest
import torch

from ldeq.model import LDEQ, LDEQConfig, save_checkpoint
from ldeq.predict import Face, IoUTracker, Predictor, iou_matrix
from ldeq.video.rwr import MODES, RwRConfig, RwRRunner
from ldeq.video.model_solve import LDEQSolve
from ldeq.video.synthetic import make_synthetic_video

ATOL_PX = 1e-2


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LDEQ(LDEQConfig(injection_width=16, cell_base_width=16, cell_width_increment=4, heatmap_size=16,
                           image_size=64, max_iter=3, solver="fixed_point")).eval()


def _no_detector(frame):
    raise AssertionError("the detector must not run when boxes are given")


def composite_clip(T=12):
    """A 128 x 320 clip with four faces: A moves right, B moves left and crosses A (50 px lower),
    C is there in frames 0-5 then leaves, D enters at frame 7 where C was. Returns frames
    (T, 128, 320, 3) and per face a (T, 4) box array, NaN where the face is absent."""
    H, W = 128, 320
    faces = {n: make_synthetic_video(s, n_frames=T, size=(64, 64)) for n, s in zip("ABCD", (1, 2, 3, 4))}
    pos = {"A": [(int(20 + 130 * t / (T - 1)), 0) for t in range(T)],
           "B": [(int(170 - 130 * t / (T - 1)), 50) for t in range(T)],
           "C": [(250, 20) if t <= 5 else None for t in range(T)],
           "D": [(250, 40) if t >= 7 else None for t in range(T)]}
    frames = np.full((T, H, W, 3), 40, np.uint8)
    boxes = {n: np.full((T, 4), np.nan) for n in faces}
    for t in range(T):
        for n in "CDAB":  # B drawn last: it covers A where they cross
            if pos[n][t] is None:
                continue
            x, y = pos[n][t]
            frames[t, y:y + 64, x:x + 64] = faces[n].frames[t]
            boxes[n][t] = faces[n].boxes[t] + [x, y, x, y]
    return frames, boxes


def detections_per_frame(boxes):
    T = len(next(iter(boxes.values())))
    return [np.stack([b[t] for b in boxes.values() if np.isfinite(b[t]).all()]) for t in range(T)]


# ------------------------------------------------------------------------------------------ tracker
def test_iou_matrix_values():
    a = np.array([[0, 0, 10, 10], [0, 0, 2, 2]], float)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]], float)
    np.testing.assert_allclose(iou_matrix(a, b), [[50 / 150, 0, 1], [0, 0, 4 / 100]])
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 3)


def test_tracker_keeps_ids_drops_after_misses_and_starts_new_tracks():
    tr = IoUTracker(iou_threshold=0.3, max_misses=1, box_smoothing=1.0)
    d0 = np.array([[0, 0, 10, 10, .9], [50, 0, 60, 10, .8]])
    assert [t.id for t in tr.update(d0, 0)] == [0, 1]
    # both move 2 px right; listed in the other order: ids follow the boxes, not the order
    assert [t.id for t in tr.update(d0[::-1] + [2, 0, 2, 0, 0], 1)] == [0, 1]
    np.testing.assert_allclose(tr.tracks[0].velocity, [2, 0])
    # face 1 missed once: kept (no output), then dropped on the second miss
    assert [t.id for t in tr.update(d0[:1] + [4, 0, 4, 0, 0], 2)] == [0]
    assert [t.id for t in tr.tracks] == [0, 1] and tr.tracks[1].misses == 1
    assert [t.id for t in tr.update(d0[:1] + [6, 0, 6, 0, 0], 3)] == [0]
    assert [t.id for t in tr.dropped] == [1] and [t.id for t in tr.tracks] == [0]
    # a face at the dropped place is a new track
    assert [t.id for t in tr.update(np.vstack([d0[:1] + [8, 0, 8, 0, 0], d0[1:]]), 4)] == [0, 2]
    with pytest.raises(ValueError, match="iou_threshold"):
        IoUTracker(iou_threshold=0)


def test_tracker_velocity_keeps_identities_of_faces_crossing_head_on():
    tr = IoUTracker(box_smoothing=1.0)
    for t in range(12):  # same height, 8 px per frame towards each other, boxes 30 wide
        a, b = 10 + 8 * t, 100 - 8 * t
        ids = {tuple(np.round(x.box[:1])): x.id for x in tr.update(np.array([[a, 0, a + 30, 30, 1],
                                                                              [b, 0, b + 30, 30, 1]]), t)}
        assert ids[(a,)] == 0 and ids[(b,)] == 1


# ------------------------------------------------------------------------------------------ Predictor
def test_predict_image_matches_a_solve_from_zeros_and_reports_pixels(model):
    v = make_synthetic_video(5, n_frames=3, size=(96, 128))
    p = Predictor(model, detector=_no_detector)
    faces = p.predict(v.frames[0], boxes=v.boxes[:1])
    assert len(faces) == 1 and isinstance(faces[0], Face) and faces[0].track_id is None
    f = faces[0]
    assert f.landmarks.shape == (98, 2) and f.uncertainty.shape == (98,) and f.score == 1.0
    ref = RwRRunner(LDEQSolve(model), RwRConfig(mode="off", max_iter_full=3, crop_size=64)).run(
        [v.frames[:1]], [v.boxes[:1]], progress=False)[0][0]
    np.testing.assert_allclose(f.landmarks, ref, atol=ATOL_PX, rtol=0)
    # uncertainty: the decoded spread (crop units) times the crop's side in frame pixels
    from ldeq.video.rwr import crop_batch
    images, mats = crop_batch(v.frames[:1], v.boxes[:1], 64)
    with torch.no_grad():
        z = model(LDEQSolve(model).normalize(images)).z_star
        std = model.decode(z)[2][0].double().numpy()
    side = max(v.boxes[0, 2] - v.boxes[0, 0], v.boxes[0, 3] - v.boxes[0, 1]) * 1.2
    np.testing.assert_allclose(f.uncertainty, std * side, rtol=1e-4)
    d = f.to_dict()
    assert set(d) == {"box", "score", "landmarks", "uncertainty"} and len(d["landmarks"]) == 98


def test_predict_batch_equals_one_image_at_a_time(model):
    frames, boxes = composite_clip()
    dets = detections_per_frame(boxes)
    p = Predictor(model, detector=_no_detector, batch_size=3)  # 4 + 3 faces: chunks of 3
    batch = p.predict_batch([frames[0], frames[8]], boxes=[dets[0], dets[8]])
    assert [len(b) for b in batch] == [len(dets[0]), len(dets[8])] == [3, 3]
    for img, d, got in zip([frames[0], frames[8]], [dets[0], dets[8]], batch):
        for f, single in zip(got, p.predict(img, boxes=d)):
            np.testing.assert_allclose(f.landmarks, single.landmarks, atol=ATOL_PX, rtol=0)
            np.testing.assert_allclose(f.uncertainty, single.uncertainty, atol=ATOL_PX, rtol=0)
    # detections are sorted left to right
    assert all(np.all(np.diff([f.box[0] for f in b]) >= 0) for b in batch)
    assert p.predict(frames[0], boxes=np.zeros((0, 4))) == []


@pytest.mark.parametrize("mode", MODES)
def test_stream_of_one_face_is_the_video_runner(model, mode):
    v = make_synthetic_video(7, n_frames=6, size=(96, 128))
    p = Predictor(model, detector=_no_detector, mode=mode, box_smoothing=1.0)
    got = [fs for fs in p.stream(v.frames, boxes=[b[None] for b in v.boxes])]
    assert all(len(fs) == 1 and fs[0].track_id == 0 for fs in got)
    cfg = RwRConfig(mode=mode, max_iter_full=3, crop_size=64)
    ref = RwRRunner(LDEQSolve(model), cfg).run([v.frames], [v.boxes], progress=False)[0]
    np.testing.assert_allclose(np.stack([fs[0].landmarks for fs in got]), ref, atol=ATOL_PX, rtol=0)


@pytest.mark.parametrize("mode", [m for m in MODES if m != "off"])
def test_several_faces_each_with_its_own_equilibrium(model, mode):
    """Faces that move, cross, leave and enter: identities are kept, every track's landmarks are
    exactly those of the single-video runner on that face's boxes (its own RwR state, reset
    when it leaves), and the solves of one frame are batched."""
    frames, boxes = composite_clip()
    T = len(frames)
    p = Predictor(model, detector=_no_detector, mode=mode, box_smoothing=1.0, max_misses=0)
    calls = []
    real = p.solve.__call__

    class Spy:
        def __call__(self, images, z0, *a, **k):
            calls.append((images.shape[0], z0 is None))
            return real(images, z0, *a, **k)
    p._runner.solve = Spy()
    out = list(p.stream(frames, boxes=detections_per_frame(boxes)))
    # identities: A, B, C get 0, 1, 2 (left to right at frame 0); D, entering later, gets 3
    ids = {}
    for name, b in boxes.items():
        for t in range(T):
            if not np.isfinite(b[t]).all():
                continue
            match = [f for f in out[t] if np.allclose(f.box, b[t])]
            assert len(match) == 1, (name, t)
            ids.setdefault(name, set()).add(match[0].track_id)
    assert {n: sorted(s) for n, s in ids.items()} == {"A": [0], "B": [1], "C": [2], "D": [3]}, ids
    # per-track landmarks == the video runner given the four faces as four videos of the same
    # frames (its NaN boxes reset a video's state): same crops, same batches in the same order
    # (tracks by id, videos by index), so the same floats up to nothing but op-order noise
    cfg = RwRConfig(mode=mode, max_iter_full=3, crop_size=64)
    ref = RwRRunner(LDEQSolve(model), cfg).run([frames] * 4, [boxes[n] for n in "ABCD"], progress=False)
    for name, tid in (("A", 0), ("B", 1), ("C", 2), ("D", 3)):
        got = np.full((T, 98, 2), np.nan)
        for t, fs in enumerate(out):
            for f in fs:
                if f.track_id == tid:
                    got[t] = f.landmarks
        np.testing.assert_allclose(got, ref[tid], atol=1e-6, rtol=0, equal_nan=True, err_msg=name)
    # and not the landmarks of a run without the other faces' states: a state mix-up would show
    assert np.nanmax(np.abs(ref[0][1:] - ref[1][1:])) > 1.0
    # one batched solve per frame and kind: frame 0 = 3 new faces from zeros, frame 1 = 3 warm
    assert calls[0] == (3, True) and calls[1] == (3, False)
    assert (1, True) in calls  # D entering starts from zeros on its own
    assert len(calls) <= 2 * T


def test_images_are_validated(model):
    p = Predictor(model, detector=_no_detector)
    with pytest.raises(ValueError, match="uint8"):
        p.predict(np.zeros((10, 10, 3), np.float32), boxes=np.zeros((0, 4)))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        p.predict(np.zeros((10, 10, 5), np.uint8), boxes=np.zeros((0, 4)))
    with pytest.raises(FileNotFoundError, match="nope.png"):
        p.predict("nope.png")
    with pytest.raises(ValueError, match="detector"):
        Predictor(model, detector="yolo")
    with pytest.raises(ValueError, match="mode"):
        Predictor(model, mode="turbo")


# ------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def env(tmp_path_factory, model):
    import cv2

    from ldeq.video.io import write_video
    d = tmp_path_factory.mktemp("predict_cli")
    save_checkpoint(model, str(d / "tiny.pt"))
    frames, boxes = composite_clip()
    os.makedirs(d / "imgs" / "sub")
    cv2.imwrite(str(d / "imgs" / "f0.png"), frames[0][:, :, ::-1])
    cv2.imwrite(str(d / "imgs" / "sub" / "f8.png"), frames[8][:, :, ::-1])
    (d / "imgs" / "notes.txt").write_text("not an image: ignored in folders")
    write_video(str(d / "clip.mp4"), frames, 10)
    return d, frames, boxes


@pytest.fixture
def gt_detector(monkeypatch, env):
    """The Haar detector replaced by the clip's boxes, looked up by frame content (a real detector
    finds nothing on these synthetic faces; decoded mp4 frames differ slightly, so nearest)."""
    _, frames, boxes = env
    dets = detections_per_frame(boxes)
    from ldeq.predict import detect

    def fake(self, frame):
        t = int(np.argmin([np.abs(frame.astype(float) - f).mean() for f in frames]))
        return np.concatenate([dets[t], np.full((len(dets[t]), 1), 0.9)], axis=1)
    monkeypatch.setattr(detect.HaarDetector, "__call__", fake)


def _cli(argv, **kw):
    from ldeq.predict.cli import main
    try:
        return main(argv, **kw)
    except SystemExit as e:  # argparse errors
        return e.code


def test_cli_images_folder_and_video(env, gt_detector, tmp_path):
    d, frames, boxes = env
    out = tmp_path / "out"
    rc = _cli([str(d / "imgs"), str(d / "clip.mp4"), "--checkpoint", str(d / "tiny.pt"), "--out", str(out),
               "--annotate", "--no-progress", "--batch-size", "2", "--max-misses", "0"])
    assert rc == 0
    doc = json.loads((out / "predictions.json").read_text())
    assert [im["path"] for im in doc["images"]] == ["imgs/f0.png", "imgs/sub/f8.png"]
    assert [len(im["faces"]) for im in doc["images"]] == [3, 3]
    assert len(doc["images"][0]["faces"][0]["landmarks"]) == 98
    csv = (out / "predictions.csv").read_text().splitlines()
    assert len(csv) == 1 + 6 and csv[0].startswith("image,face,box_x1") and len(csv[1].split(",")) == 7 + 3 * 98
    assert (out / "annotated" / "imgs" / "sub" / "f8.png").is_file()
    T = len(frames)
    lm = np.load(out / "clip_landmarks.npy")
    assert lm.shape == (4, T, 98, 2)
    assert np.load(out / "clip_uncertainty.npy").shape == (4, T, 98)
    present = np.isfinite(np.load(out / "clip_boxes.npy")[:, :, 0])
    np.testing.assert_array_equal(present, np.stack([np.isfinite(boxes[n][:, 0]) for n in "ABCD"]))
    faces = json.loads((out / "clip_faces.json").read_text())
    assert [t["track_id"] for t in faces["tracks"]] == [0, 1, 2, 3] and faces["n_frames"] == T
    assert faces["tracks"][3]["first_frame"] == 7
    from ldeq.video.io import VideoReader
    assert len(list(VideoReader(str(out / "clip_annotated.mp4")))) == T
    assert not [p for p in out.rglob(".*")]  # no temporary file left


def test_cli_camera_through_an_injected_frame_source(env, gt_detector, tmp_path):
    d, frames, _ = env
    opened = []

    class FakeCamera:
        fps = 10.0

        def __init__(self, index):
            opened.append(index)

        def __iter__(self):
            while True:  # a camera never ends: --max-frames stops it
                for f in frames:
                    yield f

    out = tmp_path / "cam"
    rc = _cli(["--camera", "3", "--max-frames", "5", "--checkpoint", str(d / "tiny.pt"), "--out", str(out),
               "--no-progress", "--mode", "prox"], camera=FakeCamera)
    assert rc == 0 and opened == [3]
    assert np.load(out / "camera3_landmarks.npy").shape == (3, 5, 98, 2)
    assert json.loads((out / "camera3_faces.json").read_text())["mode"] == "prox"


BAD = [
    (["{d}/nope.png"], "nope.png"),
    (["{d}/imgs/notes.txt"], "unknown extension"),
    (["{d}/empty.png"], "not an image"),
    (["{d}/emptydir"], "holds no image"),
    ([], "INPUT: give images"),
    (["{d}/clip.mp4", "--camera", "0"], "--camera"),
    (["{d}/clip.mp4", "--checkpoint", "{d}/text.pt"], "cannot be loaded safely"),
    (["{d}/clip.mp4", "--max-iter-warm", "0"], "--max-iter-warm"),
    (["{d}/clip.mp4", "--gamma", "nan"], "--gamma"),
    (["{d}/clip.mp4", "--gamma", "-1"], "--gamma: expected >= 0"),
    (["{d}/clip.mp4", "--mode", "turbo"], "--mode"),
    (["{d}/clip.mp4", "--camera", "-1"], "--camera"),
    (["{d}/clip.mp4", "--device", "cuda:7"] if not torch.cuda.is_available() else ["{d}/clip.mp4", "--device", "tpu"],
     "--device"),
    (["{d}/clip.mp4", "--iou-threshold", "0"], "--iou-threshold"),
]


@pytest.mark.parametrize("argv,msg", BAD, ids=[m for _, m in BAD])
def test_cli_bad_input_exits_2_before_writing(env, tmp_path, capsys, argv, msg):
    d, _, _ = env
    (d / "empty.png").write_bytes(b"")
    (d / "emptydir").mkdir(exist_ok=True)
    (d / "text.pt").write_text("hello, I am a text file named .pt\n")
    argv = [a.format(d=d) for a in argv]
    if "--checkpoint" not in argv:
        argv += ["--checkpoint", str(d / "tiny.pt")]
    out = tmp_path / "o"
    assert _cli(argv + ["--out", str(out), "--no-progress"]) == 2
    assert msg in capsys.readouterr().err
    assert not out.exists()


def test_cli_missing_camera_is_an_error(env, tmp_path, capsys):
    d, _, _ = env

    def broken(index):
        raise ValueError(f"--camera {index}: cannot open camera {index} or read a frame from it")
    assert _cli(["--camera", "0", "--checkpoint", str(d / "tiny.pt"), "--out", str(tmp_path / "o")], camera=broken) == 2
    assert "cannot open camera 0" in capsys.readouterr().err and not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------ detectors
def test_nms_keeps_the_best_of_overlapping_boxes():
    from ldeq.predict import nms
    d = np.array([[0, 0, 10, 10, .5], [1, 0, 11, 10, .9], [30, 30, 40, 40, .1]])
    np.testing.assert_array_equal(nms(d, 0.3), d[[1, 2]])
    assert nms(np.zeros((0, 5))).shape == (0, 5)


def test_haar_ensemble_maps_detections_of_rotated_and_upscaled_frames_back(monkeypatch):
    """A detection found in the frame rotated by 30 degrees (and upscaled x2) lands, mapped back,
    on the same frame point, with its size divided by the upscale."""
    import cv2

    from ldeq.predict import HaarEnsembleDetector
    H, W, P, half = 120, 200, np.array([150.0, 40.0]), 10.0
    det = HaarEnsembleDetector(angles=(30.0,), upscale=2.0, nms_iou=0.99)
    seen = []

    def fake_run(clf, img, flip):
        if flip or seen and seen[-1] == img.shape:
            return np.zeros((0, 5))
        seen.append(img.shape)
        s = 2.0 if img.shape[1] > 300 else 1.0
        h, w = H * s, W * s  # where P goes when the (scaled) frame is rotated into this canvas
        M = cv2.getRotationMatrix2D((w / 2, h / 2), 30.0, 1.0)
        M[:, 2] += [(img.shape[1] - w) / 2, (img.shape[0] - h) / 2]
        q = M[:, :2] @ (P * s) + M[:, 2]
        return np.array([[q[0] - half * s, q[1] - half * s, 2 * half * s, 2 * half * s, 0.9]])
    monkeypatch.setattr(det, "_run", fake_run)
    out = det(np.zeros((H, W, 3), np.uint8))
    assert len(seen) == 2  # one rotated canvas per scale
    for row in out:
        np.testing.assert_allclose([(row[0] + row[2]) / 2, (row[1] + row[3]) / 2], P, atol=1e-6)
        np.testing.assert_allclose(row[2] - row[0], 2 * half, atol=1e-6)
