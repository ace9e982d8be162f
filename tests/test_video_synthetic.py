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
