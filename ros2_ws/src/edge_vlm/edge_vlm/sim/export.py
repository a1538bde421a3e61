"""Simulated recordings written to disk: the DVS128 Gesture layout and/or one ROS 2 bag
(``edge-vlm synth``), and the bundled demo data (``make demo``).

With scenes, a recording of the scenes beyond the gestures (:mod:`.scenes`) follows each
gesture recording on the same time line; the bag's ground truth then holds both kinds of
segments ("scene": "gesture" or the scene kind), the DvsGesture layout only the gestures (it has
no class for the other scenes)."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np

from edge_vlm.datasets.dvs128_gesture import Segment, write_splits, write_trial
from edge_vlm.events import concat_events
from edge_vlm.io.bag_writer import write_bag
from edge_vlm.sim.dataset import Recording, simulate_recording, split_subjects
from edge_vlm.sim.scenes import simulate_scene_recording

#: the demo bag: its seed and folder (made once, then reused)
DEMO_SEED = 7
DEMO_DIR = os.path.join("data", "demo")


def simulate_recordings(subjects: list[int], lightings: list[str], seed: int, clip_s: float,
                        gap_s: float, with_frames: bool, scenes: bool = False,
                        scene_lightings: list[str] | None = None) -> list[Recording]:
    """One recording per (subject, lighting), one after the other on a common time line; with
    ``scenes``, each followed by a scene recording of the same pair (only for the lightings of
    ``scene_lightings`` when given)."""
    recs, t0 = [], 0
    for i, (s, light) in enumerate((s, light) for s in subjects for light in lightings):
        rec = simulate_recording(s, light, seed=seed * 1000 + i, clip_duration_s=clip_s,
                                 gap_s=gap_s, with_frames=with_frames, t0_ns=t0)
        recs.append(rec)
        t0 = int(rec.events["t"][-1]) + 500_000_000  # half a second of silence between recordings
        if scenes and (scene_lightings is None or light in scene_lightings):
            rec = simulate_scene_recording(s, light, seed=seed * 1000 + i, clip_duration_s=clip_s,
                                           gap_s=gap_s, with_frames=with_frames, t0_ns=t0)
            recs.append(rec)
            t0 = rec.t_end_ns + 500_000_000
    return recs


def write_dvs128(root: str, recs: list[Recording]) -> str:
    """The recordings as a DvsGesture folder (AEDAT 3.1 trials, labels, a test split list)."""
    names = []
    for rec in (r for r in recs if not r.scenes):   # gestures only: no scene class in the layout
        segs = [Segment(c.label, c.t_start_ns // 1000, c.t_end_ns // 1000) for c in rec.clips]
        ev = rec.events.copy()
        ev["t"] = (ev["t"] // 1000) * 1000
        write_trial(root, f"{rec.name}.aedat", ev, segs)
        names.append(f"{rec.name}.aedat")
    write_splits(root, [], names)
    return root


def write_sim_bag(path: str, recs: list[Recording], storage: str, packet_ms: float,
                  with_frames: bool) -> str:
    """The recordings as one ROS 2 bag: events, RGB frames when simulated, ground truth (the
    gesture clips and the scenes)."""
    gt = [{**c.ground_truth(), "caption": c.caption} for r in recs for c in r.clips + r.scenes]
    frames = stamps = None
    if with_frames:
        frames = np.concatenate([r.frames for r in recs])
        stamps = np.concatenate([r.frame_stamps_ns for r in recs])
    write_bag(path, events=concat_events([r.events for r in recs]), frames=frames,
              frame_stamps_ns=stamps, ground_truth=gt, storage=storage,
              packet_ns=int(round(packet_ms * 1e6)))
    return path


def synth(out: str, *, subjects: list[int], lightings: list[str], seed: int, clip_s: float,
          gap_s: float, with_frames: bool, fmt: str, storage: str,
          packet_ms: float = 10.0, scenes: bool = False,
          scene_lightings: list[str] | None = None) -> dict:
    """Simulate recordings (with ``scenes``: each followed by a scene recording) and write them
    as a DVS128 Gesture directory (gestures only) and/or one ROS 2 bag; returns what
    ``synth.json`` records (the parameters and the paths written)."""
    os.makedirs(out, exist_ok=True)
    recs = simulate_recordings(subjects, lightings, seed, clip_s, gap_s, with_frames, scenes,
                               scene_lightings)
    written = {}
    if fmt in ("dvs128", "both"):
        written["dvs128"] = write_dvs128(os.path.join(out, "DvsGesture"), recs)
    if fmt in ("bag", "both"):
        written["bag"] = write_sim_bag(os.path.join(out, "bag"), recs, storage, packet_ms,
                                       with_frames)
    meta = {"subjects": subjects, "lightings": lightings, "seed": seed, "clip_s": clip_s,
            "gap_s": gap_s, "with_frames": with_frames, "packet_ms": packet_ms,
            "scenes": scenes,
            "recordings": [r.name for r in recs], **written}
    with open(os.path.join(out, "synth.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def _has_scenes(out: str) -> bool:
    """Whether the demo folder's synth.json says it was made with the scenes."""
    try:
        with open(os.path.join(out, "synth.json")) as f:
            return bool(json.load(f).get("scenes"))
    except (OSError, ValueError):
        return False


def demo_data(out: str = DEMO_DIR) -> str:
    """The bundled default data: a simulated bag of a held-out subject, its gestures under two
    lightings and, after the first, its scenes beyond the gestures (made once, then reused)."""
    bag = os.path.join(out, "bag")
    if os.path.isfile(os.path.join(bag, "metadata.yaml")) and _has_scenes(out):
        return bag
    shutil.rmtree(bag, ignore_errors=True)      # a demo bag of an older version: made again
    _, held_out = split_subjects(20, 6, 0)
    synth(out, subjects=[int(held_out[-1])], lightings=["lab", "natural"], seed=DEMO_SEED,
          clip_s=1.5, gap_s=0.3, with_frames=False, fmt="bag", storage="sqlite3", scenes=True,
          scene_lightings=["lab"])
    return bag
