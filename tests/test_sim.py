"""Tests of the seeded DVS128 Gesture simulator (edge_vlm.sim). Fast: a few seconds in total."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from edge_vlm.events import EVENT_DTYPE
from edge_vlm.sim import (FRAME_PERIOD_NS, GESTURE_CLASSES, LIGHTING_NAMES, canonical_caption,
    make_subject, simulate_clip, simulate_recording, simulate_static, split_subjects)

W = H = 128
SUBJECT = 4          # a centred, medium-sized subject (both arms stay inside the frame)


def _count_map(ev: np.ndarray) -> np.ndarray:
    m = np.zeros((H, W))
    np.add.at(m, (ev["y"], ev["x"]), 1)
    return m


def _signal(ev: np.ndarray) -> np.ndarray:
    """Drop background noise: keep pixels with >= 3 events that are not hot pixels."""
    m = _count_map(ev)
    c = m[ev["y"], ev["x"]]
    return ev[(c >= 3) & (c < 60)]


@pytest.fixture(scope="module")
def clip_wave():
    return simulate_clip(2, SUBJECT, "lab", seed=11, duration_s=1.0, t0_ns=5_000_000_123)


def test_determinism():
    a = simulate_clip(9, 3, "fluorescent", seed=5, duration_s=0.5)
    b = simulate_clip(9, 3, "fluorescent", seed=5, duration_s=0.5)
    c = simulate_clip(9, 3, "fluorescent", seed=6, duration_s=0.5)
    assert a.events.tobytes() == b.events.tobytes()
    assert a.frames.tobytes() == b.frames.tobytes()
    assert np.array_equal(a.frame_stamps_ns, b.frame_stamps_ns)
    assert (a.caption, a.references, a.attributes) == (b.caption, b.references, b.attributes)
    assert a.events.tobytes() != c.events.tobytes()


def test_event_format(clip_wave):
    ev = clip_wave.events
    assert ev.dtype == EVENT_DTYPE and len(ev) > 1000
    assert np.all(np.diff(ev["t"]) >= 0)
    assert ev["t"][0] >= clip_wave.t_start_ns == 5_000_000_123
    assert ev["t"][-1] < clip_wave.t_end_ns == 5_000_000_123 + 1_000_000_000
    assert ev["x"].max() < W and ev["y"].max() < H
    assert set(np.unique(ev["p"]).tolist()) == {0, 1}
    assert clip_wave.label == 2 and clip_wave.class_name == "right_hand_wave"
    assert clip_wave.clip_id and clip_wave.subject == SUBJECT and clip_wave.lighting == "lab"


def test_static_scene_is_noise_only_and_gesture_is_localised(clip_wave):
    static = simulate_static(SUBJECT, "lab", seed=0, duration_s=1.0)
    assert static.dtype == EVENT_DTYPE and np.all(np.diff(static["t"]) >= 0)
    # lab: 0.05 Hz/pixel background activity + 4 hot pixels (~120 Hz each)
    assert len(static) < 0.2 * W * H
    m = _count_map(static)
    assert np.count_nonzero(m > 20) <= 4             # only the hot pixels are busy
    ev = clip_wave.events
    assert len(ev) > 4 * len(static)
    # events concentrate on the moving limb: the busiest 5% of pixels hold most events
    counts = np.sort(_count_map(ev).ravel())[::-1]
    assert counts[: int(0.05 * W * H)].sum() > 0.7 * counts.sum()


def test_every_class_once():
    static_n = len(simulate_static(1, "lab", seed=0, duration_s=0.4))
    for label in range(1, 12):
        c = simulate_clip(label, 1, "lab", seed=label, duration_s=0.4, with_frames=False)
        assert c.class_name == GESTURE_CLASSES[label - 1]
        assert len(c.events) > 2 * static_n, c.class_name
        assert c.frames is None and c.frame_stamps_ns is None
        assert len(c.references) >= 5 and len(set(c.references)) == len(c.references)
        assert c.references[0] == c.caption
        for r in c.references:
            assert r == r.lower() and not r.endswith(".") and "  " not in r
        for key in ("speed", "position", "size", "handedness", "lighting", "subject", "motion"):
            assert key in c.attributes
        assert c.attributes["motion"] in ("low", "high")
        json.dumps(c.ground_truth())


def test_left_vs_right_hand_wave_sides():
    cx = make_subject(SUBJECT).geometry(W, H).cx
    right = _signal(simulate_clip(2, SUBJECT, "lab", seed=1, duration_s=0.6,
                                  with_frames=False).events)
    left = _signal(simulate_clip(3, SUBJECT, "lab", seed=1, duration_s=0.6,
                                 with_frames=False).events)
    # the subject's right hand is on the image's LEFT
    assert np.median(right["x"]) < cx - 15
    assert np.median(left["x"]) > cx + 15


def _angular_slope(ev: np.ndarray, shoulder: np.ndarray) -> float:
    """Slope (rad/s) of the event angle around the shoulder over time (image angles, y down)."""
    dx = ev["x"].astype(float) + 0.5 - shoulder[0]
    dy = ev["y"].astype(float) + 0.5 - shoulder[1]
    r = np.hypot(dx, dy)
    sel = (r > 15) & (r < 45)
    t, ang = ev["t"][sel] / 1e9, np.arctan2(dy[sel], dx[sel])
    bins = np.arange(t.min(), t.max(), 0.02)
    idx = np.digitize(t, bins)
    means, times = [], []
    for b in np.unique(idx):
        m = idx == b
        if m.sum() > 10:
            means.append(np.angle(np.exp(1j * ang[m]).mean()))
            times.append(t[m].mean())
    return float(np.polyfit(times, np.unwrap(means), 1)[0])


def test_clockwise_vs_counter_clockwise():
    shoulders = make_subject(SUBJECT).geometry(W, H).shoulders
    slopes = {}
    for label, arm in ((4, 0), (5, 0), (6, 1), (7, 1)):
        ev = simulate_clip(label, SUBJECT, "lab", seed=3, duration_s=1.2, with_frames=False,
                           speed="normal").events
        slopes[label] = _angular_slope(_signal(ev), shoulders[arm])
    # "clockwise" is the subject's view = counter-clockwise on screen (image angle decreases)
    assert slopes[4] < -1.0 and slopes[6] < -1.0
    assert slopes[5] > 1.0 and slopes[7] > 1.0


def test_frames_aligned(clip_wave):
    c = clip_wave
    assert c.frames.shape == (30, H, W, 3) and c.frames.dtype == np.uint8
    assert c.frame_stamps_ns.dtype == np.int64 and len(c.frame_stamps_ns) == len(c.frames)
    assert np.all(c.frame_stamps_ns % FRAME_PERIOD_NS == 0)
    assert c.frame_stamps_ns[0] >= c.t_start_ns and c.frame_stamps_ns[-1] < c.t_end_ns
    # where the frames change is where the events are (same scene, same time span)
    g = c.frames.astype(float).mean(axis=3)
    changed = np.abs(np.diff(g, axis=0)).max(axis=0) > 25
    ev = c.events[(c.events["t"] >= c.frame_stamps_ns[0])
                  & (c.events["t"] < c.frame_stamps_ns[-1])]
    active = _count_map(ev) >= 3
    assert changed.sum() > 100 and active.sum() > 100
    assert (changed & active).sum() > 0.8 * changed.sum()
    assert (changed & active).sum() > 0.7 * active.sum()


def test_lighting_noise_and_flicker():
    n = {light: simulate_static(2, light, seed=0, duration_s=0.5) for light in LIGHTING_NAMES}
    assert len(n["natural"]) > 3 * len(n["lab"])        # dim: more background activity
    assert len(n["fluorescent"]) > 2 * len(n["lab"])    # 100 Hz flicker creates events
    fl = n["fluorescent"]
    busy = _count_map(fl) >= 40                          # ~ 2 events per 10 ms flicker period
    assert busy.sum() > 4


def test_speed_and_motion_attributes():
    slow = simulate_clip(1, SUBJECT, "lab", seed=2, duration_s=0.6, with_frames=False,
                         speed="slow")
    fast = simulate_clip(4, SUBJECT, "lab", seed=2, duration_s=0.6, with_frames=False,
                         speed="fast")
    assert slow.attributes["speed"] == "slow" and slow.attributes["motion"] == "low"
    assert fast.attributes["speed"] == "fast" and fast.attributes["motion"] == "high"
    assert "slowly" in slow.caption and "quickly" in fast.caption
    assert slow.attributes["event_rate_hz"] < fast.attributes["event_rate_hz"]


def test_canonical_caption_template():
    attrs = {"size": "tall", "position": "left", "speed": "fast"}
    assert canonical_caption(2, attrs) == "a tall person on the left waves the right hand quickly"
    attrs = {"size": "medium", "position": "center", "speed": "normal"}
    assert canonical_caption(4, attrs) == ("a person in the center rotates the right arm "
                                           "clockwise at a steady pace")


def test_recording():
    rec = simulate_recording(3, "lab", seed=1, labels=[2, 8], clip_duration_s=0.6, gap_s=0.4)
    assert rec.name == "user03_lab" and rec.subject == 3 and rec.lighting == "lab"
    assert rec.events.dtype == EVENT_DTYPE and np.all(np.diff(rec.events["t"]) >= 0)
    assert rec.t_end_ns == int(round((0.4 + 2 * 1.0) * 1e9))
    assert [c.label for c in rec.clips] == [2, 8]
    assert len(rec.frames) == len(rec.frame_stamps_ns) == -(-rec.t_end_ns // FRAME_PERIOD_NS)
    prev_end = 0
    for c in rec.clips:
        assert c.t_start_ns >= prev_end + 0.4e9 - 1 and c.t_end_ns - c.t_start_ns == 600_000_000
        prev_end = c.t_end_ns
        assert np.all((c.events["t"] >= c.t_start_ns) & (c.events["t"] < c.t_end_ns))
        assert len(c.frames) == len(c.frame_stamps_ns) > 0
        assert len(set(c.references)) >= 5
    # pauses (rest pose) are noise-level, gestures are not
    t = rec.events["t"]
    pause = np.count_nonzero(t < 0.4e9) / 0.4
    gesture = len(rec.clips[0].events) / 0.6
    assert pause < 0.2 * W * H and gesture > 4 * pause
    assert len({c.clip_id for c in rec.clips}) == 2


def test_split_subjects():
    train, test = split_subjects(20, 6, seed=0)
    assert len(train) == 14 and len(test) == 6
    assert sorted(train + test) == list(range(1, 21))
    assert split_subjects(20, 6, seed=0) == (train, test)
    assert split_subjects(20, 6, seed=1) != (train, test)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        simulate_clip(0, 1, "lab", seed=0, duration_s=0.1)
    with pytest.raises(ValueError):
        simulate_clip(1, 1, "disco", seed=0, duration_s=0.1)


def test_other_sensor_size():
    c = simulate_clip(6, 2, "natural", seed=0, duration_s=0.3, width=64, height=48)
    assert c.frames.shape[1:] == (48, 64, 3)
    assert c.events["x"].max() < 64 and c.events["y"].max() < 48


def test_simulator_speed():
    simulate_clip(5, 1, "fluorescent", seed=0, duration_s=0.1, with_frames=False)  # warm-up
    t = time.perf_counter()
    c = simulate_clip(5, 1, "fluorescent", seed=0, duration_s=1.0, with_frames=False, speed="fast")
    dt = time.perf_counter() - t
    assert len(c.events) > 0
    assert dt < 2.0, f"1 s of 128x128 took {dt:.2f} s"


def test_absolute_time_offset_is_exact():
    a = simulate_clip(4, SUBJECT, "lab", seed=1, duration_s=0.3, with_frames=False)
    t0 = 1_700_000_000_123_456_789          # an epoch-like start time (ns)
    b = simulate_clip(4, SUBJECT, "lab", seed=1, duration_s=0.3, with_frames=False, t0_ns=t0)
    assert np.array_equal(b.events["t"] - t0, a.events["t"])
    assert np.array_equal(b.events[["x", "y", "p"]], a.events[["x", "y", "p"]])
