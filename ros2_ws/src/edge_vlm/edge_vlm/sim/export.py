"""Simulated recordings written to disk: the DVS128 Gesture layout and/or one ROS 2 bag
(``edge-vlm synth``), and the bundled demo data (``make demo``)."""
from __future__ import annotations

import json
import os

import numpy as np

from edge_vlm.datasets.dvs128_gesture import Segment, write_splits, write_trial
from edge_vlm.events import concat_events
from edge_vlm.io.bag_writer import write_bag
from edge_vlm.sim.dataset import Recording, simulate_recording, split_subjects

#: the demo bag: its seed and folder (made once, then reused)
DEMO_SEED = 7
DEMO_DIR = os.path.join("data", "demo")


def simulate_recordings(subjects: list[int], lightings: list[str], seed: int, clip_s: float,
                        gap_s: float, with_frames: bool) -> list[Recording]:
    """One recording per (subject, lighting), one after the other on a common time line."""
    recs, t0 = [], 0
    for i, (s, light) in enumerate((s, light) for s in subjects for light in lightings):
        rec = simulate_recording(s, light, seed=seed * 1000 + i, clip_duration_s=clip_s,
                                 gap_s=gap_s, with_frames=with_frames, t0_ns=t0)
        recs.append(rec)
        t0 = int(rec.events["t"][-1]) + 500_000_000  # half a second of silence between recordings
    return recs


def write_dvs128(root: str, recs: list[Recording]) -> str:
    """The recordings as a DvsGesture folder (AEDAT 3.1 trials, labels, a test split list)."""
    names = []
    for rec in recs:
        segs = [Segment(c.label, c.t_start_ns // 1000, c.t_end_ns // 1000) for c in rec.clips]
        ev = rec.events.copy()
        ev["t"] = (ev["t"] // 1000) * 1000
        write_trial(root, f"{rec.name}.aedat", ev, segs)
        names.append(f"{rec.name}.aedat")
    write_splits(root, [], names)
    return root


def write_sim_bag(path: str, recs: list[Recording], storage: str, packet_ms: float,
                  with_frames: bool) -> str:
    """The recordings as one ROS 2 bag: events, RGB frames when simulated, ground truth."""
    gt = [{**c.ground_truth(), "caption": c.caption} for r in recs for c in r.clips]
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
          packet_ms: float = 10.0) -> dict:
    """Simulate recordings and write them as a DVS128 Gesture directory and/or one ROS 2 bag;
    returns what ``synth.json`` records (the parameters and the paths written)."""
    os.makedirs(out, exist_ok=True)
    recs = simulate_recordings(subjects, lightings, seed, clip_s, gap_s, with_frames)
    written = {}
    if fmt in ("dvs128", "both"):
        written["dvs128"] = write_dvs128(os.path.join(out, "DvsGesture"), recs)
    if fmt in ("bag", "both"):
        written["bag"] = write_sim_bag(os.path.join(out, "bag"), recs, storage, packet_ms,
                                       with_frames)
    meta = {"subjects": subjects, "lightings": lightings, "seed": seed, "clip_s": clip_s,
            "gap_s": gap_s, "with_frames": with_frames, "packet_ms": packet_ms,
            "recordings": [r.name for r in recs], **written}
    with open(os.path.join(out, "synth.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def demo_data(out: str = DEMO_DIR) -> str:
    """The bundled default data: a simulated bag of a held-out subject (made once, then reused)."""
    bag = os.path.join(out, "bag")
    if os.path.isfile(os.path.join(bag, "metadata.yaml")):
        return bag
    _, held_out = split_subjects(20, 6, 0)
    synth(out, subjects=[int(held_out[-1])], lightings=["lab", "natural"], seed=DEMO_SEED,
          clip_s=1.5, gap_s=0.3, with_frames=False, fmt="bag", storage="sqlite3")
    return bag
