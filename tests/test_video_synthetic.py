"""Synthetic videos: deterministic, ground truth consistent with the renderer, events confined to
their stretches."""

import numpy as np
import pytest

from ldeq.video.synthetic import EVENTS, boxes_from_landmarks, make_synthetic_video, make_synthetic_videos


def test_deterministic_and_shapes():
    a = make_synthetic_video(1, n_frames=20, size=(96, 128), event_len=4)
    b = make_synthetic_video(1, n_frames=20, size=(96, 128), event_len=4)
    assert a.frames.shape == (20, 96, 128, 3) and a.frames.dtype == np.uint8
    assert a.landmarks.shape == (20, 98, 2) and a.boxes.shape == (20, 4)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.landmarks, b.landmarks)
    assert sorted(k for k, _, _ in a.events) == sorted(EVENTS)
    spans = sorted((s, e) for _, s, e in a.events)
    assert all(e0 <= s1 for (_, e0), (s1, _) in zip(spans, spans[1:])) and spans[-1][1] <= 20


def test_events_change_only_their_frames():
    ev = make_synthetic_video(2, n_frames=40, size=(96, 128), event_len=6)
    calm = make_synthetic_video(2, n_frames=40, size=(96, 128), event_len=6, events=())
    np.testing.assert_array_equal(ev.landmarks, calm.landmarks)  # ground truth does not depend on events
    inside = np.zeros(40, bool)
    for _, s, e in ev.events:
        inside[s:e] = True
    diff = np.abs(ev.frames.astype(int) - calm.frames).reshape(40, -1).mean(1)
    assert (diff[~inside] == 0).all()
    assert (diff[inside] > 0).all()


def test_motion_is_smooth_and_present():
    v = make_synthetic_video(3, n_frames=60, size=(96, 128), events=())
    step = np.linalg.norm(np.diff(v.landmarks, axis=0), axis=-1).mean(1)  # px per frame
    assert step.mean() > 0.05  # the head moves
    assert step.max() < 0.05 * 96  # but smoothly
    still = make_synthetic_video(3, n_frames=5, size=(96, 128), events=(), motion=0.0)
    np.testing.assert_allclose(np.diff(still.landmarks, axis=0), 0, atol=1e-9)


def test_boxes_from_landmarks():
    lm = np.array([[[0.0, 0.0], [10.0, 20.0]]])
    np.testing.assert_allclose(boxes_from_landmarks(lm, scale=1.2), [[-1.0, -2.0, 11.0, 22.0]])
    v = make_synthetic_video(4, n_frames=5, size=(96, 128), box_jitter=0.0)
    assert (v.landmarks.min(1) >= v.boxes[:, :2]).all() and (v.landmarks.max(1) <= v.boxes[:, 2:]).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown"):
        make_synthetic_video(0, events=("earthquake",))
    with pytest.raises(ValueError, match="n_frames"):
        make_synthetic_video(0, n_frames=1)
    assert [len(v) for v in make_synthetic_videos(2, lengths=[3, 4], size=(64, 64))] == [3, 4]


# ----------------------------------------------------------------------------- presets (issue 15)
def test_presets_keep_the_old_clips():
    from ldeq.video.synthetic import PRESETS
    assert set(PRESETS) == {"easy", "ambiguous", "hard"}
    for preset, kw in (("easy", {"events": ()}), ("ambiguous", {})):
        a = make_synthetic_video(6, n_frames=12, size=(64, 80), event_len=3, preset=preset)
        b = make_synthetic_video(6, n_frames=12, size=(64, 80), event_len=3, **kw)
        np.testing.assert_array_equal(a.frames, b.frames)
        np.testing.assert_array_equal(a.landmarks, b.landmarks)
        assert a.motion_events == []


def test_hard_clips_have_fast_motion_and_every_event():
    from ldeq.video.synthetic import ALL_EVENTS, MOTION_EVENTS
    clips = [make_synthetic_video(s, n_frames=90, size=(128, 160), preset="hard") for s in range(6)]
    easy = [make_synthetic_video(s, n_frames=90, size=(128, 160), preset="easy") for s in range(6)]
    a = make_synthetic_video(0, n_frames=90, size=(128, 160), preset="hard")
    np.testing.assert_array_equal(a.frames, clips[0].frames)  # deterministic
    kinds = {k for c in clips for k, _, _ in c.motion_events}
    assert kinds == set(MOTION_EVENTS)
    assert all(sorted(k for k, _, _ in c.events) == sorted(ALL_EVENTS) for c in clips)

    def speed(c):  # px per frame of the landmarks' centroid
        return np.linalg.norm(np.diff(c.landmarks.mean(1), axis=0), axis=1)
    assert max(speed(c).max() for c in clips) > 4 * max(speed(c).max() for c in easy)
    for c in clips:  # a jump moves the face by >= 6 % of the frame width minus the smooth drift, in one frame
        for k, s, e in c.motion_events:
            if k == "jump" and s >= 1:
                assert speed(c)[s - 1] > 0.04 * 160
        # the face stays inside the frame
        assert (c.landmarks >= -2).all() and (c.landmarks[..., 0] <= 161).all() and (c.landmarks[..., 1] <= 129).all()


def test_speed_blur_only_where_the_face_moves_fast():
    a = make_synthetic_video(2, n_frames=60, size=(96, 128), events=(), motion_events=("sweep", "jump"))
    b = make_synthetic_video(2, n_frames=60, size=(96, 128), events=(), motion_events=("sweep", "jump"), speed_blur=True)
    np.testing.assert_array_equal(a.landmarks, b.landmarks)
    fast = np.r_[False, np.linalg.norm(np.diff(a.landmarks.mean(1), axis=0), axis=1) > 3.0]
    diff = np.abs(a.frames.astype(int) - b.frames).reshape(60, -1).mean(1)
    assert fast.any() and (diff[fast] > 0).all() and (diff[~fast] == 0).all()


def test_preset_and_motion_event_errors():
    with pytest.raises(ValueError, match="preset"):
        make_synthetic_video(0, preset="medium")
    with pytest.raises(ValueError, match="motion_events"):
        make_synthetic_video(0, motion_events=("somersault",))
    with pytest.raises(ValueError, match="motion_event_every"):
        make_synthetic_video(0, motion_events=("jump",), motion_event_every=1)


def test_write_wflwv_root_presets(tmp_path):
    from ldeq.video.synthetic import write_wflwv_root
    ids = write_wflwv_root(str(tmp_path), n_per_split=1, n_frames=6, splits=("hard",), progress=False)
    assert ids == {"hard": ["synth_hard_000"]}
    assert sorted(p.name for p in (tmp_path / "splits").iterdir()) == ["hard_video_IDs.txt"]
    lm = np.load(tmp_path / "landmarks" / "synth_hard_000.npy")
    ref = make_synthetic_video(1000, 6, preset="hard")
    np.testing.assert_array_equal(lm, ref.landmarks)
    with pytest.raises(ValueError, match="splits"):
        write_wflwv_root(str(tmp_path), splits=("medium",), progress=False)
