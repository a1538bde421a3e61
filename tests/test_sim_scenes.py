"""Tests of the scenes beyond the 11 gestures (edge_vlm.sim.scenes): determinism, the recorded
direction / position / speed of every kind seen in its events, noise-level "nothing", camera
shake over the whole image, captions, ground truth, scene recordings and ``synth --scenes``."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from edge_vlm.cli import main
from edge_vlm.events import EVENT_DTYPE
from edge_vlm.io.bag_reader import iter_messages, typestore
from edge_vlm.sim import (SCENE_KINDS, scene_caption, scene_references, simulate_clip,
                          simulate_scene, simulate_scene_recording)
from edge_vlm.sim.captions import DIRECTIONS
from edge_vlm.sim.gestures import POSITIONS, SIZES, SPEEDS

W = H = 128
SUBJECT = 4
KINDS = [k for k in SCENE_KINDS if k != "gesture"]


def _signal(ev: np.ndarray) -> np.ndarray:
    """Drop background noise and hot pixels: keep pixels with 2..59 events."""
    m = np.zeros((H, W))
    np.add.at(m, (ev["y"], ev["x"]), 1)
    c = m[ev["y"], ev["x"]]
    return ev[(c >= 2) & (c < 60)]


def _slope(ev: np.ndarray, key: str) -> float:
    """px/s: linear fit of the signal events' x or y over time."""
    e = _signal(ev)
    assert len(e) > 100
    return float(np.polyfit(e["t"] / 1e9, e[key].astype(float), 1)[0])


@pytest.fixture(scope="module")
def scenes():
    """One short clip of every kind (lab lighting), keyed by a name."""
    asks = {"nothing_empty": ("nothing", {"setting": "empty"}),
            "nothing_still": ("nothing", {"setting": "still_person"}),
            "walk_lr": ("walk", {"direction": "left_to_right", "speed": "normal"}),
            "walk_rl": ("walk", {"direction": "right_to_left", "speed": "fast"}),
            "walk_slow": ("walk", {"direction": "left_to_right", "speed": "slow"}),
            "stand_up": ("stand_up", {"speed": "normal"}),
            "sit_down": ("sit_down", {"speed": "normal"}),
            "moved_up": ("object_moved", {"direction": "up"}),
            "moved_rl": ("object_moved", {"direction": "right_to_left"}),
            "swings": ("object_swings", {}),
            "two_movers": ("two_movers", {"speed": "fast"}),
            "shake": ("camera_shake", {"speed": "normal", "setting": "empty"})}
    return {name: simulate_scene(kind, SUBJECT, "lab", seed=3, duration_s=1.2,
                                 t0_ns=2_000_000_007, **kw)
            for name, (kind, kw) in asks.items()}


def test_determinism():
    a = simulate_scene("walk", 5, "fluorescent", seed=9, duration_s=0.4, with_frames=True)
    b = simulate_scene("walk", 5, "fluorescent", seed=9, duration_s=0.4, with_frames=True)
    c = simulate_scene("walk", 5, "fluorescent", seed=10, duration_s=0.4, with_frames=True)
    assert a.events.tobytes() == b.events.tobytes()
    assert a.frames.tobytes() == b.frames.tobytes()
    assert (a.caption, a.references, a.attributes) == (b.caption, b.references, b.attributes)
    assert a.events.tobytes() != c.events.tobytes()


def test_every_kind_events_attributes_captions(scenes):
    assert {s.kind for s in scenes.values()} == set(KINDS)
    for name, s in scenes.items():
        ev, a = s.events, s.attributes
        assert ev.dtype == EVENT_DTYPE and np.all(np.diff(ev["t"]) >= 0), name
        assert s.t_start_ns == 2_000_000_007 and s.t_end_ns == s.t_start_ns + 1_200_000_000
        assert ev["t"][0] >= s.t_start_ns and ev["t"][-1] < s.t_end_ns, name
        assert a["kind"] == s.kind and a["direction"] in DIRECTIONS and a["speed"] in SPEEDS
        assert a["position"] in POSITIONS and a["size"] in SIZES
        assert a["subject"] == SUBJECT and a["lighting"] == "lab" and a["speed_px_s"] >= 0
        assert s.caption == scene_caption(s.kind, a) and s.references[0] == s.caption
        assert len(s.references) >= 5 and len(set(s.references)) == len(s.references), name
        for r in s.references:
            assert r == r.lower() and not r.endswith(".") and "  " not in r, r
        gt = json.loads(json.dumps(s.ground_truth()))
        assert gt == {"clip_id": s.clip_id, "label": 0, "class_name": "no_gesture",
                      "t_start_ns": s.t_start_ns, "t_end_ns": s.t_end_ns, "attributes": a,
                      "references": s.references, "scene": s.kind}
    assert scenes["nothing_still"].attributes["setting"] == "still_person"
    assert scenes["walk_lr"].caption == "a person walks from left to right at a steady pace"
    assert scenes["nothing_empty"].caption == "nothing moves"
    assert scenes["shake"].caption == "the camera shakes"
    assert len({s.clip_id for s in scenes.values()}) == len(KINDS)   # one id per kind and seed


def test_directions_seen_in_the_events(scenes):
    assert scenes["walk_lr"].attributes["direction"] == "left_to_right"
    assert _slope(scenes["walk_lr"].events, "x") > 15
    assert _slope(scenes["walk_rl"].events, "x") < -15
    assert scenes["stand_up"].attributes["direction"] == "up"
    assert _slope(scenes["stand_up"].events, "y") < -3          # y grows downwards
    assert scenes["sit_down"].attributes["direction"] == "down"
    assert _slope(scenes["sit_down"].events, "y") > 3
    assert _slope(scenes["moved_up"].events, "y") < -15
    assert _slope(scenes["moved_rl"].events, "x") < -15
    assert scenes["walk_rl"].attributes["direction"] == "right_to_left"
    assert scenes["moved_up"].attributes["direction"] == "up"
    for name in ("two_movers", "swings", "shake", "nothing_empty", "nothing_still"):
        assert scenes[name].attributes["direction"] == "none", name
    # two movers: far apart at the start and the end, crossing in the middle
    e = _signal(scenes["two_movers"].events)
    t = (e["t"] - scenes["two_movers"].t_start_ns) / 1e9
    spread = [np.percentile(e["x"][m], 90) - np.percentile(e["x"][m], 10)
              for m in (t < 0.2, np.abs(t - 0.6) < 0.1, t > 1.0)]
    assert spread[1] < 0.6 * min(spread[0], spread[2]), spread


def test_position_and_speed_are_physical(scenes):
    sw = scenes["swings"]
    x = np.median(_signal(sw.events)["x"])
    assert POSITIONS[min(2, int(3 * x / W))] == sw.attributes["position"]
    for name in ("stand_up", "sit_down", "moved_up"):
        s = scenes[name]
        x = np.median(_signal(s.events)["x"])
        assert abs(x - {"left": W / 6, "center": W / 2, "right": 5 * W / 6}[
            s.attributes["position"]]) < W / 4, name
    slow, fast = scenes["walk_slow"], scenes["walk_rl"]
    assert slow.attributes["speed_px_s"] < scenes["walk_lr"].attributes["speed_px_s"] < \
        fast.attributes["speed_px_s"]
    assert abs(_slope(slow.events, "x")) < 0.7 * abs(_slope(fast.events, "x"))
    assert "slowly" in slow.caption and "quickly" in fast.caption


def test_nothing_is_noise_and_camera_shake_is_everywhere(scenes):
    rate = {k: len(s.events) / 1.2 for k, s in scenes.items()}
    for name in ("nothing_empty", "nothing_still"):
        assert rate[name] < 0.2 * W * H, name       # lab: BA noise + 4 hot pixels
        assert len(_signal(scenes[name].events)) < 0.1 * len(scenes[name].events)
        assert scenes[name].attributes["speed_px_s"] == 0.0
    assert rate["walk_lr"] > 5 * rate["nothing_empty"]
    assert rate["shake"] > 3 * rate["nothing_empty"]
    e = _signal(scenes["shake"].events)
    cells = np.zeros((16, 16))
    np.add.at(cells, (e["y"] // 8, e["x"] // 8), 1)
    assert np.mean(cells >= 3) > 0.5                 # most 8x8 cells see the room move
    assert 0 < scenes["shake"].attributes["shake_px"] <= 2.0


def test_scene_references():
    attrs = {"direction": "up", "speed": "fast", "position": "left", "size": "tall"}
    refs = scene_references("object_moved", attrs, seed=1, n=7)
    assert refs[0] == "a hand moves an object upwards quickly" and len(set(refs)) == 7
    assert scene_references("object_moved", attrs, seed=1, n=7) == refs
    still = scene_references("nothing", {"setting": "still_person", "speed": "slow",
                                         "position": "center"}, seed=2)
    assert still[0] == "nothing moves" and len(set(still)) >= 5
    g = {"label": 2, "size": "tall", "position": "left", "speed": "fast"}
    assert scene_references("gesture", g, seed=0)[0] == scene_caption("gesture", g)


def test_invalid_scene_arguments():
    for kw in ({"kind": "gesture"}, {"kind": "dance"}, {"kind": "walk", "direction": "up"},
               {"kind": "walk", "speed": "warp"}, {"kind": "walk", "setting": "empty"}):
        kind = kw.pop("kind")
        with pytest.raises(ValueError):
            simulate_scene(kind, 1, "lab", seed=0, duration_s=0.1, **kw)
    with pytest.raises(ValueError):
        simulate_scene("walk", 1, "disco", seed=0, duration_s=0.1)


def test_gesture_ground_truth_says_gesture():
    c = simulate_clip(2, 1, "lab", seed=0, duration_s=0.2, with_frames=False)
    gt = c.ground_truth()
    assert gt["scene"] == "gesture" and gt["label"] == 2
    assert set(gt) == {"clip_id", "label", "class_name", "t_start_ns", "t_end_ns", "attributes",
                       "references", "scene"}


def test_scene_recording():
    rec = simulate_scene_recording(2, "lab", seed=1, kinds=["nothing:empty", "walk",
                                                            "camera_shake"],
                                   clip_duration_s=0.5, gap_s=0.2, t0_ns=1_000, with_frames=True)
    assert rec.clips == [] and [s.kind for s in rec.scenes] == ["nothing", "walk",
                                                                 "camera_shake"]
    assert rec.name == "user02_lab_scenes" and rec.scenes[0].attributes["setting"] == "empty"
    assert rec.t_start_ns == 1_000 and rec.t_end_ns == 1_000 + int(0.2e9 + 3 * 0.7e9)
    t = rec.events["t"]
    assert rec.events.dtype == EVENT_DTYPE and np.all(np.diff(t) >= 0)
    assert t[0] >= rec.t_start_ns and t[-1] < rec.t_end_ns
    assert np.all(np.diff(rec.frame_stamps_ns) == 33_333_333) and len(rec.frames) == len(
        rec.frame_stamps_ns)
    for k, s in enumerate(rec.scenes):
        assert s.t_start_ns == 1_000 + int(0.2e9) + k * 700_000_000
        assert s.t_end_ns - s.t_start_ns == 500_000_000
        assert np.all((s.events["t"] >= s.t_start_ns) & (s.events["t"] < s.t_end_ns))
        gap = np.count_nonzero((t >= s.t_start_ns - 200_000_000) & (t < s.t_start_ns)) / 0.2
        assert gap < 0.2 * W * H          # the pauses between scenes: nothing moves
    assert len(rec.scenes[1].events) / 0.5 > 5 * len(rec.scenes[0].events) / 0.5
    default = simulate_scene_recording(2, "lab", seed=1, clip_duration_s=0.05, gap_s=0.01)
    assert sorted(s.kind for s in default.scenes) == sorted(KINDS + ["nothing"])
    assert {s.attributes.get("setting") for s in default.scenes if s.kind == "nothing"} == {
        "empty", "still_person"}


def test_synth_scenes_bag(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["synth", "--out", str(out), "--subjects", "1", "--clip-s", "0.15",
                 "--gap-s", "0.05", "--no-frames", "--scenes", "--format", "both"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["scenes"] is True and meta["recordings"] == ["user01_lab", "user01_lab_scenes"]
    ts = typestore()
    gts = [json.loads(ts.deserialize_cdr(m.raw, m.msgtype).data)
           for m in iter_messages(out / "bag", ["/edge_vlm/ground_truth"])]
    kinds = [g["scene"] for g in gts]
    assert kinds[:11] == ["gesture"] * 11 and len(kinds) == 11 + 9
    assert sorted(kinds[11:]) == sorted(KINDS + ["nothing"])
    assert all(g["label"] == 0 and g["class_name"] == "no_gesture" for g in gts[11:])
    assert all(g["caption"] == g["references"][0] for g in gts)
    assert gts[11]["t_start_ns"] > gts[10]["t_end_ns"]           # same time line, after
    # the DvsGesture layout keeps the gestures only
    trials = sorted(p.name for p in (out / "DvsGesture").glob("*.aedat"))
    assert trials == ["user01_lab.aedat"]
    with open(out / "DvsGesture" / "user01_lab_labels.csv") as f:
        rows = list(csv.reader(f))[1:]
    assert sorted(int(r[0]) for r in rows) == list(range(1, 12))
