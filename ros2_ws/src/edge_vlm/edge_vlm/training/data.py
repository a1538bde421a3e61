"""Training data: simulated DVS128-style recordings cut into frames on the absolute grid,
and the held-out subject split of a run (:func:`subject_split`).

A recording becomes per-frame arrays: event histograms (uint8, saturating),
optional RGB, and for frames inside a labelled gesture segment the label and
the canonical caption. Frames outside segments carry label 0 and are used only
as temporal context, as in a live stream.
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from edge_vlm.sim import simulate_recording, split_subjects
from edge_vlm.stream.histogram import EVENT_CHANNELS, TIME_BINS
from edge_vlm.training.config import LIGHTINGS, TrainConfig


@dataclass
class FrameSet:
    hist: np.ndarray          # (F, C, H, W) uint8 event counts (saturated at 255)
    rgb: np.ndarray | None    # (F, H, W, 3) uint8
    labels: np.ndarray        # (F,) int64, 0 = outside any segment
    captions: list            # (F,) canonical caption or ""
    references: list          # (F,) list of reference captions or []
    motion: list              # (F,) 'low'/'high'/'' (from the clip attributes)
    rec_index: np.ndarray     # (F,) which recording
    frame_index: np.ndarray   # (F,) k on the absolute grid
    t_end: np.ndarray         # (F,) ns
    speed: np.ndarray | None = None   # (F,) float32 clip's hand speed (px/s; 0 outside segments)
    segment: np.ndarray | None = None  # (F,) int64 id of the labelled segment (-1 outside; real)


def histograms_on_grid(events: np.ndarray, k0: int, k1: int, period: int, size: int = 128,
                       chunk: int = 64) -> np.ndarray:
    """Event histograms of frames k0..k1-1 (vectorized, in chunks of frames)."""
    n = k1 - k0
    out = np.zeros((n, EVENT_CHANNELS, size, size), dtype=np.uint8)
    t = events["t"]
    for c0 in range(0, n, chunk):
        c1 = min(n, c0 + chunk)
        lo = np.searchsorted(t, (k0 + c0) * period)
        hi = np.searchsorted(t, (k0 + c1) * period)
        ev = events[lo:hi]
        if len(ev) == 0:
            continue
        rel = ev["t"] - (k0 + c0) * period
        f = rel // period
        b = np.clip(((rel - f * period) * TIME_BINS) // period, 0, TIME_BINS - 1)
        ch = 2 * b + ev["p"].astype(np.int64)
        flat = (((f * EVENT_CHANNELS + ch) * size + ev["y"].astype(np.int64)) * size
                + ev["x"].astype(np.int64))
        counts = np.bincount(flat, minlength=(c1 - c0) * EVENT_CHANNELS * size * size)
        out[c0:c1] = np.minimum(counts, 255).reshape(c1 - c0, EVENT_CHANNELS, size, size)
    return out


def frame_range(events: np.ndarray, period: int) -> tuple[int, int]:
    """``k0, k1``: the frames of the absolute grid that hold the events (k0..k1-1)."""
    return int(events["t"][0] // period), int(events["t"][-1] // period) + 1


def inside_segment(t_end: np.ndarray, t_start_ns: int, t_end_ns: int) -> np.ndarray:
    """Indices of the frames (ending at ``t_end``) that belong to the labelled segment
    ``[t_start_ns, t_end_ns)``: the frame ends inside it (THE rule of simulated and real
    recordings)."""
    return np.flatnonzero((t_end > t_start_ns) & (t_end <= t_end_ns))


def recording_frames(rec, period: int, rec_id: int) -> FrameSet:
    """Cut one simulated recording into frames."""
    ev = rec.events
    k0, k1 = frame_range(ev, period)
    hist = histograms_on_grid(ev, k0, k1, period)
    ks = np.arange(k0, k1)
    t_end = (ks + 1) * period
    rgb = None
    if rec.frames is not None:
        # latest RGB frame at or before the frame end
        j = np.clip(np.searchsorted(rec.frame_stamps_ns, t_end, side="right") - 1, 0,
                    len(rec.frames) - 1)
        rgb = rec.frames[j]
    labels = np.zeros(len(ks), dtype=np.int64)
    caps, refs, motion = [""] * len(ks), [[] for _ in ks], [""] * len(ks)
    speed = np.zeros(len(ks), dtype=np.float32)
    for clip in rec.clips:
        inside = inside_segment(t_end, clip.t_start_ns, clip.t_end_ns)
        labels[inside] = clip.label
        for i in inside:
            caps[i] = clip.caption
            refs[i] = clip.references
            motion[i] = clip.attributes.get("motion", "")
        speed[inside] = float(clip.attributes.get("hand_speed_px_s", 0.0))
    return FrameSet(hist, rgb, labels, caps, refs, motion, np.full(len(ks), rec_id), ks, t_end,
                    speed)


def concat_framesets(sets: list[FrameSet]) -> FrameSet:
    rgb = None if any(s.rgb is None for s in sets) else np.concatenate([s.rgb for s in sets])
    speed = (None if any(s.speed is None for s in sets)
             else np.concatenate([s.speed for s in sets]))
    segment = (None if any(s.segment is None for s in sets)
               else np.concatenate([s.segment for s in sets]))
    return FrameSet(np.concatenate([s.hist for s in sets]), rgb,
                    np.concatenate([s.labels for s in sets]),
                    sum((s.captions for s in sets), []), sum((s.references for s in sets), []),
                    sum((s.motion for s in sets), []), np.concatenate([s.rec_index for s in sets]),
                    np.concatenate([s.frame_index for s in sets]),
                    np.concatenate([s.t_end for s in sets]), speed, segment)


class SimJob(NamedTuple):
    """One simulated recording to cut into frames (a :func:`build_frames` worker's task)."""
    subject: int
    lighting: str
    seed: int
    clip_s: float
    gap_s: float
    with_frames: bool


def _simulate(job: SimJob):
    return simulate_recording(job.subject, job.lighting, seed=job.seed, clip_duration_s=job.clip_s,
                              gap_s=job.gap_s, with_frames=job.with_frames)


def build_frames(subjects, lightings, *, seed: int, period: int, clip_s: float, gap_s: float,
                 with_frames: bool = True, workers: int = 2, progress: bool = True) -> FrameSet:
    """Simulate one recording per (subject, lighting) and cut all of them into frames."""
    jobs = [SimJob(s, light, seed * 100003 + s * 7 + i, clip_s, gap_s, with_frames)
            for s in subjects for i, light in enumerate(lightings)]
    sets = []
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        it = pool.map(_simulate, jobs)
        if progress:
            it = tqdm(it, total=len(jobs), desc="simulate", unit="rec")
        for i, rec in enumerate(it):
            sets.append(recording_frames(rec, period, i))
    return concat_framesets(sets)


class SubjectSplit(NamedTuple):
    """The held-out subjects of a run (:func:`edge_vlm.sim.split_subjects`): train / validation
    (picks the epoch, fits) / test (reported once)."""
    train: list[int]
    val: list[int]
    test: list[int]


def subject_split(tc: TrainConfig) -> SubjectSplit:
    """``tc.subjects`` split into train, ``tc.val_subjects`` and ``tc.test_subjects``."""
    train, held = split_subjects(tc.subjects, tc.val_subjects + tc.test_subjects, tc.seed)
    return SubjectSplit(list(train), list(held[:tc.val_subjects]), list(held[tc.val_subjects:]))


def run_frames(tc: TrainConfig, subjects: list[int], progress: bool,
               with_frames: bool = True) -> FrameSet:
    """:func:`build_frames` of ``subjects`` under every lighting of :data:`LIGHTINGS`, with the
    run's seed, frame period, clip timing and worker count."""
    return build_frames(subjects, LIGHTINGS, seed=tc.seed, period=tc.period_ns, clip_s=tc.clip_s,
                        gap_s=tc.gap_s, with_frames=with_frames, workers=tc.workers,
                        progress=progress)


def sample_indices(fs: FrameSet) -> np.ndarray:
    """Frames that carry a label (the training/evaluation targets)."""
    return np.flatnonzero(fs.labels > 0)


def history_indices(fs: FrameSet, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For each target frame, the indices of its last ``k`` frames (oldest first) and a validity
    mask (frames before the start of the recording are invalid and fed as empty)."""
    offs = np.arange(-k + 1, 1)
    hidx = idx[:, None] + offs[None, :]
    hidx_c = np.clip(hidx, 0, len(fs.labels) - 1)
    valid = (hidx >= 0) & (fs.rec_index[hidx_c] == fs.rec_index[idx][:, None])
    return hidx_c, valid
