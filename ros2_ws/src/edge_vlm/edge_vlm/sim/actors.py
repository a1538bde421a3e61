"""Kinematics of the scenes beyond the 11 gestures: whole figures that walk, stand up or sit
down, a hand moving an object, a swinging object, and camera ego-motion; :func:`make_motion`
draws the motion of one scene of a kind.

Everything that moves is a list of capsules (:class:`~.render.Capsules`) evaluated at a batch
of *motion times* ``tau`` (s, from the start of the scene's motion); :mod:`.scenes` renders them
over the static room and feeds the DVS.  Conventions as in :mod:`.gestures`: image
coordinates (x right, y down, pixels), body units (bu) scaled by the subject's pixels per bu.
Speeds are in px/s of a 128-pixel sensor (scaled with the sensor size), one range per speed
class, so "slow", "normal" and "fast" are physically different.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from edge_vlm.sim.gestures import (FOREARM, HEAD_R, HEAD_UP, POSITIONS, R_FORE, R_HAND, R_UPPER,
                                   SPEEDS, UPPER_ARM, Subject, luma, make_subject)
from edge_vlm.sim.render import Capsules

#: mean speed (px/s on a 128-pixel sensor) of the moving thing per scene kind and speed class
SCENE_SPEED_PX_S = {"walk": (20.0, 38.0, 60.0), "two_movers": (20.0, 38.0, 60.0),
                    "stand_up": (10.0, 18.0, 30.0), "sit_down": (10.0, 18.0, 30.0),
                    "object_moved": (30.0, 55.0, 90.0), "object_swings": (35.0, 65.0, 110.0),
                    "camera_shake": (4.0, 10.0, 22.0), "nothing": (0.0, 0.0, 0.0)}
#: camera shake: largest image shift (px); the smallest shakes stay sub-pixel
MAX_SHAKE_PX = 2.0
THIGH, SHIN, TORSO_LEN = 17.0, 17.0, 30.0    # bu
HIP_STAND = THIGH + SHIN - 1.0               # bu above the ground: hips of a standing figure
HIP_SEATED = 15.0                            # ... of a seated one (a low chair)
RISE = HIP_STAND - HIP_SEATED                # bu the upper body moves standing up
FIGURE_DEPTH = 0.9                           # whole figures stand a little further back
STRIDE = 24.0                                # bu per step of a walking figure


class Part(NamedTuple):
    """One capsule over T times."""

    a: np.ndarray            # (T, 2) px
    b: np.ndarray            # (T, 2) px
    r: float                 # px
    color: np.ndarray        # (3,) RGB reflectance


class Motion(NamedTuple):
    """What a scene kind shows: its moving capsules and/or camera shift, and what it records."""

    capsules: Callable[[np.ndarray], Capsules] | None   # motion times (T,) -> capsules
    shift: Callable[[np.ndarray], np.ndarray] | None    # motion times (T,) -> (T, 2) px
    backdrop: Capsules | None     # static extras drawn into the room (T = 1), e.g. a chair
    still_subject: bool           # the subject stands still in the room (rest pose)
    direction: str
    speed_px_s: float             # mean speed of the moving thing (128-pixel sensor)
    mean_x: float                 # mean x (px) of the moving thing: the scene's position
    extra: dict                   # more attributes (object, ...)


def pack(parts: list[Part]) -> Capsules:
    """Parts -> one Capsules array (drawn in list order)."""
    return Capsules(np.stack([p.a for p in parts], 1), np.stack([p.b for p in parts], 1),
                    np.array([p.r for p in parts]), np.stack([p.color for p in parts]))


def pants_color(subject: Subject) -> np.ndarray:
    """Trousers: dark jeans under a light shirt, light chinos under a dark one."""
    light = float(luma(np.asarray(subject.shirt))) > 0.4
    return np.array([0.12, 0.15, 0.3]) if light else np.array([0.62, 0.56, 0.42])


def draw_speed(kind: str, speed: str, rng: np.random.Generator, scale: float) -> float:
    """Mean speed (px/s on this sensor) of one performance of ``kind`` at class ``speed``."""
    return SCENE_SPEED_PX_S[kind][SPEEDS.index(speed)] * float(rng.uniform(0.92, 1.08)) * scale


def _pt(x, y) -> np.ndarray:
    return np.stack(np.broadcast_arrays(np.asarray(x, np.float64),
                                        np.asarray(y, np.float64)), -1)


def _head(x, sh_y, ppu: float, subject: Subject) -> list[Part]:
    """Neck, hair and face above shoulders at height ``sh_y`` (as in ``render_static``)."""
    hy = sh_y - HEAD_UP * ppu
    return [Part(_pt(x, sh_y - 2 * ppu), _pt(x, sh_y - 10 * ppu), 3.2 * ppu,
                 np.asarray(subject.skin)),
            Part(_pt(x, hy - 2.5 * ppu), _pt(x, hy - 2.5 * ppu), HEAD_R * ppu,
                 np.asarray(subject.hair)),
            Part(_pt(x, hy + 0.5 * ppu), _pt(x, hy + 0.5 * ppu), (HEAD_R - 0.8) * ppu,
                 np.asarray(subject.skin))]


class Limb(NamedTuple):
    """Middle and end joints (T, 2) px of a 2-link limb (knee + foot, elbow + hand)."""

    mid: np.ndarray
    end: np.ndarray


def _limb(root: np.ndarray, ang1, ang2, l1: float, l2: float, facing: float) -> Limb:
    """A 2-link limb hanging from ``root`` (T, 2); angles from the vertical, positive towards
    ``facing``."""
    mid = root + _pt(facing * l1 * np.sin(ang1), l1 * np.cos(ang1))
    return Limb(mid, mid + _pt(facing * l2 * np.sin(ang2), l2 * np.cos(ang2)))


def walker_parts(subject: Subject, ppu: float, ground_y: float, x: np.ndarray,
                 phase: np.ndarray, facing: float) -> list[Part]:
    """A figure in profile walking (gait ``phase`` rad, facing +1 right / -1 left) at ``x``."""
    shirt, skin = np.asarray(subject.shirt), np.asarray(subject.skin)
    pants, shoe = pants_color(subject), np.array([0.08, 0.07, 0.07])
    sleeve = skin if subject.short_sleeves else 0.9 * shirt
    bob = 1.2 * ppu * np.abs(np.cos(phase))
    hip = _pt(x, ground_y - HIP_STAND * ppu - bob)
    sh = hip - _pt(0.0, TORSO_LEN * ppu)
    near, far = [], []
    for side, out in ((1.0, near), (-1.0, far)):
        shade = 1.0 if side > 0 else 0.8
        swing = side * np.sin(phase)
        knee, foot = _limb(hip, 0.45 * swing, 0.45 * swing - 0.5 * np.maximum(0, -np.cos(phase))
                           * (1 + swing) / 2, THIGH * ppu, SHIN * ppu, facing)
        elbow, hand = _limb(sh, -0.35 * swing, -0.35 * swing + 0.3, UPPER_ARM * ppu,
                            FOREARM * ppu, facing)
        out.append(Part(hip, knee, 4.2 * ppu, shade * pants))
        out.append(Part(knee, foot, 3.5 * ppu, shade * pants))
        out.append(Part(foot, foot + _pt(facing * 4.0 * ppu, 0.0), 2.2 * ppu, shoe))
        out.append(Part(sh, elbow, R_UPPER * ppu, shade * shirt))
        out.append(Part(elbow, hand, R_FORE * ppu, shade * sleeve))
        out.append(Part(hand, hand + _pt(0.0, 2.0 * ppu), R_HAND * ppu, shade * skin))
    torso = [Part(hip - _pt(0.0, 2 * ppu), sh + _pt(0.0, 3 * ppu), 7.5 * ppu, shirt)]
    # far arm and leg behind the torso, the near leg, the head, the near arm in front
    return far + torso + near[:3] + _head(x, sh[:, 1], ppu, subject) + near[3:]


def seated_parts(subject: Subject, ppu: float, ground_y: float, x: float,
                 up: np.ndarray) -> list[Part]:
    """A figure facing the camera between sitting (``up`` = 0) and standing (1)."""
    shirt, skin = np.asarray(subject.shirt), np.asarray(subject.skin)
    pants = pants_color(subject)
    sleeve = skin if subject.short_sleeves else 0.9 * shirt
    hip_y = ground_y - (HIP_SEATED + RISE * up) * ppu
    sh_y = hip_y - TORSO_LEN * ppu
    parts: list[Part] = []
    for s in (-1.0, 1.0):
        hip = _pt(x + s * 5.5 * ppu, hip_y)
        knee = _pt(x + s * (5.5 + 2.0 * (1 - up)) * ppu, ground_y - (SHIN + 1.0 - up) * ppu)
        foot = _pt(x + s * 6.5 * ppu, np.full_like(up, ground_y - 1.5 * ppu))
        parts += [Part(hip, knee, 4.5 * ppu, pants), Part(knee, foot, 3.8 * ppu, pants),
                  Part(foot, foot + _pt(s * 2.5 * ppu, 0.0), 2.4 * ppu,
                       np.array([0.08, 0.07, 0.07]))]
    parts.append(Part(_pt(x, hip_y - 3 * ppu), _pt(x, sh_y + 6 * ppu), 11.0 * ppu, shirt))
    parts.append(Part(_pt(x - 12 * ppu, sh_y + 2 * ppu), _pt(x + 12 * ppu, sh_y + 2 * ppu),
                      5.0 * ppu, shirt))
    parts += _head(x, sh_y, ppu, subject)
    for s in (-1.0, 1.0):
        sh = _pt(x + s * 13.0 * ppu, sh_y)
        on_knee = _pt(x + s * 8.0 * ppu, ground_y - (SHIN + 3.0) * ppu)
        hanging = sh + _pt(s * 2.0 * ppu, (UPPER_ARM + FOREARM) * ppu)
        hand = on_knee + (hanging - on_knee) * up[:, None]
        elbow = sh + _pt(s * 3.5 * ppu, UPPER_ARM * ppu * (0.8 + 0.2 * up))
        parts += [Part(sh, elbow, R_UPPER * ppu, 0.95 * shirt),
                  Part(elbow, hand, R_FORE * ppu, sleeve),
                  Part(hand, hand + _pt(0.0, 2.0 * ppu), R_HAND * ppu, skin)]
    return parts


def chair(x: float, ground_y: float, ppu: float, color: np.ndarray) -> Capsules:
    """A chair behind a seated figure at ``x`` (static backdrop)."""
    seat = ground_y - HIP_SEATED * ppu
    p = lambda px, py: _pt(np.array([px]), np.array([py]))  # noqa: E731
    parts = [Part(p(x - 13 * ppu, seat - 26 * ppu), p(x + 13 * ppu, seat - 26 * ppu),
                  2.5 * ppu, color),
             Part(p(x - 14 * ppu, seat - 26 * ppu), p(x - 14 * ppu, ground_y), 1.8 * ppu, color),
             Part(p(x + 14 * ppu, seat - 26 * ppu), p(x + 14 * ppu, ground_y), 1.8 * ppu, color),
             Part(p(x - 14 * ppu, seat), p(x + 14 * ppu, seat), 2.0 * ppu, color)]
    return pack(parts)


def travel(tau: np.ndarray, start_s: float, dur_s: float) -> np.ndarray:
    """0 -> 1 over [start, start + dur] (smoothstep), held before and after."""
    a = np.clip((np.asarray(tau, np.float64) - start_s) / max(dur_s, 1e-9), 0.0, 1.0)
    return a * a * (3 - 2 * a)


def hand_object_parts(subject: Subject, ppu: float, hand: np.ndarray, side: float,
                      colors: np.ndarray) -> list[Part]:
    """A forearm reaching in from below (``side`` -1 from the left, +1 from the right), its
    hand holding a small striped object above it."""
    skin = np.asarray(subject.skin)
    sleeve = skin if subject.short_sleeves else 0.9 * np.asarray(subject.shirt)
    elbow = hand + _pt(side * 10.0 * ppu, 22.0 * ppu)
    shoulder = elbow + _pt(side * 8.0 * ppu, 26.0 * ppu)
    parts = [Part(shoulder, elbow, R_UPPER * ppu, 0.9 * np.asarray(subject.shirt)),
             Part(elbow, hand, R_FORE * ppu, sleeve)]
    for k, dy in enumerate((-11.0, -8.0, -5.0)):       # the object: three stripes
        c = hand + _pt(0.0, dy * ppu)
        parts.append(Part(c - _pt(4.0 * ppu, 0.0), c + _pt(4.0 * ppu, 0.0), 1.7 * ppu,
                          colors[k % 2]))
    parts.append(Part(hand - _pt(0.0, 2.5 * ppu), hand + _pt(0.0, 1.0 * ppu), R_HAND * ppu, skin))
    return parts


def swing_parts(pivot: np.ndarray, angle: np.ndarray, length: float, bob_r: float,
                colors: np.ndarray, bar: bool) -> list[Part]:
    """A pendulum (string + ringed bob) hanging from ``pivot``, or a two-coloured bar turning
    around it; ``angle`` (T,) from the vertical (pendulum) or the horizontal (bar)."""
    d = _pt(np.sin(angle), np.cos(angle))
    c = np.broadcast_to(np.asarray(pivot, np.float64), d.shape)
    if bar:
        return [Part(c - d * length, c, bob_r, colors[0]), Part(c, c + d * length, bob_r,
                                                                  colors[1]),
                Part(c, c, bob_r * 0.8, colors[2])]
    bob = c + d * length
    return [Part(c, bob, 0.7, colors[2]), Part(bob, bob, bob_r, colors[0]),
            Part(bob, bob, bob_r * 0.55, colors[1])]


def shake_path(rng: np.random.Generator, speed: str, speed_px: float,
               duration_s: float) -> Callable[[np.ndarray], np.ndarray]:
    """Smooth random camera shift (T, 2) px of mean speed ``speed_px``, at most MAX_SHAKE_PX."""
    band = {"slow": (0.6, 2.0), "normal": (1.5, 4.0), "fast": (3.0, 8.0)}[speed]
    freq = rng.uniform(*band, (2, 4))
    phase = rng.uniform(0, 2 * np.pi, (2, 4))
    amp = rng.uniform(0.5, 1.0, (2, 4)) / freq   # smaller shifts at higher frequencies

    def raw(tau: np.ndarray) -> np.ndarray:
        w = 2 * np.pi * np.asarray(tau, np.float64)[:, None, None] * freq + phase
        return (amp * np.sin(w)).sum(-1)

    tt = np.linspace(0.0, max(duration_s, 1e-3), 400)
    d = raw(tt)
    mean_speed = float(np.mean(np.hypot(*np.diff(d, axis=0).T)) / (tt[1] - tt[0]))
    k = speed_px / max(mean_speed, 1e-9)
    k = min(k, MAX_SHAKE_PX / max(float(np.abs(d - d.mean(0)).max()), 1e-9))
    d0 = d.mean(0)
    return lambda tau: (raw(tau) - d0) * k


#: x of a thing placed at a position (fraction of the width)
POSITION_X = {"left": 0.25, "center": 0.5, "right": 0.75}


class MotionContext(NamedTuple):
    """What every motion builder needs (``rng``: the scene's parameter stream)."""

    subject: Subject
    rng: np.random.Generator
    speed: str
    direction: str
    duration_s: float
    width: int
    height: int

    @property
    def scale(self) -> float:
        return min(self.width, self.height) / 128.0

    @property
    def ppu(self) -> float:
        return self.subject.geometry(self.width, self.height).ppu * FIGURE_DEPTH

    @property
    def ground_y(self) -> float:
        return 0.97 * self.height

    def place_x(self) -> float:
        """x (px) of a thing at a random position."""
        pos = POSITIONS[int(self.rng.integers(3))]
        return (POSITION_X[pos] + float(self.rng.uniform(-0.04, 0.04))) * self.width


def _walk(c: MotionContext) -> Motion:
    v = draw_speed("walk", c.speed, c.rng, c.scale)
    sgn = 1.0 if c.direction == "left_to_right" else -1.0
    x0 = c.width * (0.5 + float(c.rng.uniform(-0.05, 0.05)))
    stride, ph0 = STRIDE * c.ppu, float(c.rng.uniform(0, 2 * np.pi))

    def caps(tau: np.ndarray) -> Capsules:
        x = x0 + sgn * v * (tau - c.duration_s / 2)
        return pack(walker_parts(c.subject, c.ppu, c.ground_y, x, ph0 + np.pi * v * tau / stride,
                                 sgn))
    return Motion(caps, None, None, False, c.direction, v / c.scale, c.width / 2, {})


def _two_movers(c: MotionContext) -> Motion:
    other = make_subject(c.subject.subject_id + 10_000)
    far_ppu = other.geometry(c.width, c.height).ppu * FIGURE_DEPTH * 0.75
    vs = [draw_speed("two_movers", c.speed, c.rng, c.scale) for _ in range(2)]
    near_sgn = float(c.rng.choice([-1.0, 1.0]))
    ph = c.rng.uniform(0, 2 * np.pi, 2)
    x0 = c.width / 2

    def caps(tau: np.ndarray) -> Capsules:
        far = walker_parts(other, far_ppu, 0.9 * c.height, x0 - near_sgn * vs[1]
                           * (tau - c.duration_s / 2), ph[1] + np.pi * vs[1] * tau
                           / (STRIDE * far_ppu), -near_sgn)
        near = walker_parts(c.subject, c.ppu, c.ground_y, x0 + near_sgn * vs[0]
                            * (tau - c.duration_s / 2), ph[0] + np.pi * vs[0] * tau
                            / (STRIDE * c.ppu), near_sgn)
        return pack(far + near)
    return Motion(caps, None, None, False, "none", float(np.mean(vs)) / c.scale, x0,
                  {"other_subject": other.subject_id})


def _stand_or_sit(c: MotionContext) -> Motion:
    kind = "stand_up" if c.direction == "up" else "sit_down"
    v = draw_speed(kind, c.speed, c.rng, c.scale)
    x = c.place_x()
    full = RISE * c.ppu     # sitting -> standing moves the upper body this far (px)
    dist = min(full, v * 0.9 * c.duration_s)     # a short clip shows part of the motion
    dur = dist / v
    start = (c.duration_s - dur) / 2

    def up(tau: np.ndarray) -> np.ndarray:
        s = travel(tau, start, dur) * (dist / full)
        return s if kind == "stand_up" else 1 - s
    color = np.clip(np.array([0.45, 0.3, 0.18]) * c.rng.uniform(0.5, 1.6), 0.03, 1.0)
    return Motion(lambda tau: pack(seated_parts(c.subject, c.ppu, c.ground_y, x, up(tau))),
                  None, chair(x, c.ground_y, c.ppu, color), False, c.direction, v / c.scale, x,
                  {"rise_px": round(dist / c.scale, 2)})


def _contrasting(rng: np.random.Generator) -> np.ndarray:
    """Three colours: light, dark, mid-dark (an object's texture)."""
    hue = rng.uniform(0.2, 1.0, 3)
    return np.stack([hue / hue.max() * rng.uniform(0.75, 0.95), hue / hue.max() * 0.12,
                     np.full(3, 0.25)])


def _object_moved(c: MotionContext) -> Motion:
    v = draw_speed("object_moved", c.speed, c.rng, c.scale)
    W, H = c.width, c.height
    if c.direction in ("left_to_right", "right_to_left"):
        sgn = 1.0 if c.direction == "left_to_right" else -1.0
        length = min(v * 0.9 * c.duration_s, 0.7 * W)
        lo, hi = length / 2 + 0.12 * W, W - length / 2 - 0.12 * W
        xc = float(c.rng.uniform(lo, hi)) if hi > lo else W / 2
        y = float(c.rng.uniform(0.35, 0.6)) * H
        p0, p1 = np.array([xc - sgn * length / 2, y]), np.array([xc + sgn * length / 2, y])
    else:
        sgn = -1.0 if c.direction == "up" else 1.0
        length = min(v * 0.9 * c.duration_s, 0.45 * H)
        x, yc = c.place_x(), float(c.rng.uniform(0.4, 0.55)) * H
        p0, p1 = np.array([x, yc - sgn * length / 2]), np.array([x, yc + sgn * length / 2])
    dur = length / v
    start = (c.duration_s - dur) / 2
    side = float(c.rng.choice([-1.0, 1.0]))
    colors = _contrasting(c.rng)
    ppu = c.subject.geometry(W, H).ppu

    def hand(tau: np.ndarray) -> np.ndarray:
        return p0 + (p1 - p0) * travel(tau, start, dur)[:, None]
    mean_x = float(hand(np.linspace(0, c.duration_s, 200))[:, 0].mean())
    return Motion(lambda tau: pack(hand_object_parts(c.subject, ppu, hand(tau), side, colors)),
                  None, None, False, c.direction, v / c.scale, mean_x, {"object": "box"})


def _object_swings(c: MotionContext) -> Motion:
    v = draw_speed("object_swings", c.speed, c.rng, c.scale)
    x = c.place_x()
    bar = bool(c.rng.uniform() < 0.35)
    colors = _contrasting(c.rng)
    if bar:
        pivot = np.array([x, float(c.rng.uniform(0.3, 0.55)) * c.height])
        length = float(c.rng.uniform(0.1, 0.16)) * c.height
        omega = v / length * float(c.rng.choice([-1.0, 1.0]))
        a0 = float(c.rng.uniform(0, 2 * np.pi))
        angle = lambda tau: a0 + omega * tau  # noqa: E731
        r, freq = 2.2 * c.scale, abs(omega) / (2 * np.pi)
    else:
        pivot = np.array([x, float(c.rng.uniform(0.05, 0.2)) * c.height])
        length = float(c.rng.uniform(0.3, 0.45)) * c.height
        th0 = float(c.rng.uniform(0.35, 0.6))
        freq = v / (4 * th0 * length)     # mean bob speed = 4 * amplitude * length * f
        ph = float(c.rng.uniform(0, 2 * np.pi))
        angle = lambda tau: th0 * np.sin(2 * np.pi * freq * tau + ph)  # noqa: E731
        r = float(c.rng.uniform(3.5, 5.0)) * c.scale
    return Motion(lambda tau: pack(swing_parts(pivot, angle(tau), length, r, colors, bar)),
                  None, None, False, "none", v / c.scale, x,
                  {"object": "bar" if bar else "pendulum", "freq_hz": round(freq, 3)})


def _camera_shake(c: MotionContext, still: bool) -> Motion:
    v = draw_speed("camera_shake", c.speed, c.rng, c.scale)
    shift = shake_path(c.rng, c.speed, v, c.duration_s)
    tt = np.linspace(0.0, c.duration_s, 400)
    d = shift(tt)
    speed = float(np.mean(np.hypot(*np.diff(d, axis=0).T)) / max(tt[1] - tt[0], 1e-9))
    return Motion(None, shift, None, still, "none", speed / c.scale, c.width / 2,
                  {"shake_px": round(float(np.abs(d).max()), 3)})

def make_motion(kind: str, c: MotionContext, still_subject: bool = False) -> Motion:
    """The motion of one scene of ``kind`` (``still_subject``: "nothing" and "camera_shake"
    show the subject standing still in the room)."""
    if kind == "nothing":
        return Motion(None, None, None, still_subject, "none", 0.0, c.width / 2, {})
    if kind == "camera_shake":
        return _camera_shake(c, still_subject)
    return {"walk": _walk, "two_movers": _two_movers, "stand_up": _stand_or_sit,
            "sit_down": _stand_or_sit, "object_moved": _object_moved,
            "object_swings": _object_swings}[kind](c)
