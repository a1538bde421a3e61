"""The test set of the model benchmarks (STTF, ANC): simulated recordings of the held-out test
subjects, cut into frames as the nodes cut them."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_vlm.bench.streams import PACKET_NS, SIM_SEED, simulated_events
from edge_vlm.io.packets import packet_grid
from edge_vlm.sim import Clip, Recording, split_subjects
from edge_vlm.sim.dataset import blend_ramp_s
from edge_vlm.stream.frames import FrameClock, frame_histogram, period_ns
from edge_vlm.training.config import LIGHTINGS, TrainConfig

__all__ = ["SimFrame", "test_recordings", "clip_phase", "sim_frames"]


@dataclass
class SimFrame:
    """One frame of a simulated recording, as the nodes cut it, with its ground truth."""

    index: int
    t_end: int
    events: int                  # events in the frame
    hist: np.ndarray             # the model input (event histogram)
    gt: int | None               # gesture label of the clip holding the frame's end
    motion: str                  # the clip's motion class ("low", "high"), "static" between clips
    phase: str | None            # :func:`clip_phase` of the frame's end (None between clips)
    rgb: np.ndarray | None = None  # latest RGB frame at or before the frame's end


def test_recordings(quick: bool = False, lightings: tuple | None = None,
                    with_frames: bool = False) -> list[Recording]:
    """The STTF test set: every held-out *test* subject of ``edge-vlm train`` (defaults: 20
    subjects, validation = the first 3 held-out, test = the last 3) under every lighting
    (or ``lightings``), events only (RGB frames too with ``with_frames``), all 11 gestures.
    ``quick``: one short recording."""
    tc = TrainConfig()
    _, held = split_subjects(tc.subjects, tc.val_subjects + tc.test_subjects, tc.seed)
    test_ids = held[tc.val_subjects:]
    if quick:
        return [simulated_events(labels=(2, 8), clip_s=0.4, gap_s=0.3, seed=SIM_SEED,
                                 subject=int(test_ids[-1]), with_frames=with_frames)]
    return [simulated_events(labels=range(1, 12), clip_s=tc.clip_s, gap_s=tc.gap_s,
                             seed=SIM_SEED + 10 * s + i, lighting=light, subject=int(s),
                             with_frames=with_frames)
            for s in test_ids for i, light in enumerate(LIGHTINGS)
            if lightings is None or light in lightings]


def clip_phase(clip: Clip, t_ns: int) -> str:
    """Where ``t_ns`` lies in a simulated gesture clip: ``blend_in`` / ``blend_out`` while the
    arm moves from / back to the rest pose (the simulator's ramps at both ends of the labelled
    clip), else ``full``."""
    ramp_ns = blend_ramp_s((clip.t_end_ns - clip.t_start_ns) / 1e9) * 1e9
    if t_ns - clip.t_start_ns <= ramp_ns:
        return "blend_in"
    return "blend_out" if clip.t_end_ns - t_ns < ramp_ns else "full"


def sim_frames(rec: Recording, params: dict) -> list[SimFrame]:
    """Frames of a simulated recording as the nodes cut them: histogram + ground truth (+ the
    latest RGB frame at or before the frame's end when the recording has frames)."""
    clock = FrameClock(period_ns(params))
    starts, bounds = packet_grid(rec.events["t"], PACKET_NS)
    fs = []
    for i in range(len(starts)):
        fs += clock.push(rec.events[bounds[i]:bounds[i + 1]], 128, 128)
    fs += clock.flush()
    clips = sorted(rec.clips, key=lambda c: c.t_start_ns)
    frames = []
    for f in fs:
        clip = next((c for c in clips if c.t_start_ns < f.t_end <= c.t_end_ns), None)
        frame = SimFrame(index=f.index, t_end=f.t_end, events=len(f.events),
                         hist=frame_histogram(f, params), gt=clip.label if clip else None,
                         motion=clip.attributes.get("motion") if clip else "static",
                         phase=clip_phase(clip, f.t_end) if clip else None)
        if rec.frames is not None:
            j = int(np.searchsorted(rec.frame_stamps_ns, f.t_end, side="right")) - 1
            frame.rgb = rec.frames[max(0, min(j, len(rec.frames) - 1))]
        frames.append(frame)
    return frames
