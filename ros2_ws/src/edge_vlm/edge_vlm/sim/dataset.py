"""Clip / recording assembly, ground truth and the subject split.

A *scene* is one subject in one room under one lighting, with a pose
timeline (rest pose + gesture segments blended in and out).  It is rendered
at the DVS internal rate (``DVS_RATE_HZ``) in batches, converted to log
irradiance and fed to :class:`~.dvs.EventSimulator`; RGB frames are rendered
from the same scene at 30 fps on the project's absolute frame grid.

Determinism: every random stream is a ``numpy`` generator seeded from a
``SeedSequence`` of the call's integer arguments (never ``hash()``), so the
same arguments give byte-identical output.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np

from edge_vlm.datasets.dvs128_gesture import GESTURE_CLASSES, check_label
from edge_vlm.sim.captions import canonical_caption, reference_captions
from edge_vlm.sim.dvs import EventSimulator, assemble, make_sensor, noise_events
from edge_vlm.sim.gestures import (REST, GestureParams, Subject, blend_weight, gesture_angles,
                                   hand_speed, joints, luma, make_subject, motion_level,
                                   sample_params)
from edge_vlm.sim.render import (LIGHTING_NAMES, LOG_EPS, LightingModel, LightingSpec,
                                 figure_pad, lighting_spec, render_figure, render_room,
                                 render_static, to_rgb8)

FRAME_PERIOD_NS = 33_333_333     # 30 fps, the project's frame grid
DVS_RATE_HZ = 1000               # internal DVS time step
BATCH_STEPS = 100                # DVS steps rendered per batch
FRAME_BATCH = 16


def _u(x: int) -> int:
    """Any int -> a valid (non-negative) SeedSequence word."""
    return int(x) % (1 << 64)


@dataclass
class Clip:
    """One labelled gesture (a DVS128 Gesture trial segment)."""

    events: np.ndarray                    # EVENT_DTYPE, time-sorted, t ns absolute
    frames: np.ndarray | None             # (N, H, W, 3) uint8
    frame_stamps_ns: np.ndarray | None    # (N,) int64
    label: int                            # 1..11
    class_name: str
    #: speed, position, size, handedness, lighting, subject, motion, ...
    attributes: dict
    caption: str                          # canonical caption
    references: list                      # >= 5 paraphrases, canonical first
    t_start_ns: int
    t_end_ns: int
    subject: int
    lighting: str
    clip_id: str

    def ground_truth(self) -> dict:
        """The JSON object published on ``/edge_vlm/ground_truth`` (design card)."""
        return {"clip_id": self.clip_id, "label": self.label, "class_name": self.class_name,
                "t_start_ns": self.t_start_ns, "t_end_ns": self.t_end_ns,
                "attributes": dict(self.attributes), "references": list(self.references),
                "scene": "gesture"}


@dataclass
class Recording:
    """One DVS128-style session: one subject + lighting, gestures (``clips``) or the scenes
    beyond the gestures (``scenes``, :mod:`.scenes`) back to back with pauses."""

    events: np.ndarray
    frames: np.ndarray | None
    frame_stamps_ns: np.ndarray | None
    clips: list = field(default_factory=list)
    subject: int = 0
    lighting: str = "lab"
    name: str = ""
    t_start_ns: int = 0
    t_end_ns: int = 0
    scenes: list = field(default_factory=list)


@dataclass
class _Segment:
    params: GestureParams
    start_s: float        # relative to the scene start
    duration_s: float
    ramp_s: float


class LogIrradiance(NamedTuple):
    """Log irradiance of some pixels at some times."""

    idx: np.ndarray         # (M,) flat pixel indices
    L: np.ndarray           # (T, M) float32 log irradiance


class Room(NamedTuple):
    """The room of one subject under one lighting (the same in every recording of the pair)."""

    spec: LightingSpec
    light: LightingModel
    image: np.ndarray        # (H, W, 3) reflectance, without the subject


def make_room(subject: Subject, lighting: str, width: int, height: int) -> Room:
    """The room and lighting maps of (subject, lighting), deterministic from the two."""
    li = LIGHTING_NAMES.index(lighting)
    room_rng = np.random.default_rng(np.random.SeedSequence([0x200A, _u(subject.subject_id), li]))
    spec = lighting_spec(lighting)
    light = LightingModel(spec, width, height, room_rng)
    return Room(spec, light, render_room(subject, width, height, room_rng))


class Box(NamedTuple):
    """A pixel window [x0, x1) x [y0, y1)."""

    x0: int
    y0: int
    x1: int
    y1: int


class SceneModel(Protocol):
    """What :func:`simulate_events` needs of a scene: its lighting and its log irradiance."""

    width: int
    height: int
    spec: LightingSpec

    def setup_dvs(self, threshold: np.ndarray) -> None: ...

    def initial_log(self, t_s: np.ndarray, t_abs_s: np.ndarray) -> np.ndarray: ...

    def log_irradiance(self, t_s: np.ndarray, t_abs_s: np.ndarray,
                       t_prev_s: float | None = None) -> LogIrradiance: ...

    def frames(self, t_s: np.ndarray, t_abs_s: np.ndarray,
               rng: np.random.Generator) -> np.ndarray: ...


class LitRoom:
    """A static image under a lighting: what every simulated scene shares (the DVS set-up and
    the flicker of the pixels outside the window a moving thing is rendered in)."""

    width: int
    height: int
    spec: LightingSpec
    light: LightingModel
    static: np.ndarray       # (H, W, 3) reflectance of everything that does not move

    def setup_dvs(self, threshold: np.ndarray) -> None:
        """Precompute the static log image and the flicker pixels able to fire on their own."""
        gray = luma(self.static, np.float32)
        irr = self.light.irradiance(gray[None])[0].ravel()
        self.gray = gray
        self.irr_static = irr
        self.flick_idx = np.zeros(0, np.int64)
        if self.light.flicker is not None:
            a = self.light.flicker.ravel()
            swing = np.log((irr * (1 + a) + LOG_EPS) / (irr * (1 - a) + LOG_EPS))
            self.flick_idx = np.flatnonzero(swing >= 0.9 * threshold)

    def with_flicker(self, lg: LogIrradiance, box: Box, t_abs_s: np.ndarray) -> LogIrradiance:
        """``lg`` (the pixels of ``box``) plus the flickering static pixels outside ``box``."""
        if not self.flick_idx.size:
            return lg
        fy, fx = np.divmod(self.flick_idx, self.width)
        fi = self.flick_idx[~((fy >= box.y0) & (fy < box.y1) & (fx >= box.x0) & (fx < box.x1))]
        wave = self.light.flicker_wave(t_abs_s)
        irr_f = self.irr_static[fi][None] * (
            1 + self.light.flicker.ravel()[fi][None] * wave[:, None])
        return LogIrradiance(np.concatenate([lg.idx, fi]),
                              np.concatenate([lg.L, np.log(irr_f + LOG_EPS)], axis=1))


class _Scene(LitRoom):
    """Subject + room + lighting + pose timeline; renders reflectance for any times."""

    def __init__(self, subject: Subject, lighting: str, width: int, height: int,
                 segments: list[_Segment]):
        room = make_room(subject, lighting, width, height)
        self.subject, self.width, self.height = subject, width, height
        self.spec, self.light = room.spec, room.light
        self.static = render_static(subject, room.image, width, height)
        self.segments = segments
        self.ppu = subject.geometry(width, height).ppu

    def canon(self, t_s: np.ndarray) -> np.ndarray:
        """Canonical arm angles (T, 2, 2) at scene times ``t_s`` (s)."""
        out = np.broadcast_to(REST, (t_s.shape[0], 2, 2)).copy()
        for seg in self.segments:
            m = np.flatnonzero((t_s >= seg.start_s) & (t_s < seg.start_s + seg.duration_s))
            if m.size:
                tr = t_s[m] - seg.start_s
                w = blend_weight(tr, seg.duration_s, seg.ramp_s)[:, None, None]
                g = gesture_angles(seg.params, tr)
                # blend out along the short way: drop whole turns accumulated by arm circles
                end = gesture_angles(seg.params, np.array([seg.duration_s]))[0]
                turns = np.round((end - REST) / (2 * np.pi))
                g[tr > seg.duration_s / 2] -= 2 * np.pi * turns
                out[m] = REST + w * (g - REST)
        return out

    def joints(self, t_s: np.ndarray) -> np.ndarray:
        return joints(self.subject, self.canon(t_s), self.width, self.height)

    def initial_log(self, t_s: np.ndarray, t_abs_s: np.ndarray) -> np.ndarray:
        """Log irradiance (H*W,) of the whole image at the first time of ``t_s`` (1,)."""
        refl0 = luma(render_figure(self.static, self.joints(t_s), self.subject, self.ppu),
                     np.float32)
        return np.log(self.light.irradiance(refl0, t_abs_s)[0] + LOG_EPS).ravel()

    def log_irradiance(self, t_s: np.ndarray, t_abs_s: np.ndarray,
                       t_prev_s: float | None = None) -> LogIrradiance:
        """Log irradiance of the pixels that can change.

        Only the window swept by the arms (including their pose at ``t_prev_s``)
        is rendered; elsewhere the image is static, except flickering pixels.
        """
        tj = t_s if t_prev_s is None else np.concatenate([[t_prev_s], t_s])
        jx = self.joints(tj)
        pad = figure_pad(self.ppu)
        x0, y0 = np.maximum(np.floor(jx.reshape(-1, 2).min(0) - pad).astype(int), 0)
        x1 = int(min(np.ceil(jx[..., 0].max() + pad), self.width))
        y1 = int(min(np.ceil(jx[..., 1].max() + pad), self.height))
        x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
        win = (slice(y0, y1), slice(x0, x1))
        off = np.array([x0, y0], np.float64)
        refl = render_figure(self.gray[win], jx[-len(t_s):] - off, self.subject, self.ppu)
        irr = self.light.irradiance(refl, t_abs_s, win)
        irr += LOG_EPS
        L = np.log(irr, out=irr).reshape(len(t_s), -1)
        idx = (np.arange(y0, y1)[:, None] * self.width + np.arange(x0, x1)[None, :]).ravel()
        return self.with_flicker(LogIrradiance(idx, L), Box(int(x0), int(y0), x1, y1), t_abs_s)

    def frames(self, t_s: np.ndarray, t_abs_s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = np.empty((t_s.shape[0], self.height, self.width, 3), np.uint8)
        for b in range(0, t_s.shape[0], FRAME_BATCH):
            sl = slice(b, b + FRAME_BATCH)
            refl = render_figure(self.static, self.joints(t_s[sl]), self.subject, self.ppu)
            out[sl] = to_rgb8(self.light.irradiance(refl, None), self.spec, rng)
        return out


class Simulated(NamedTuple):
    """What :func:`simulate_events` made."""

    events: np.ndarray                    # EVENT_DTYPE, time-sorted
    frames: np.ndarray | None             # (N, H, W, 3) uint8 (None: frames not asked for)
    stamps: np.ndarray | None             # (N,) int64 frame stamps, ns


def simulate_events(scene: SceneModel, t0_ns: int, duration_ns: int, with_frames: bool,
                    ss: np.random.SeedSequence, sensor_seed: int) -> Simulated:
    """Run the DVS over [t0, t0 + duration) of ``scene`` (scene time 0 at ``t0``) and render
    its frames on the absolute frame grid."""
    r_init, r_noise, r_frames = (np.random.default_rng(s) for s in ss.spawn(3))
    sensor = make_sensor(scene.width, scene.height, sensor_seed)
    dt_ns = int(round(1e9 / DVS_RATE_HZ))
    n_steps = max(1, math.ceil(duration_ns / dt_ns))
    t_steps = t0_ns + np.arange(n_steps + 1, dtype=np.int64) * dt_ns
    t_steps[-1] = t0_ns + duration_ns
    rel = (t_steps - t0_ns) / 1e9
    scene.setup_dvs(sensor.threshold)
    L0 = scene.initial_log(rel[:1], t_steps[:1] / 1e9)
    sim = EventSimulator(sensor, L0, t0_ns, r_init)
    for b in range(1, n_steps + 1, BATCH_STEPS):
        sl = slice(b, min(b + BATCH_STEPS, n_steps + 1))
        idx, L = scene.log_irradiance(rel[sl], t_steps[sl] / 1e9, float(rel[b - 1]))
        sim.step(t_steps[sl], L, idx)
    noise = noise_events(sensor, t0_ns, t0_ns + duration_ns, scene.spec.ba_rate_hz,
                         scene.spec.hot_rate_hz, r_noise)
    events = assemble([sim.signal(), noise], scene.width)
    frames = stamps = None
    if with_frames:
        k0 = -(-t0_ns // FRAME_PERIOD_NS)
        k1 = -(-(t0_ns + duration_ns) // FRAME_PERIOD_NS)
        stamps = np.arange(k0, k1, dtype=np.int64) * FRAME_PERIOD_NS
        frames = scene.frames((stamps - t0_ns) / 1e9, stamps / 1e9, r_frames)
    return Simulated(events, frames, stamps)


def _attributes(scene: _Scene, seg: _Segment, lighting: str, n_events: int) -> dict:
    s = scene.subject
    tt = seg.start_s + np.arange(0.0, seg.duration_s, 0.005)
    hs = hand_speed(scene.joints(tt), tt, scene.width)
    return {"speed": seg.params.speed, "position": s.position, "size": s.size,
            "handedness": s.handedness, "lighting": lighting, "subject": int(s.subject_id),
            "motion": motion_level(hs), "hand_speed_px_s": round(hs, 2),
            "freq_hz": round(seg.params.freq_hz, 3),
            "event_rate_hz": round(n_events / max(seg.duration_s, 1e-9), 1)}


def _make_clip(scene: _Scene, seg: _Segment, label: int, lighting: str, sim: Simulated,
               t_start: int, t_end: int, clip_id: str, cap_seed: int) -> Clip:
    attrs = _attributes(scene, seg, lighting, len(sim.events))
    return Clip(events=sim.events, frames=sim.frames, frame_stamps_ns=sim.stamps, label=label,
                class_name=GESTURE_CLASSES[label - 1], attributes=attrs,
                caption=canonical_caption(label, attrs),
                references=reference_captions(label, attrs, cap_seed),
                t_start_ns=int(t_start), t_end_ns=int(t_end), subject=scene.subject.subject_id,
                lighting=lighting, clip_id=clip_id)


def _check(label: int, lighting: str) -> int:
    check_label(int(label))
    lighting_spec(lighting)
    return LIGHTING_NAMES.index(lighting)


def simulate_clip(label: int, subject: int, lighting: str, *, seed: int, duration_s: float = 2.0,
                  t0_ns: int = 0, with_frames: bool = True, width: int = 128, height: int = 128,
                  speed: str | None = None, sensor_seed: int = 0) -> Clip:
    """Simulate one gesture clip (the gesture is ongoing for the whole clip).

    ``speed`` forces 'slow'/'normal'/'fast' (default: drawn from the subject's habits).
    """
    li = _check(label, lighting)
    ss = np.random.SeedSequence([0xC11, _u(seed), int(label), _u(subject), li])
    r_par, r_sim = ss.spawn(2)
    subj = make_subject(subject)
    params = sample_params(int(label), subj, np.random.default_rng(r_par), speed)
    seg = _Segment(params, 0.0, duration_s, 0.0)
    scene = _Scene(subj, lighting, width, height, [seg])
    dur_ns = int(round(duration_s * 1e9))
    sim = simulate_events(scene, int(t0_ns), dur_ns, with_frames, r_sim, sensor_seed)
    clip_id = f"user{subject:02d}_{lighting}_g{label:02d}_s{seed}"
    return _make_clip(scene, seg, int(label), lighting, sim, t0_ns, t0_ns + dur_ns, clip_id,
                      cap_seed=int(ss.generate_state(1)[0]))


def simulate_static(subject: int, lighting: str, *, seed: int, duration_s: float = 1.0,
                    t0_ns: int = 0, width: int = 128, height: int = 128,
                    sensor_seed: int = 0) -> np.ndarray:
    """Events of the subject standing still (rest pose): noise and flicker only."""
    li = _check(1, lighting)
    ss = np.random.SeedSequence([0x57A, _u(seed), _u(subject), li])
    scene = _Scene(make_subject(subject), lighting, width, height, [])
    dur_ns = int(round(duration_s * 1e9))
    return simulate_events(scene, int(t0_ns), dur_ns, False, ss, sensor_seed).events


def blend_ramp_s(clip_duration_s: float) -> float:
    """Seconds over which a gesture blends in from (and out to) the rest pose at the start
    (end) of its labelled clip."""
    return min(0.2, clip_duration_s / 4)


def simulate_recording(subject: int, lighting: str, *, seed: int, labels=range(1, 12),
                       clip_duration_s: float = 2.0, gap_s: float = 0.3, with_frames: bool = True,
                       t0_ns: int = 0, width: int = 128, height: int = 128,
                       sensor_seed: int = 0) -> Recording:
    """One session: a pause, then each gesture of ``labels`` followed by a pause (rest pose).

    Gestures blend in from / out to the rest pose over ~0.2 s, so pauses are
    truly static (noise-only, low-motion) stretches.
    """
    li = _check(1, lighting)
    labels = [int(x) for x in labels]
    for lab in labels:
        _check(lab, lighting)
    subj = make_subject(subject)
    ss = np.random.SeedSequence([0x2EC, _u(seed), _u(subject), li])
    r_par, r_sim = ss.spawn(2)
    rng = np.random.default_rng(r_par)
    ramp = blend_ramp_s(clip_duration_s)
    segs = [_Segment(sample_params(lab, subj, rng), gap_s + k * (clip_duration_s + gap_s),
                     clip_duration_s, ramp)
            for k, lab in enumerate(labels)]
    total_ns = int(round((gap_s + len(labels) * (clip_duration_s + gap_s)) * 1e9))
    scene = _Scene(subj, lighting, width, height, segs)
    sim = simulate_events(scene, int(t0_ns), total_ns, with_frames, r_sim, sensor_seed)
    name = f"user{subject:02d}_{lighting}"
    clips = []
    for k, (lab, seg) in enumerate(zip(labels, segs)):
        a = int(t0_ns) + int(round(seg.start_s * 1e9))
        b = a + int(round(seg.duration_s * 1e9))
        clips.append(_make_clip(scene, seg, lab, lighting, cut(sim, a, b), a, b,
                                f"{name}_s{seed}_{k:02d}_g{lab:02d}",
                                cap_seed=_u(seed * 1000 + k)))
    return Recording(events=sim.events, frames=sim.frames, frame_stamps_ns=sim.stamps,
                     clips=clips, subject=int(subject), lighting=lighting, name=name,
                     t_start_ns=int(t0_ns), t_end_ns=int(t0_ns) + total_ns)


def cut(sim: Simulated, a: int, b: int) -> Simulated:
    """The events and frames of ``sim`` stamped in [a, b)."""
    i0, i1 = np.searchsorted(sim.events["t"], [a, b])
    if sim.frames is None:
        return Simulated(sim.events[i0:i1], None, None)
    j0, j1 = np.searchsorted(sim.stamps, [a, b])
    return Simulated(sim.events[i0:i1], sim.frames[j0:j1], sim.stamps[j0:j1])


class SubjectSplit(NamedTuple):
    """Subject ids of a split, both sorted (``train, held_out = split_subjects(...)``)."""

    train: list[int]
    held_out: list[int]


def split_subjects(n_subjects: int, n_test: int, seed: int) -> SubjectSplit:
    """Split subject ids 1..n_subjects into (train, held-out) lists, both sorted."""
    if not 0 <= n_test <= n_subjects:
        raise ValueError(f"n_test={n_test} outside 0..{n_subjects}")
    perm = np.random.default_rng([0x5B1, _u(seed)]).permutation(np.arange(1, n_subjects + 1))
    return SubjectSplit(sorted(int(x) for x in perm[n_test:]),
                        sorted(int(x) for x in perm[:n_test]))


__all__ = ["Clip", "Recording", "simulate_clip", "simulate_recording", "simulate_static",
           "SubjectSplit", "split_subjects", "FRAME_PERIOD_NS", "DVS_RATE_HZ"]
