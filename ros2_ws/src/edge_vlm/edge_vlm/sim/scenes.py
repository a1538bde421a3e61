"""The scenes beyond the 11 gestures: nobody moves, a person walks across, stands up or sits
down, a hand moves an object, an object swings, two people cross, the camera shakes.

Each scene is rendered like a gesture scene (:mod:`.dataset`): the static room (with more
clutter than a gesture room, :func:`~.render.add_clutter`) plus the moving capsules of
:mod:`.actors` (or the whole image shifted, for camera shake) give the log irradiance at the
DVS rate, fed to :class:`~.dvs.EventSimulator` by :func:`~.dataset.simulate_events`.
Deterministic from the integer arguments (``SeedSequence``, never ``hash()``).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from edge_vlm.events import concat_events
from edge_vlm.sim.actors import Motion, MotionContext, make_motion
from edge_vlm.sim.captions import DIRECTIONS, SCENE_KINDS, scene_caption, scene_references
from edge_vlm.sim.dataset import (FRAME_BATCH, LitRoom, LogIrradiance, Recording, Room, Box,
                                  Simulated, _u, cut, make_room, simulate_events)
from edge_vlm.sim.gestures import POSITIONS, REST, SPEEDS, Subject, joints, luma, make_subject
from edge_vlm.sim.render import (LIGHTING_NAMES, LOG_EPS, add_clutter, draw_capsules,
                                 lighting_spec, render_figure, render_static, shift_images,
                                 to_rgb8)

#: the directions each scene kind can have (one is drawn when none is asked for)
KIND_DIRECTIONS = {"nothing": ("none",), "walk": ("left_to_right", "right_to_left"),
                   "stand_up": ("up",), "sit_down": ("down",),
                   "object_moved": ("left_to_right", "right_to_left", "up", "down"),
                   "object_swings": ("none",), "two_movers": ("none",),
                   "camera_shake": ("none",)}
#: kinds shown with or without the (still) subject in the room
SETTINGS = {"nothing": ("empty", "still_person"), "camera_shake": ("empty", "still_person")}
#: a scene recording by default: every kind beyond the gestures once, "nothing" in both settings
DEFAULT_SCENES = ("nothing:empty", "walk", "stand_up", "object_moved", "object_swings",
                  "sit_down", "two_movers", "camera_shake", "nothing:still_person")
#: DVS steps per rendered image of moving capsules; the reflectance in between is interpolated
#: linearly (the lighting, its flicker included, is applied at every step)
RENDER_STEP = 2


@dataclass
class SceneClip:
    """One labelled scene that is not one of the 11 gestures."""

    events: np.ndarray                    # EVENT_DTYPE, time-sorted, t ns absolute
    frames: np.ndarray | None             # (N, H, W, 3) uint8 (None: events only)
    frame_stamps_ns: np.ndarray | None    # (N,) int64
    kind: str                             # one of captions.SCENE_KINDS, not "gesture"
    #: kind, setting, direction, speed, position, size, subject, lighting, speed_px_s, ...
    attributes: dict
    caption: str                          # captions.scene_caption(kind, attributes)
    references: list                      # >= 5 paraphrases, canonical first
    t_start_ns: int
    t_end_ns: int
    subject: int
    lighting: str
    clip_id: str

    def ground_truth(self) -> dict:
        """The JSON object published on ``/edge_vlm/ground_truth`` (as a gesture clip's, with
        label 0 "no_gesture" and the scene kind)."""
        return {"clip_id": self.clip_id, "label": 0, "class_name": "no_gesture",
                "t_start_ns": self.t_start_ns, "t_end_ns": self.t_end_ns,
                "attributes": dict(self.attributes), "references": list(self.references),
                "scene": self.kind}


class ScenePlan(NamedTuple):
    """The drawn parameters of one scene: its motion and its attributes (no events yet)."""

    kind: str
    motion: Motion
    attributes: dict


def _position(kind: str, mean_x: float, width: int) -> str:
    """Where the motion mostly is: by the moving thing's mean x (thirds of the width); a walk
    across, two movers and scenes without a moving thing are "center"."""
    if kind in ("walk", "two_movers", "nothing", "camera_shake"):
        return "center"
    return POSITIONS[min(2, max(0, int(3 * mean_x / width)))]


def _check(kind: str, setting: str | None, speed: str | None, direction: str | None,
           lighting: str) -> int:
    if kind not in KIND_DIRECTIONS:
        raise ValueError(f"unknown scene kind {kind!r}; expected one of "
                         f"{tuple(k for k in SCENE_KINDS if k != 'gesture')} (gestures: "
                         "simulate_clip)")
    if setting is not None and setting not in SETTINGS.get(kind, ()):
        raise ValueError(f"scene {kind!r} has no setting {setting!r}; expected one of "
                         f"{SETTINGS.get(kind, ())}")
    if speed is not None and speed not in SPEEDS:
        raise ValueError(f"unknown speed {speed!r}; expected one of {SPEEDS}")
    if direction is not None and direction not in KIND_DIRECTIONS[kind]:
        raise ValueError(f"scene {kind!r} cannot move {direction!r} (one of {DIRECTIONS}); "
                         f"expected one of {KIND_DIRECTIONS[kind]}")
    lighting_spec(lighting)
    return LIGHTING_NAMES.index(lighting)


def plan_scene(kind: str, subject: Subject, lighting: str, rng: np.random.Generator, *,
               duration_s: float, width: int, height: int, setting: str | None = None,
               speed: str | None = None, direction: str | None = None) -> ScenePlan:
    """Draw one scene of ``kind`` (missing speed, direction, setting drawn from ``rng``)."""
    _check(kind, setting, speed, direction, lighting)
    if speed is None:
        speed = SPEEDS[int(rng.choice(3, p=np.asarray(subject.speed_probs)))]
    if direction is None:
        dirs = KIND_DIRECTIONS[kind]
        direction = dirs[int(rng.integers(len(dirs)))]
    if setting is None and kind in SETTINGS:
        setting = SETTINGS[kind][int(rng.integers(2))]
    if kind == "nothing":
        speed = "slow"           # nothing moves: the slowest class, 0 px/s
    c = MotionContext(subject, rng, speed, direction, float(duration_s), width, height)
    motion = make_motion(kind, c, setting == "still_person")
    attrs = {"kind": kind, **({"setting": setting} if setting is not None else {}),
             "direction": motion.direction, "speed": speed,
             "position": _position(kind, motion.mean_x, width), "size": subject.size,
             "subject": int(subject.subject_id), "lighting": lighting,
             "speed_px_s": round(float(motion.speed_px_s), 2), **motion.extra}
    return ScenePlan(kind, motion, attrs)


@lru_cache(maxsize=8)
def scene_room(subject: Subject, lighting: str, width: int, height: int) -> Room:
    """The room of (subject, lighting) with the clutter of the scenes (one per pair, as the
    gesture room; cached: read only)."""
    room = make_room(subject, lighting, width, height)
    rng = np.random.default_rng(np.random.SeedSequence(
        [0x5C0, _u(subject.subject_id), LIGHTING_NAMES.index(lighting)]))
    return room._replace(image=add_clutter(room.image, rng))


class ActorScene(LitRoom):
    """A scene plan in its room, as :func:`~.dataset.simulate_events` wants it. The motion is
    held still ``lead_s`` before its start and after ``duration_s``."""

    def __init__(self, plan: ScenePlan, subject: Subject, room: Room, width: int, height: int,
                 duration_s: float, lead_s: float = 0.0):
        self.width, self.height = width, height
        self.spec, self.light = room.spec, room.light
        self.motion = plan.motion
        self.duration_s, self.lead_s = float(duration_s), float(lead_s)
        img = room.image
        if self.motion.backdrop is not None:
            img = draw_capsules(img, self.motion.backdrop)[0]
        if self.motion.still_subject:
            rest = joints(subject, np.broadcast_to(REST, (1, 2, 2)).copy(), width, height)
            img = render_figure(render_static(subject, img, width, height), rest, subject,
                                subject.geometry(width, height).ppu)[0]
        self.static = img

    def tau(self, t_s: np.ndarray) -> np.ndarray:
        """Motion times of scene times ``t_s``."""
        return np.clip(np.asarray(t_s, np.float64) - self.lead_s, 0.0, self.duration_s)

    def _window(self, t_s: np.ndarray) -> Box:
        """The pixels the moving capsules cover at any of the times ``t_s``."""
        caps = self.motion.capsules(self.tau(t_s))
        pts = np.concatenate([caps.a.reshape(-1, 2), caps.b.reshape(-1, 2)])
        pad = float(caps.r.max()) + 2.0
        x0, y0 = np.maximum(np.floor(pts.min(0) - pad).astype(int), 0)
        x1 = int(min(np.ceil(pts[:, 0].max() + pad), self.width))
        y1 = int(min(np.ceil(pts[:, 1].max() + pad), self.height))
        return Box(int(x0), int(y0), max(x1, int(x0)), max(y1, int(y0)))

    def reflectance(self, base: np.ndarray, t_s: np.ndarray, box: Box) -> np.ndarray:
        """Reflectance (T, h, w[, 3]) of the window ``box`` of the image at scene times ``t_s``
        over ``base`` (the static image, RGB or gray)."""
        m, tau = self.motion, self.tau(t_s)
        if m.shift is not None:
            return shift_images(base, m.shift(tau))[:, box.y0:box.y1, box.x0:box.x1]
        crop = base[box.y0:box.y1, box.x0:box.x1]
        if m.capsules is None:
            return np.repeat(crop[None], len(tau), axis=0)
        return draw_capsules(crop, m.capsules(tau), np.array([box.x0, box.y0], np.float64))

    def sampled(self, base: np.ndarray, t_s: np.ndarray, box: Box) -> np.ndarray:
        """:meth:`reflectance` of moving capsules rendered every RENDER_STEP times (once while the
        motion is held still) and linearly interpolated in between (saves drawing time)."""
        n, step = len(t_s), RENDER_STEP
        tau = self.tau(t_s)
        if np.all(tau == tau[0]):
            return np.repeat(self.reflectance(base, t_s[:1], box), n, axis=0)
        if n < 2 or step == 1 or self.motion.shift is not None:   # shifting is cheap
            return self.reflectance(base, t_s, box)
        dt = float(t_s[1] - t_s[0])     # the DVS grid (its last step may be shorter)
        ts = t_s[0] + np.arange((n - 1) // step + 2) * (step * dt)
        r = self.reflectance(base, ts, box)
        w = np.clip((t_s - np.repeat(ts[:-1], step)[:n]) / (step * dt), 0.0, 1.0)
        out = np.repeat(r[:-1], step, axis=0)[:n]
        out += np.repeat(np.diff(r, axis=0), step, axis=0)[:n] * w.astype(np.float32).reshape(
            (-1,) + (1,) * (r.ndim - 1))
        return out

    def initial_log(self, t_s: np.ndarray, t_abs_s: np.ndarray) -> np.ndarray:
        refl0 = luma(self.reflectance(self.static, t_s, Box(0, 0, self.width, self.height)),
                     np.float32)
        return np.log(self.light.irradiance(refl0, t_abs_s)[0] + LOG_EPS).ravel()

    def log_irradiance(self, t_s: np.ndarray, t_abs_s: np.ndarray,
                       t_prev_s: float | None = None) -> LogIrradiance:
        """Log irradiance of the pixels that can change: the whole image under camera motion,
        else the window swept by the moving capsules (since ``t_prev_s``) and the flicker."""
        box = Box(0, 0, 0, 0)
        if self.motion.shift is not None:
            box = Box(0, 0, self.width, self.height)
        elif self.motion.capsules is not None:
            tj = t_s if t_prev_s is None else np.concatenate([[t_prev_s], t_s])
            box = self._window(tj)
        idx = (np.arange(box.y0, box.y1)[:, None] * self.width
               + np.arange(box.x0, box.x1)[None, :]).ravel()
        L = np.zeros((len(t_s), 0), np.float32)
        if idx.size:
            refl = self.sampled(self.gray, t_s, box)
            irr = self.light.irradiance(refl, t_abs_s, (slice(box.y0, box.y1),
                                                        slice(box.x0, box.x1)))
            irr += LOG_EPS
            L = np.log(irr, out=irr).reshape(len(t_s), -1)
        return self.with_flicker(LogIrradiance(idx, L), box, t_abs_s)

    def frames(self, t_s: np.ndarray, t_abs_s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = np.empty((t_s.shape[0], self.height, self.width, 3), np.uint8)
        full = Box(0, 0, self.width, self.height)
        for b in range(0, t_s.shape[0], FRAME_BATCH):
            refl = self.reflectance(self.static, t_s[b:b + FRAME_BATCH], full)
            out[b:b + FRAME_BATCH] = to_rgb8(self.light.irradiance(refl, None), self.spec, rng)
        return out


def _clip(plan: ScenePlan, sim: Simulated, t0: int, t1: int, clip_id: str,
          cap_seed: int) -> SceneClip:
    attrs = dict(plan.attributes)
    attrs["event_rate_hz"] = round(len(sim.events) / max((t1 - t0) / 1e9, 1e-9), 1)
    return SceneClip(events=sim.events, frames=sim.frames, frame_stamps_ns=sim.stamps,
                     kind=plan.kind, attributes=attrs, caption=scene_caption(plan.kind, attrs),
                     references=scene_references(plan.kind, attrs, cap_seed), t_start_ns=int(t0),
                     t_end_ns=int(t1), subject=int(attrs["subject"]),
                     lighting=attrs["lighting"], clip_id=clip_id)


def simulate_scene(kind: str, subject: int, lighting: str, *, seed: int,
                   duration_s: float = 2.0, t0_ns: int = 0, width: int = 128, height: int = 128,
                   sensor_seed: int = 0, speed: str | None = None, direction: str | None = None,
                   setting: str | None = None, with_frames: bool = False) -> SceneClip:
    """Simulate one scene of ``kind`` (any of captions.SCENE_KINDS but "gesture", which is
    :func:`~.dataset.simulate_clip`). ``speed``, ``direction`` and ``setting`` ("empty" or
    "still_person" for "nothing" and "camera_shake") are drawn when not given."""
    li = _check(kind, setting, speed, direction, lighting)
    ss = np.random.SeedSequence([0x5CE, _u(seed), list(KIND_DIRECTIONS).index(kind),
                                 _u(subject), li])
    r_par, r_sim = ss.spawn(2)
    subj = make_subject(subject)
    plan = plan_scene(kind, subj, lighting, np.random.default_rng(r_par), duration_s=duration_s,
                      width=width, height=height, setting=setting, speed=speed,
                      direction=direction)
    scene = ActorScene(plan, subj, scene_room(subj, lighting, width, height), width, height,
                       duration_s)
    dur_ns = int(round(duration_s * 1e9))
    sim = simulate_events(scene, int(t0_ns), dur_ns, with_frames, r_sim, sensor_seed)
    return _clip(plan, sim, int(t0_ns), int(t0_ns) + dur_ns,
                 f"user{subject:02d}_{lighting}_{kind}_s{seed}", int(ss.generate_state(1)[0]))


class SceneItem(NamedTuple):
    """One scene of a recording: its kind and setting (None: drawn)."""

    kind: str
    setting: str | None


def scene_item(item: str) -> SceneItem:
    """An item "kind" or "kind:setting" -> SceneItem."""
    kind, _, setting = str(item).partition(":")
    return SceneItem(kind, setting or None)


def simulate_scene_recording(subject: int, lighting: str, *, seed: int, kinds=None,
                             clip_duration_s: float = 2.0, gap_s: float = 0.3, t0_ns: int = 0,
                             width: int = 128, height: int = 128, sensor_seed: int = 0,
                             with_frames: bool = False) -> Recording:
    """One session of scenes back to back (``kinds``: "kind" or "kind:setting" items, default
    :data:`DEFAULT_SCENES`), a pause of nothing moving before each and after the last.

    One continuous event stream: each scene is simulated over its pause and its clip (the
    motion held still during the pause), the sensor being the same throughout.
    """
    items = [scene_item(k) for k in (DEFAULT_SCENES if kinds is None else kinds)]
    li = _check("nothing", None, None, None, lighting)
    for kind, setting in items:
        _check(kind, setting, None, None, lighting)
    subj = make_subject(subject)
    room = scene_room(subj, lighting, width, height)
    gap_ns, clip_ns = int(round(gap_s * 1e9)), int(round(clip_duration_s * 1e9))
    name = f"user{subject:02d}_{lighting}_scenes"
    pieces, scenes = [], []
    for k, (kind, setting) in enumerate(items):
        ss = np.random.SeedSequence([0x5C2EC, _u(seed), _u(subject), li, k])
        r_par, r_sim = ss.spawn(2)
        plan = plan_scene(kind, subj, lighting, np.random.default_rng(r_par),
                          duration_s=clip_duration_s, width=width, height=height,
                          setting=setting)
        a = int(t0_ns) + k * (gap_ns + clip_ns)
        b = a + gap_ns + clip_ns + (gap_ns if k == len(items) - 1 else 0)
        scene = ActorScene(plan, subj, room, width, height, clip_duration_s, lead_s=gap_s)
        sim = simulate_events(scene, a, b - a, with_frames, r_sim, sensor_seed)
        pieces.append(sim)
        c0 = a + gap_ns
        scenes.append(_clip(plan, cut(sim, c0, c0 + clip_ns), c0, c0 + clip_ns,
                            f"{name}_s{seed}_{k:02d}_{kind}", _u(seed * 1000 + k)))
    total = len(items) * (gap_ns + clip_ns) + gap_ns
    events = concat_events([p.events for p in pieces])
    frames = stamps = None
    if with_frames and pieces:
        frames = np.concatenate([p.frames for p in pieces])
        stamps = np.concatenate([p.stamps for p in pieces])
    return Recording(events=events, frames=frames, frame_stamps_ns=stamps, clips=[],
                     subject=int(subject), lighting=lighting, name=name, t_start_ns=int(t0_ns),
                     t_end_ns=int(t0_ns) + total, scenes=scenes)


__all__ = ["SceneClip", "ScenePlan", "simulate_scene", "simulate_scene_recording",
           "plan_scene", "scene_room", "DEFAULT_SCENES", "KIND_DIRECTIONS", "SETTINGS"]
